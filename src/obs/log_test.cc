#include "obs/log.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "rapidjson/error/en.h"

namespace quell::obs {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class CaptureSink : public LogSink {
 public:
  void Write(std::string_view line) override {
    absl::MutexLock lock(&mu_);
    lines_.emplace_back(line);
  }
  std::vector<std::string> lines() const {
    absl::MutexLock lock(&mu_);
    return lines_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_;
};

const absl::Time kTime = absl::FromUnixMicros(1767225600123456);  // 2026-01-01T00:00:00.123456Z

struct Captured {
  CaptureSink* sink;
  std::unique_ptr<Logger> logger;
};

Captured MakeLogger(Level level = Level::kInfo) {
  auto sink = std::make_unique<CaptureSink>();
  CaptureSink* raw = sink.get();
  return {raw,
          std::make_unique<Logger>(std::move(sink), Logger::Options{level, [] { return kTime; }})};
}

// Parses one line strictly (UTF-8 validated) and returns the document.
rapidjson::Document ParseLine(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one object per line";
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(line.c_str(), line.size());
  EXPECT_FALSE(doc.HasParseError()) << rapidjson::GetParseError_En(doc.GetParseError()) << " at "
                                    << doc.GetErrorOffset() << " in " << line;
  return doc;
}

TEST(LoggerTest, WritesOneJsonObjectPerLine) {
  Captured c = MakeLogger();
  const std::string id = "m_01";
  c.logger->Log(Level::kInfo, "mitigation created",
                {{"mitigation", id}, {"policy", "bots"}, {"request_id", std::string_view("r_9")}});
  ASSERT_EQ(c.sink->lines().size(), 1u);
  EXPECT_EQ(c.sink->lines()[0],
            "{\"time\":\"2026-01-01T00:00:00.123456Z\",\"level\":\"info\",\"msg\":\"mitigation "
            "created\",\"mitigation\":\"m_01\",\"policy\":\"bots\",\"request_id\":\"r_9\"}\n");
}

TEST(LoggerTest, FieldTypes) {
  Captured c = MakeLogger();
  const int64_t neg = -42;
  const uint64_t big = std::numeric_limits<uint64_t>::max();
  c.logger->Warn("types", {{"i", 7},
                           {"neg", neg},
                           {"u", big},
                           {"d", 0.25},
                           {"f", 1.5f},
                           {"t", true},
                           {"b", false},
                           {"nan", std::numeric_limits<double>::quiet_NaN()},
                           {"cstr", "x"}});
  const rapidjson::Document d = ParseLine(c.sink->lines().at(0));
  EXPECT_STREQ(d["level"].GetString(), "warn");
  EXPECT_EQ(d["i"].GetInt64(), 7);
  EXPECT_EQ(d["neg"].GetInt64(), -42);
  EXPECT_EQ(d["u"].GetUint64(), big);
  EXPECT_EQ(d["d"].GetDouble(), 0.25);
  EXPECT_EQ(d["f"].GetDouble(), 1.5);
  EXPECT_TRUE(d["t"].GetBool());
  EXPECT_FALSE(d["b"].GetBool());
  EXPECT_STREQ(d["nan"].GetString(), "NaN");
  EXPECT_STREQ(d["cstr"].GetString(), "x");
}

TEST(LoggerTest, EscapesEveryControlCharacterAndQuotes) {
  Captured c = MakeLogger();
  std::string all;
  for (int ch = 0; ch < 0x20; ++ch) all.push_back(static_cast<char>(ch));
  all += "\x7f\"\\/ end";
  c.logger->Info(all, {{"v", all}, {all, 1}});
  const std::string line = c.sink->lines().at(0);
  for (char ch : line.substr(0, line.size() - 1)) {
    EXPECT_GE(static_cast<unsigned char>(ch), 0x20) << "raw control char in " << line;
  }
  const rapidjson::Document d = ParseLine(line);
  EXPECT_EQ(std::string(d["msg"].GetString(), d["msg"].GetStringLength()), all);
  EXPECT_EQ(std::string(d["v"].GetString(), d["v"].GetStringLength()), all);
  EXPECT_TRUE(d.HasMember(rapidjson::Value(all.c_str(), static_cast<unsigned>(all.size()))));
}

TEST(LoggerTest, ReplacesInvalidUtf8) {
  Captured c = MakeLogger();
  c.logger->Info("bad \xC3\x28 msg", {{"v", "\xFF\xFE ok \xE2\x82\xAC"}, {"\xC0key", "x"}});
  const rapidjson::Document d = ParseLine(c.sink->lines().at(0));  // validates UTF-8
  EXPECT_STREQ(d["msg"].GetString(), "bad \xEF\xBF\xBD( msg");
  EXPECT_STREQ(d["v"].GetString(), "\xEF\xBF\xBD\xEF\xBF\xBD ok \xE2\x82\xAC");
}

TEST(LoggerTest, RedactsSecretFields) {
  Captured c = MakeLogger();
  c.logger->Info("auth", {{"key", "qk_live_SECRET1"},
                          {"Authorization", "Bearer SECRET2"},
                          {"secret", "SECRET3"},
                          {"token", "SECRET4"},
                          {"password", "SECRET5"},
                          {"api_key", "SECRET6"},
                          {"x-api-key", "SECRET7"},
                          {"client.secret", "SECRET8"},
                          {"session_token", 987654321},
                          {"key_id", "k_1"},
                          {"monkey", "banana"},
                          {"token_count", 3}});
  const std::string line = c.sink->lines().at(0);
  EXPECT_THAT(line, Not(HasSubstr("SECRET")));
  EXPECT_THAT(line, Not(HasSubstr("987654321")));
  const rapidjson::Document d = ParseLine(line);
  for (const char* name : {"key", "Authorization", "secret", "token", "password", "api_key",
                           "x-api-key", "client.secret", "session_token"}) {
    EXPECT_STREQ(d[name].GetString(), "[redacted]") << name;
  }
  EXPECT_STREQ(d["key_id"].GetString(), "k_1");
  EXPECT_STREQ(d["monkey"].GetString(), "banana");
  EXPECT_EQ(d["token_count"].GetInt(), 3);
  EXPECT_TRUE(IsRedactedField("PASSWORD"));
  EXPECT_TRUE(IsRedactedField("db_password"));
  EXPECT_FALSE(IsRedactedField("passwords_reset"));
  EXPECT_FALSE(IsRedactedField(""));
}

TEST(LoggerTest, ReservedFieldNamesAreRenamed) {
  Captured c = MakeLogger();
  c.logger->Info("real", {{"msg", "fake"}, {"level", "fake"}, {"time", 1}});
  const rapidjson::Document d = ParseLine(c.sink->lines().at(0));
  EXPECT_STREQ(d["msg"].GetString(), "real");
  EXPECT_STREQ(d["level"].GetString(), "info");
  EXPECT_STREQ(d["field_msg"].GetString(), "fake");
  EXPECT_STREQ(d["field_level"].GetString(), "fake");
  EXPECT_EQ(d["field_time"].GetInt(), 1);
}

TEST(LoggerTest, MinimumLevel) {
  Captured c = MakeLogger(Level::kWarn);
  c.logger->Debug("d");
  c.logger->Info("i");
  c.logger->Warn("w");
  c.logger->Error("e");
  EXPECT_FALSE(c.logger->Enabled(Level::kInfo));
  EXPECT_TRUE(c.logger->Enabled(Level::kError));
  ASSERT_EQ(c.sink->lines().size(), 2u);
  EXPECT_THAT(c.sink->lines()[0], HasSubstr("\"level\":\"warn\""));
  EXPECT_THAT(c.sink->lines()[1], HasSubstr("\"level\":\"error\""));
  c.logger->SetMinLevel(Level::kDebug);
  c.logger->Debug("d");
  EXPECT_EQ(c.sink->lines().size(), 3u);
  c.logger->SetMinLevel(Level::kOff);
  c.logger->Error("e");
  c.logger->Log(Level::kOff, "never");
  EXPECT_EQ(c.sink->lines().size(), 3u);
  EXPECT_EQ(c.logger->min_level(), Level::kOff);
}

TEST(LoggerTest, ParseLevel) {
  EXPECT_EQ(*ParseLevel("debug"), Level::kDebug);
  EXPECT_EQ(*ParseLevel("INFO"), Level::kInfo);
  EXPECT_EQ(*ParseLevel("warning"), Level::kWarn);
  EXPECT_EQ(*ParseLevel("Error"), Level::kError);
  EXPECT_EQ(*ParseLevel("off"), Level::kOff);
  EXPECT_EQ(ParseLevel("verbose").status().code(), absl::StatusCode::kInvalidArgument);
  for (Level l : {Level::kDebug, Level::kInfo, Level::kWarn, Level::kError, Level::kOff}) {
    EXPECT_EQ(*ParseLevel(LevelName(l)), l);
  }
}

TEST(LoggerTest, TimeFormat) {
  std::string out;
  FormatLogLine(out, absl::FromUnixMicros(0), Level::kError, "", {});
  EXPECT_EQ(out, "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"error\",\"msg\":\"\"}\n");
  out.clear();
  FormatLogLine(out, absl::FromUnixMicros(-1), Level::kInfo, "", {});
  EXPECT_THAT(out, HasSubstr("\"1969-12-31T23:59:59.999999Z\""));
  out.clear();
  FormatLogLine(out, absl::FromUnixMicros(4102444799999999), Level::kInfo, "", {});
  EXPECT_THAT(out, HasSubstr("\"2099-12-31T23:59:59.999999Z\""));
}

TEST(LoggerTest, ConcurrentLinesDoNotInterleave) {
  Captured c = MakeLogger();
  constexpr int kThreads = 8;
  constexpr int kLines = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string payload(100 + t * 50, static_cast<char>('a' + t));
      for (int i = 0; i < kLines; ++i) c.logger->Info("line", {{"t", t}, {"i", i}, {"p", payload}});
    });
  }
  for (std::thread& t : threads) t.join();
  const std::vector<std::string> lines = c.sink->lines();
  ASSERT_EQ(lines.size(), static_cast<std::size_t>(kThreads * kLines));
  std::vector<int> next(kThreads, 0);
  for (const std::string& line : lines) {
    const rapidjson::Document d = ParseLine(line);
    const int t = d["t"].GetInt();
    EXPECT_EQ(d["i"].GetInt(), next[t]++) << "per-thread order";
    EXPECT_EQ(d["p"].GetStringLength(), static_cast<unsigned>(100 + t * 50));
  }
}

TEST(FileSinkTest, AppendsToAFile) {
  const std::string path = ::testing::TempDir() + "/obs_log_test.jsonl";
  std::remove(path.c_str());
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<std::unique_ptr<FileSink>> sink = FileSink::Open(path);
    ASSERT_TRUE(sink.ok()) << sink.status();
    Logger logger(*std::move(sink), Logger::Options{Level::kInfo, [] { return kTime; }});
    logger.Info("hello", {{"round", round}});
  }
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const rapidjson::Document d = ParseLine(line + "\n");
    EXPECT_EQ(d["round"].GetInt(), n++);
  }
  EXPECT_EQ(n, 2);
}

TEST(FileSinkTest, OpenFailureIsAStatus) {
  absl::StatusOr<std::unique_ptr<FileSink>> sink =
      FileSink::Open(::testing::TempDir() + "/no/such/dir/x.log");
  EXPECT_EQ(sink.status().code(), absl::StatusCode::kNotFound);
}

// A sink whose writes outlive the logger that owns it, split into lines.
class SharedSink : public LogSink {
 public:
  struct State {
    absl::Mutex mu;
    std::vector<std::string> writes ABSL_GUARDED_BY(mu);
  };
  explicit SharedSink(std::shared_ptr<State> state) : state_(std::move(state)) {}
  void Write(std::string_view text) override {
    absl::MutexLock lock(&state_->mu);
    state_->writes.emplace_back(text);
  }
  static std::vector<std::string> Lines(State& state) {
    absl::MutexLock lock(&state.mu);
    std::vector<std::string> out;
    for (const std::string& w : state.writes) {
      EXPECT_EQ(w.back(), '\n') << "a write ends with a complete line";
      for (size_t start = 0; start < w.size();) {
        const size_t nl = w.find('\n', start);
        out.push_back(w.substr(start, nl + 1 - start));
        start = nl + 1;
      }
    }
    return out;
  }

 private:
  std::shared_ptr<State> state_;
};

std::unique_ptr<Logger> BufferedLogger(std::shared_ptr<SharedSink::State> state,
                                       absl::Duration interval) {
  return std::make_unique<Logger>(
      std::make_unique<SharedSink>(std::move(state)),
      Logger::Options{
          .min_level = Level::kDebug, .now = [] { return kTime; }, .flush_interval = interval});
}

TEST(BufferedLoggerTest, InfoWaitsForTheFlusherAndAWarnWritesEverythingBeforeItInOrder) {
  auto state = std::make_shared<SharedSink::State>();
  auto logger = BufferedLogger(state, absl::Hours(1));
  logger->Info("first");
  logger->Debug("second");
  EXPECT_TRUE(SharedSink::Lines(*state).empty()) << "buffered until the next flush";
  logger->Warn("third");
  std::vector<std::string> lines = SharedSink::Lines(*state);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(std::string(ParseLine(lines[0])["msg"].GetString()), "first");
  EXPECT_EQ(std::string(ParseLine(lines[1])["msg"].GetString()), "second");
  EXPECT_EQ(std::string(ParseLine(lines[2])["msg"].GetString()), "third");
}

TEST(BufferedLoggerTest, TheFlusherWritesWithoutAnyFurtherCall) {
  auto state = std::make_shared<SharedSink::State>();
  auto logger = BufferedLogger(state, absl::Milliseconds(5));
  logger->Info("soon");
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (SharedSink::Lines(*state).empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  std::vector<std::string> lines = SharedSink::Lines(*state);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(std::string(ParseLine(lines[0])["msg"].GetString()), "soon");
}

TEST(BufferedLoggerTest, ConcurrentLinesAllArriveWholeAndTheDestructorFlushes) {
  auto state = std::make_shared<SharedSink::State>();
  auto logger = BufferedLogger(state, absl::Milliseconds(1));
  constexpr int kThreads = 4, kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) logger->Info("line", {{"t", t}, {"i", i}});
    });
  }
  for (std::thread& t : threads) t.join();
  logger.reset();
  std::vector<std::string> lines = SharedSink::Lines(*state);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kPerThread));
  std::vector<int> next(kThreads, 0);  // each thread's lines arrive in its order
  for (const std::string& line : lines) {
    rapidjson::Document doc = ParseLine(line);
    const int t = doc["t"].GetInt();
    EXPECT_EQ(doc["i"].GetInt(), next[t]++);
  }
}

TEST(BufferedLoggerTest, LinesBeyondTheCapAreDroppedAndCounted) {
  auto state = std::make_shared<SharedSink::State>();
  auto logger = BufferedLogger(state, absl::Hours(1));
  const std::string big(60000, 'x');
  constexpr int kLines = 300;  // 300 x ~60 KB > Logger::kMaxBufferedBytes
  for (int i = 0; i < kLines; ++i) logger->Info(big);
  logger.reset();
  std::vector<std::string> lines = SharedSink::Lines(*state);
  ASSERT_FALSE(lines.empty());
  rapidjson::Document last = ParseLine(lines.back());
  EXPECT_EQ(std::string(last["level"].GetString()), "warn");
  EXPECT_THAT(last["msg"].GetString(), HasSubstr("dropped"));
  const int kept = static_cast<int>(lines.size()) - 1;
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, kLines);
  EXPECT_EQ(last["lines"].GetInt(), kLines - kept);
}

}  // namespace
}  // namespace quell::obs
