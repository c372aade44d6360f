#include "core/time.h"

#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace quell::core {
namespace {

TEST(DurationTest, ParsesUnitsAndSums) {
  EXPECT_EQ(*ParseDuration("90s"), absl::Seconds(90));
  EXPECT_EQ(*ParseDuration("15m"), absl::Minutes(15));
  EXPECT_EQ(*ParseDuration("2h"), absl::Hours(2));
  EXPECT_EQ(*ParseDuration("30d"), absl::Hours(720));
  EXPECT_EQ(*ParseDuration("1w"), absl::Hours(168));
  EXPECT_EQ(*ParseDuration("500ms"), absl::Milliseconds(500));
  EXPECT_EQ(*ParseDuration("1h30m"), absl::Minutes(90));
}

TEST(DurationTest, RejectsBadSpellings) {
  for (const char* bad : {"", "10", "h", "1x", "1.5h", "-1h", "1 h", "0s", "99999999999999d"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
  EXPECT_TRUE(ParseDuration("0s", /*allow_zero=*/true).ok());
  // Well formed but too long: the message says what the limit is, not how to spell one.
  for (const char* too_long : {"100000d", "99999999999999d", "36501d"}) {
    auto d = ParseDuration(too_long);
    ASSERT_FALSE(d.ok()) << too_long;
    EXPECT_NE(d.status().message().find("at most 100 years"), absl::string_view::npos)
        << d.status();
  }
  EXPECT_TRUE(ParseDuration("36500d").ok());
}

TEST(DurationTest, FormatRoundTrips) {
  for (const char* s : {"90s", "30d", "1h30m", "500ms", "1d1h1m1s"}) {
    auto d = ParseDuration(s);
    ASSERT_TRUE(d.ok()) << s;
    EXPECT_EQ(*ParseDuration(DurationString(*d)), *d);
  }
  EXPECT_EQ(DurationString(absl::Hours(720)), "30d");
  EXPECT_EQ(DurationString(absl::Seconds(90)), "1m30s");
}

TEST(TimeTest, Rfc3339) {
  auto t = ParseRfc3339("2026-11-28T12:00:00Z");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(FormatRfc3339(*t), "2026-11-28T12:00:00Z");
  auto off = ParseRfc3339("2026-11-28T13:00:00+01:00");
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, *t);
  auto frac = ParseRfc3339("2026-11-28T12:00:00.25Z");
  ASSERT_TRUE(frac.ok());
  EXPECT_EQ(FormatRfc3339(*frac), "2026-11-28T12:00:00.250000Z");
  for (const char* bad :
       {"", "2026-11-28", "2026-11-28 12:00:00Z", "yesterday", "2026-13-01T00:00:00Z",
        // Years outside 0000-9999, as written or once the offset applies: FormatRfc3339
        // wrote "" for them, so a stored time went blank.
        "-0001-12-31T00:00:00Z", "+2026-11-28T12:00:00Z", "12026-11-28T12:00:00Z",
        "0000-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"}) {
    EXPECT_FALSE(ParseRfc3339(bad).ok()) << bad;
  }
  // The ends of the range, with and without an offset, read and written back.
  for (const char* edge : {"0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                           "0000-01-01T00:00:00-00:01", "9999-12-31T23:59:59+00:01"}) {
    auto e = ParseRfc3339(edge);
    ASSERT_TRUE(e.ok()) << edge;
    EXPECT_FALSE(FormatRfc3339(*e).empty()) << edge;
  }
}

TEST(TimeTest, FastFormatAgreesWithAbseil) {
  // Every day boundary over centuries, leap days, negative times, fractions.
  std::vector<int64_t> samples = {0,
                                  -1,
                                  1,
                                  951782400,
                                  951868800,
                                  4107542399,
                                  -30610224000,
                                  253402300799,
                                  1767225600,
                                  1709164800,
                                  1709251199};
  for (int64_t s = -2208988800; s < 4102444800; s += 86400 * 37 + 3671) samples.push_back(s);
  for (int64_t s : samples) {
    for (int64_t us : {int64_t{0}, int64_t{1}, int64_t{999999}, int64_t{500000}}) {
      absl::Time t = absl::FromUnixMicros(s * 1000000 + us);
      std::string want = us == 0 ? absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone())
                                 : absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
      ASSERT_EQ(FormatRfc3339(t), want) << s << " " << us;
      ASSERT_EQ(*ParseRfc3339(FormatRfc3339(t)), t);
    }
  }
}

// ParseRfc3339 reads the canonical form itself and leaves the rest to absl::ParseTime:
// both must give the same answer for every text, valid or not.
TEST(TimeTest, FastParseAgreesWithAbseil) {
  auto absl_parse = [](const std::string& text) -> std::optional<absl::Time> {
    absl::Time t;
    std::string err;
    if (!absl::ParseTime("%Y-%m-%d%ET%H:%M:%E*S%Ez", text, &t, &err)) return std::nullopt;
    return t;
  };
  std::vector<std::string> texts = {"2024-02-29T23:59:59Z",  "2023-02-29T00:00:00Z",
                                    "2100-02-29T00:00:00Z",  "2000-02-29T12:00:00Z",
                                    "2026-04-31T00:00:00Z",  "2026-11-28T24:00:00Z",
                                    "2026-11-28T23:60:00Z",  "2026-11-28T23:59:60Z",
                                    "0000-01-01T00:00:00Z",  "9999-12-31T23:59:59.999999999Z",
                                    "2026-11-28T12:00:00.Z", "2026-11-28T12:00:00.1234567891Z",
                                    "2026-11-28t12:00:00z",  "2026-11-28T12:00:00+00:00",
                                    "2026-1-28T12:00:00Z",   "2026-11-28T12:00:0aZ",
                                    "2026-00-10T00:00:00Z",  "2026-11-00T00:00:00Z",
                                    "+026-11-28T12:00:00Z",  "2026-11-28T12:00:00.5"};
  // A time every 11 days and an hour over three centuries, with fractions of 0-9 digits.
  for (int64_t s = -2208988800; s < 4102444800; s += 86400 * 11 + 3599) {
    std::string base =
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(s), absl::UTCTimeZone());
    const int digits = static_cast<int>(s % 10 < 0 ? -(s % 10) : s % 10);
    std::string text = base;
    if (digits > 0) {
      text.push_back('.');
      text.append(std::string_view("123456789").substr(0, digits));
    }
    texts.push_back(text + "Z");
  }
  for (const std::string& text : texts) {
    std::optional<absl::Time> want = absl_parse(text);
    absl::StatusOr<absl::Time> got = ParseRfc3339(text);
    ASSERT_EQ(got.ok(), want.has_value()) << text;
    if (want) {
      ASSERT_EQ(*got, *want) << text;
    }
  }
}

TEST(FakeClockTest, Advances) {
  FakeClock clock;
  absl::Time t0 = clock.Now();
  clock.Advance(absl::Minutes(5));
  EXPECT_EQ(clock.Now() - t0, absl::Minutes(5));
}

}  // namespace
}  // namespace quell::core
