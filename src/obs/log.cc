#include "obs/log.h"

#include <cerrno>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/threads.h"
#include "obs/internal/text.h"

namespace quell::obs {
namespace {

constexpr std::string_view kSecretWords[] = {"key", "authorization", "secret", "token", "password"};

// Writes "YYYY-MM-DDTHH:MM:SS.uuuuuuZ". The civil-time conversion is cached
// per thread for the current second: it costs more than the rest of the line.
void AppendTime(std::string& out, absl::Time t) {
  const int64_t micros = absl::ToUnixMicros(t);
  int64_t secs = micros / 1000000;
  int64_t frac = micros % 1000000;
  if (frac < 0) {  // times before 1970 round towards the past
    frac += 1000000;
    --secs;
  }
  thread_local int64_t cached_secs = std::numeric_limits<int64_t>::min();
  thread_local char cached[32];
  thread_local int cached_len = 0;
  if (secs != cached_secs) {
    const absl::CivilSecond cs =
        absl::ToCivilSecond(absl::FromUnixSeconds(secs), absl::UTCTimeZone());
    cached_len = std::snprintf(cached, sizeof(cached), "%04lld-%02d-%02dT%02d:%02d:%02d",
                               static_cast<long long>(cs.year()), cs.month(), cs.day(), cs.hour(),
                               cs.minute(), cs.second());
    cached_secs = secs;
  }
  out.append(cached, static_cast<std::size_t>(cached_len));
  char digits[8] = {'.', '0', '0', '0', '0', '0', '0', 'Z'};
  for (int i = 6; i >= 1; --i, frac /= 10) digits[i] = static_cast<char>('0' + frac % 10);
  out.append(digits, sizeof(digits));
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
  }
  return true;
}

bool IsReservedName(std::string_view name) {
  return name == "time" || name == "level" || name == "msg";
}

}  // namespace

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
    case Level::kOff:
      return "off";
  }
  return "unknown";
}

absl::StatusOr<Level> ParseLevel(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(AV(name));
  if (lower == "debug") return Level::kDebug;
  if (lower == "info") return Level::kInfo;
  if (lower == "warn" || lower == "warning") return Level::kWarn;
  if (lower == "error") return Level::kError;
  if (lower == "off") return Level::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log level \"", AV(name), "\": want debug, info, warn, error or off"));
}

bool IsRedactedField(std::string_view name) {
  for (std::string_view word : kSecretWords) {
    if (name.size() < word.size()) continue;
    if (!EqualsIgnoreCase(name.substr(name.size() - word.size()), word)) continue;
    if (name.size() == word.size()) return true;
    const char sep = name[name.size() - word.size() - 1];
    if (sep == '_' || sep == '-' || sep == '.') return true;
  }
  return false;
}

void FormatLogLine(std::string& out, absl::Time time, Level level, std::string_view msg,
                   std::span<const Field> fields) {
  out.append("{\"time\":\"");
  AppendTime(out, time);
  out.append("\",\"level\":\"").append(LevelName(level)).append("\",\"msg\":");
  internal::AppendJsonString(out, msg);
  for (const Field& f : fields) {
    out.push_back(',');
    if (IsReservedName(f.name())) {
      internal::AppendJsonString(out, absl::StrCat("field_", AV(f.name())));
    } else {
      internal::AppendJsonString(out, f.name());
    }
    out.push_back(':');
    if (IsRedactedField(f.name())) {
      out.append("\"[redacted]\"");
      continue;
    }
    switch (f.kind()) {
      case Field::Kind::kString:
        internal::AppendJsonString(out, f.string_value());
        break;
      case Field::Kind::kInt:
        internal::AppendInt(out, f.int_value());
        break;
      case Field::Kind::kUint:
        internal::AppendUint(out, f.uint_value());
        break;
      case Field::Kind::kDouble:
        internal::AppendJsonDouble(out, f.double_value());
        break;
      case Field::Kind::kBool:
        out.append(f.bool_value() ? "true" : "false");
        break;
    }
  }
  out.append("}\n");
}

absl::StatusOr<std::unique_ptr<FileSink>> FileSink::Open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat("cannot open log file ", path, ": ", std::strerror(err)));
  }
  return std::unique_ptr<FileSink>(new FileSink(f, /*owned=*/true));
}

FileSink::~FileSink() {
  if (owned_) std::fclose(stream_);
}

void FileSink::Write(std::string_view line) {
  std::fwrite(line.data(), 1, line.size(), stream_);
  std::fflush(stream_);
}

Logger::Logger(Options options) : Logger(std::make_unique<FileSink>(stderr), std::move(options)) {}

Logger::Logger(std::unique_ptr<LogSink> sink, Options options)
    : min_level_(static_cast<int>(options.min_level)),
      now_(options.now ? std::move(options.now) : [] { return absl::Now(); }),
      flush_interval_(options.flush_interval),
      sink_(std::move(sink)) {
  if (buffered())
    flusher_ = std::thread([this] {
      core::NameThisThread("quell-log");
      RunFlusher();
    });
}

Logger::~Logger() {
  if (flusher_.joinable()) {
    stop_.Notify();
    flusher_.join();
  }
  absl::MutexLock lock(&sink_mu_);
  FlushLocked();
}

void Logger::RunFlusher() {
  bool stopping = false;
  while (!stopping) {
    stopping = stop_.WaitForNotificationWithTimeout(flush_interval_);
    absl::MutexLock lock(&sink_mu_);
    FlushLocked();
  }
}

void Logger::FlushLocked() {
  uint64_t dropped = 0;
  {
    absl::MutexLock lock(&buffer_mu_);
    to_write_.swap(buffer_);
    std::swap(dropped, dropped_);
  }
  if (!to_write_.empty()) sink_->Write(to_write_);
  // Keep one buffer's worth of capacity for the next round, not a burst's.
  if (to_write_.capacity() > (1 << 20)) std::string().swap(to_write_);
  to_write_.clear();
  if (dropped > 0) {
    const Field fields[] = {{"lines", dropped}};
    FormatLogLine(to_write_, now_(), Level::kWarn, "log lines dropped: the log sink is behind",
                  fields);
    sink_->Write(to_write_);
    to_write_.clear();
  }
}

void Logger::Write(Level level, std::string_view msg, std::span<const Field> fields) {
  // Format outside the locks into a per-thread buffer, so the critical section is only
  // the append or the write itself.
  thread_local std::string line;
  line.clear();
  FormatLogLine(line, now_(), level, msg, fields);
  if (buffered() && level < Level::kWarn) {
    absl::MutexLock lock(&buffer_mu_);
    if (buffer_.size() + line.size() <= kMaxBufferedBytes) {
      buffer_.append(line);
    } else {
      ++dropped_;
    }
  } else {
    absl::MutexLock lock(&sink_mu_);
    if (buffered()) FlushLocked();  // what was logged before this line goes first
    sink_->Write(line);
  }
  if (line.capacity() > (64 << 10)) std::string().swap(line);  // do not pin a huge line
}

}  // namespace quell::obs
