// Structured logs: one JSON object per line.
//
//   {"time":"2026-01-01T00:00:00.000123Z","level":"info","msg":"mitigation created",
//    "mitigation":"m_01","policy":"bots","request_id":"r_9"}
//
// Usage:
//   obs::Logger log;                                    // stderr, level info
//   log.Info("mitigation created", {{"mitigation", id}, {"policy", p}, {"request_id", rid}});
//   log.Log(obs::Level::kWarn, "slow commit", {{"batch", 512}, {"seconds", 0.31}});
//
// Field values are strings, integers, doubles or bools. Fields whose name is a
// secret ("key", "authorization", "secret", "token", "password", or one of
// these after a '_', '-' or '.', e.g. "api_key", "x-api-key") are written as
// "[redacted]" whatever their value. Strings are JSON-escaped (every control
// character) and invalid UTF-8 is replaced by U+FFFD. A field named "time",
// "level" or "msg" is written as "field_time" etc. so the line keeps one of each.
//
// A call below the minimum level costs one relaxed atomic load and a compare;
// arguments are still evaluated, so guard expensive ones with Enabled().
//
// Thread-safety: Logger is thread-safe; lines from concurrent calls never
// interleave. Not a singleton: the server owns one and passes it by reference.
#ifndef QUELL_OBS_LOG_H_
#define QUELL_OBS_LOG_H_

#include <atomic>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace quell::obs {

enum class Level : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

// "debug", "info", "warn", "error", "off".
std::string_view LevelName(Level level);
// Accepts the names above (and "warning"), case-insensitively; otherwise
// InvalidArgument.
absl::StatusOr<Level> ParseLevel(std::string_view name);

// One key/value pair of a log line. It does not own its strings: build Fields
// only in the argument list of a logging call. Immutable.
class Field {
 public:
  enum class Kind { kString, kInt, kUint, kDouble, kBool };

  Field(std::string_view name, std::string_view v) : name_(name), kind_(Kind::kString), str_(v) {}
  Field(std::string_view name, const char* v) : Field(name, std::string_view(v)) {}
  Field(std::string_view name, const std::string& v) : Field(name, std::string_view(v)) {}
  template <std::signed_integral T>
  Field(std::string_view name, T v) : name_(name), kind_(Kind::kInt), int_(v) {}
  template <std::unsigned_integral T>
  requires(!std::same_as<T, bool>) Field(std::string_view name, T v)
      : name_(name), kind_(Kind::kUint), uint_(v) {}
  Field(std::string_view name, double v) : name_(name), kind_(Kind::kDouble), double_(v) {}
  Field(std::string_view name, bool v) : name_(name), kind_(Kind::kBool), bool_(v) {}

  std::string_view name() const { return name_; }
  Kind kind() const { return kind_; }
  std::string_view string_value() const { return str_; }
  int64_t int_value() const { return int_; }
  uint64_t uint_value() const { return uint_; }
  double double_value() const { return double_; }
  bool bool_value() const { return bool_; }

 private:
  std::string_view name_;
  Kind kind_;
  std::string_view str_;
  union {
    int64_t int_;
    uint64_t uint_;
    double double_;
    bool bool_;
  };
};

// True if a field of this name is written as "[redacted]" (case-insensitive).
bool IsRedactedField(std::string_view name);

// Appends one JSON log line, newline included, to `out`. Pure; exposed for tests.
void FormatLogLine(std::string& out, absl::Time time, Level level, std::string_view msg,
                   std::span<const Field> fields);

// Where lines go. Write is called with one or more complete lines (each ending in
// '\n') at a time: the Logger serialises calls, so implementations need no locking
// of their own.
class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void Write(std::string_view line) = 0;
};

// Writes to a stdio stream and flushes each line. Owns the stream only when
// constructed by Open(). Confined to the Logger that owns it.
class FileSink final : public LogSink {
 public:
  // Borrows `stream` (e.g. stderr), which must outlive the sink.
  explicit FileSink(std::FILE* stream) : stream_(stream), owned_(false) {}
  // Appends to the file at `path`, creating it (mode 0644 less umask).
  // Errors: the errno of fopen as an absl::Status (e.g. NotFound, PermissionDenied).
  static absl::StatusOr<std::unique_ptr<FileSink>> Open(const std::string& path);
  ~FileSink() override;
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  // A failed write is dropped: there is nowhere left to report it.
  void Write(std::string_view line) override;

 private:
  FileSink(std::FILE* stream, bool owned) : stream_(stream), owned_(owned) {}
  std::FILE* stream_;
  bool owned_;
};

// The JSON logger. Thread-safe. Owns its sink, and with a flush interval a
// background thread that writes to it.
class Logger {
 public:
  struct Options {
    Level min_level = Level::kInfo;
    // The clock; absl::Now when empty. Tests pass a fixed time.
    std::function<absl::Time()> now;
    // Zero: every line reaches the sink before the call returns. Positive: debug and
    // info lines (the access log) are appended to a buffer that a background thread
    // hands to the sink once per interval, so a request costs no write(2); a warn or
    // error line writes the buffer and then itself before the call returns, in order.
    // Lines buffered beyond kMaxBufferedBytes are dropped and counted (a warn line says
    // how many). Lost on kill -9: at most the last interval's debug and info lines.
    absl::Duration flush_interval = absl::ZeroDuration();
  };
  static constexpr size_t kMaxBufferedBytes = 16 << 20;

  // Logs to stderr.
  Logger() : Logger(Options{}) {}
  explicit Logger(Options options);
  Logger(std::unique_ptr<LogSink> sink, Options options);
  ~Logger();  // writes what is buffered
  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  // False for kOff: nothing is ever logged at that level.
  bool Enabled(Level level) const {
    const int l = static_cast<int>(level);
    return l >= min_level_.load(std::memory_order_relaxed) && l < static_cast<int>(Level::kOff);
  }
  void SetMinLevel(Level level) {
    min_level_.store(static_cast<int>(level), std::memory_order_relaxed);
  }
  Level min_level() const { return static_cast<Level>(min_level_.load(std::memory_order_relaxed)); }

  void Log(Level level, std::string_view msg, std::initializer_list<Field> fields = {}) {
    if (Enabled(level)) Write(level, msg, std::span<const Field>(fields.begin(), fields.size()));
  }
  void Log(Level level, std::string_view msg, std::span<const Field> fields) {
    if (Enabled(level)) Write(level, msg, fields);
  }
  void Debug(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Log(Level::kDebug, msg, fields);
  }
  void Info(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Log(Level::kInfo, msg, fields);
  }
  void Warn(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Log(Level::kWarn, msg, fields);
  }
  void Error(std::string_view msg, std::initializer_list<Field> fields = {}) {
    Log(Level::kError, msg, fields);
  }

 private:
  void Write(Level level, std::string_view msg, std::span<const Field> fields);
  // Hands the buffered lines to the sink. Caller holds sink_mu_.
  void FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sink_mu_);
  void RunFlusher();
  // A flusher thread runs and info lines are buffered.
  bool buffered() const { return flush_interval_ > absl::ZeroDuration(); }

  std::atomic<int> min_level_;
  const std::function<absl::Time()> now_;
  const absl::Duration flush_interval_;
  // Lock order: sink_mu_, then buffer_mu_. Appending a buffered line takes only buffer_mu_.
  absl::Mutex sink_mu_;
  const std::unique_ptr<LogSink> sink_ ABSL_PT_GUARDED_BY(sink_mu_);
  std::string to_write_ ABSL_GUARDED_BY(sink_mu_);  // the flusher's side of the buffer
  absl::Mutex buffer_mu_;
  std::string buffer_ ABSL_GUARDED_BY(buffer_mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(buffer_mu_) = 0;
  absl::Notification stop_;
  std::thread flusher_;  // running iff flush_interval_ > 0
};

}  // namespace quell::obs

#endif  // QUELL_OBS_LOG_H_
