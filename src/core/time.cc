#include "core/time.h"

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::core {

RealClock* RealClock::Get() {
  static RealClock* clock = new RealClock();
  return clock;
}

absl::StatusOr<absl::Duration> ParseDuration(std::string_view text, bool allow_zero) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid duration \"", AV(text.substr(0, 40)),
                     "\": write a number and a unit (ms, s, m, h, d, w), as in 90s, 15m, 30d"));
  };
  if (text.empty() || text.size() > 40) return bad();
  absl::Duration total = absl::ZeroDuration();
  size_t i = 0;
  while (i < text.size()) {
    int64_t n = 0;
    size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (n > 1'000'000'000'000) return bad();
      n = n * 10 + (text[i] - '0');
      ++i;
    }
    if (i == start) return bad();
    size_t ustart = i;
    while (i < text.size() && text[i] >= 'a' && text[i] <= 'z') ++i;
    std::string_view unit = text.substr(ustart, i - ustart);
    absl::Duration u;
    if (unit == "ms") {
      u = absl::Milliseconds(1);
    } else if (unit == "s") {
      u = absl::Seconds(1);
    } else if (unit == "m") {
      u = absl::Minutes(1);
    } else if (unit == "h") {
      u = absl::Hours(1);
    } else if (unit == "d") {
      u = absl::Hours(24);
    } else if (unit == "w") {
      u = absl::Hours(24 * 7);
    } else {
      return bad();
    }
    total += n * u;
  }
  // Cap at 100 years: longer is a typo, and it keeps every expiry representable.
  if (total > absl::Hours(24 * 365 * 100)) return bad();
  if (!allow_zero && total <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("duration \"", AV(text), "\" must be positive"));
  }
  return total;
}

std::string DurationString(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return "0s";
  std::string out;
  int64_t ms = absl::ToInt64Milliseconds(d);
  struct Unit {
    int64_t ms;
    const char* name;
  };
  static constexpr Unit kUnits[] = {
      {86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
  for (const Unit& u : kUnits) {
    if (ms >= u.ms) {
      absl::StrAppend(&out, ms / u.ms, u.name);
      ms %= u.ms;
    }
  }
  return out;
}

absl::StatusOr<absl::Time> ParseRfc3339(std::string_view text) {
  absl::Time t;
  std::string err;
  // %Y-%m-%d%ET%H:%M:%E*S%Ez accepts "Z" and numeric offsets, with any fraction.
  if (text.size() > 64 ||
      !absl::ParseTime("%Y-%m-%d%ET%H:%M:%E*S%Ez", std::string(text), &t, &err)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid time \"", AV(text.substr(0, 64)),
                     "\": expected RFC 3339, as in 2026-11-28T12:00:00Z"));
  }
  return t;
}

std::string FormatRfc3339(absl::Time t) {
  if (absl::ToUnixMicros(t) % 1000000 == 0) {
    return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
  }
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

}  // namespace quell::core
