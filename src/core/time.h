// Time: the clock seam, durations as SPEC writes them ("90s", "15m", "2h", "30d") and
// RFC 3339 timestamps.
//
// Thread-safety: Clock implementations are thread-safe; free functions are pure.
#ifndef QUELL_CORE_TIME_H_
#define QUELL_CORE_TIME_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::core {

// The source of "now". Production uses RealClock; tests use FakeClock.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// The system clock. Thread-safe; use the shared instance.
class RealClock final : public Clock {
 public:
  static RealClock* Get();
  absl::Time Now() const override { return absl::Now(); }
};

// A clock that moves only when told. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1767225600))  // 2026-01-01
      : micros_(absl::ToUnixMicros(start)) {}
  absl::Time Now() const override { return absl::FromUnixMicros(micros_.load()); }
  void Advance(absl::Duration d) { micros_.fetch_add(absl::ToInt64Microseconds(d)); }
  void Set(absl::Time t) { micros_.store(absl::ToUnixMicros(t)); }

 private:
  std::atomic<int64_t> micros_;
};

// Parses "500ms", "90s", "15m", "2h", "30d", "1w" and sums like "1h30m". Must be > 0
// unless `allow_zero`. Errors are kInvalidArgument.
absl::StatusOr<absl::Duration> ParseDuration(std::string_view text, bool allow_zero = false);
// The shortest exact spelling in the units above ("90s", "30d", "1h30m").
std::string DurationString(absl::Duration d);

// RFC 3339 with optional fractional seconds and a zone ("2026-11-28T12:00:00Z").
absl::StatusOr<absl::Time> ParseRfc3339(std::string_view text);
// RFC 3339 in UTC with microseconds when non-zero ("2026-11-28T12:00:00.123456Z").
std::string FormatRfc3339(absl::Time t);
// The same appended to `out`, allocating nothing of its own for years 0000-9999.
void AppendRfc3339(absl::Time t, std::string* out);
// The same into `buf` (at least kRfc3339MaxBytes) without allocating; returns the view
// written. Empty for times outside the years 0000-9999 (and infinite times).
inline constexpr size_t kRfc3339MaxBytes = 32;
std::string_view FormatRfc3339To(absl::Time t, char* buf);

// Microseconds since the Unix epoch: how times are stored.
inline int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }
inline absl::Time FromMicros(int64_t us) { return absl::FromUnixMicros(us); }
// `t` as a store gives it back: to the microsecond (infinite times stay infinite).
inline absl::Time ToStoredPrecision(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return t;
  return FromMicros(ToMicros(t));
}

}  // namespace quell::core

#endif  // QUELL_CORE_TIME_H_
