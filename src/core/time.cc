#include "core/time.h"

#include <optional>

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
  // Well formed, but past what any expiry may be: said so, not "write a number and a unit".
  auto too_long = [&] {
    return absl::InvalidArgumentError(absl::StrCat("invalid duration \"", AV(text.substr(0, 40)),
                                                   "\": at most 100 years (36500d)"));
  };
  if (text.empty() || text.size() > 40) return bad();
  absl::Duration total = absl::ZeroDuration();
  size_t i = 0;
  while (i < text.size()) {
    int64_t n = 0;
    size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (n > 1'000'000'000'000) return too_long();
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
  if (total > absl::Hours(24 * 365 * 100)) return too_long();
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

namespace {

// Days from 1970-01-01 to the proleptic Gregorian (year, month, day): CivilFromDays'
// inverse, on the same 400-year eras.
int64_t DaysFromCivil(int64_t year, int month, int day) {
  year -= month <= 2 ? 1 : 0;
  const int64_t era = (year >= 0 ? year : year - 399) / 400;
  const int64_t yoe = year - era * 400;                                               // [0, 399]
  const int64_t doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;  // [0, 365]
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;                          // [0, 146096]
  return era * 146097 + doe - 719468;
}

// `n` digits of `p` as a number, or -1 if one is not a digit.
int Digits(const char* p, int n) {
  int v = 0;
  for (int i = 0; i < n; ++i) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  return v;
}

// The form every record and almost every client writes, "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z",
// read without absl::ParseTime (thousands of instructions a call; every detection and
// every stored mitigation read parses times). nullopt: not that form or not a valid date
// (leap seconds, 30 February...); ParseRfc3339 then lets absl decide.
std::optional<absl::Time> ParseCanonicalRfc3339(std::string_view t) {
  if (t.size() < 20 || t.size() > 30 || t[4] != '-' || t[7] != '-' || t[10] != 'T' ||
      t[13] != ':' || t[16] != ':' || t.back() != 'Z') {
    return std::nullopt;
  }
  const char* p = t.data();
  const int year = Digits(p, 4), month = Digits(p + 5, 2), day = Digits(p + 8, 2);
  const int hour = Digits(p + 11, 2), minute = Digits(p + 14, 2), second = Digits(p + 17, 2);
  if (year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 ||
      minute > 59 || second < 0 || second > 59) {
    return std::nullopt;
  }
  static constexpr int kMonthDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
  if (day > kMonthDays[month - 1] + (month == 2 && leap ? 1 : 0)) return std::nullopt;
  int64_t nanos = 0;
  if (t.size() > 20) {
    const int digits = static_cast<int>(t.size()) - 21;  // between '.' and 'Z'
    if (t[19] != '.' || digits < 1) return std::nullopt;
    const int frac = Digits(p + 20, digits);
    if (frac < 0) return std::nullopt;
    nanos = frac;
    for (int i = digits; i < 9; ++i) nanos *= 10;
  }
  const int64_t secs = DaysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
  return absl::FromUnixSeconds(secs) + absl::Nanoseconds(nanos);
}

}  // namespace

absl::StatusOr<absl::Time> ParseRfc3339(std::string_view text) {
  if (std::optional<absl::Time> t = ParseCanonicalRfc3339(text)) return *t;
  absl::Time t;
  std::string err;
  // %Y-%m-%d%ET%H:%M:%E*S%Ez accepts "Z" and numeric offsets, with any fraction.
  // RFC 3339's years are 0000-9999, as written and as an instant once the offset applies
  // (absl also reads "-0001" and "+12345"): FormatRfc3339 writes nothing outside them,
  // which blanked such a time in records ("since": "").
  static const absl::Time kYear0 = absl::FromUnixSeconds(-62167219200);      // 0000-01-01
  static const absl::Time kYear10000 = absl::FromUnixSeconds(253402300800);  // 10000-01-01
  if (text.size() > 64 || text.size() < 5 || Digits(text.data(), 4) < 0 || text[4] != '-' ||
      !absl::ParseTime("%Y-%m-%d%ET%H:%M:%E*S%Ez", std::string(text), &t, &err) || t < kYear0 ||
      t >= kYear10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid time \"", AV(text.substr(0, 64)),
                     "\": expected RFC 3339, as in 2026-11-28T12:00:00Z"));
  }
  return t;
}

namespace {

// Days since 1970-01-01 -> proleptic Gregorian (year, month, day), valid for any int64
// day count in range. Eras of 400 years (146,097 days) make the leap rules regular.
void CivilFromDays(int64_t days, int64_t* year, int* month, int* day) {
  days += 719468;  // shift the epoch to 0000-03-01
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const int64_t doe = days - era * 146097;                                    // [0, 146096]
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  // [0, 399]
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                // [0, 365]
  const int64_t mp = (5 * doy + 2) / 153;                                     // [0, 11]
  *day = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  *month = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  *year = yoe + era * 400 + (*month <= 2 ? 1 : 0);
}

void Put(char* p, int64_t v, int width) {
  for (int i = width - 1; i >= 0; --i) {
    p[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
}

}  // namespace

// Hand-written because this runs for every JSON record (ledger payloads, feeds,
// snapshots): absl::FormatTime costs ~5,000 instructions a call.
std::string_view FormatRfc3339To(absl::Time t, char* buf) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return {};
  const int64_t us = absl::ToUnixMicros(t);
  int64_t secs = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
  const int64_t frac = us - secs * 1000000;
  int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
  int64_t sod = secs - days * 86400;
  int64_t year;
  int month, day;
  CivilFromDays(days, &year, &month, &day);
  if (year < 0 || year > 9999) return {};
  Put(buf, year, 4);
  buf[4] = '-';
  Put(buf + 5, month, 2);
  buf[7] = '-';
  Put(buf + 8, day, 2);
  buf[10] = 'T';
  Put(buf + 11, sod / 3600, 2);
  buf[13] = ':';
  Put(buf + 14, sod / 60 % 60, 2);
  buf[16] = ':';
  Put(buf + 17, sod % 60, 2);
  size_t n = 19;
  if (frac != 0) {
    buf[n++] = '.';
    Put(buf + n, frac, 6);
    n += 6;
  }
  buf[n++] = 'Z';
  return std::string_view(buf, n);
}

void AppendRfc3339(absl::Time t, std::string* out) {
  char buf[kRfc3339MaxBytes];
  std::string_view v = FormatRfc3339To(t, buf);
  if (v.empty()) {  // outside RFC 3339's four-digit years: let abseil say it
    out->append(absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone()));
  } else {
    out->append(v);
  }
}

std::string FormatRfc3339(absl::Time t) {
  std::string out;
  AppendRfc3339(t, &out);
  return out;
}

}  // namespace quell::core
