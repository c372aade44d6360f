#include "obs/internal/text.h"

#include <string>

#include "gtest/gtest.h"

namespace quell::obs::internal {
namespace {

std::string Valid(std::string_view in) {
  std::string out;
  AppendValidUtf8(out, in);
  return out;
}

std::string Json(std::string_view in) {
  std::string out;
  AppendJsonString(out, in);
  return out;
}

constexpr std::string_view kFffd = "\xEF\xBF\xBD";

TEST(Utf8Test, KeepsWellFormedText) {
  for (std::string_view s : {"", "plain", "caf\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x8E\xB5",
                             "\xED\x9F\xBF", "\xF4\x8F\xBF\xBF", "\xEE\x80\x80"}) {
    EXPECT_TRUE(IsValidUtf8(s)) << s;
    EXPECT_EQ(Valid(s), s);
  }
}

TEST(Utf8Test, ReplacesEachIllFormedByte) {
  const std::string r(kFffd);
  EXPECT_EQ(Valid("a\xFF"
                  "b"),
            "a" + r + "b");
  EXPECT_EQ(Valid("\x80"), r);                          // lone continuation
  EXPECT_EQ(Valid("\xC3"), r);                          // truncated at end
  EXPECT_EQ(Valid("\xC3(x"), r + "(x");                 // truncated mid-string
  EXPECT_EQ(Valid("\xC0\xAF"), r + r);                  // overlong '/'
  EXPECT_EQ(Valid("\xE0\x80\xAF"), r + r + r);          // overlong 3-byte
  EXPECT_EQ(Valid("\xED\xA0\x80"), r + r + r);          // surrogate D800
  EXPECT_EQ(Valid("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(Valid("\xF5\x80"), r + r);
  for (std::string_view s : {"\xFF", "\xC0\xAF", "\xED\xA0\x80", "\xE2\x82"}) {
    EXPECT_FALSE(IsValidUtf8(s));
    EXPECT_TRUE(IsValidUtf8(Valid(s)));
  }
}

TEST(JsonStringTest, EscapesEveryControlCharacter) {
  for (int c = 0; c < 0x20; ++c) {
    const std::string in(1, static_cast<char>(c));
    const std::string out = Json(in);
    ASSERT_GE(out.size(), 4u);
    EXPECT_EQ(out[1], '\\') << "char " << c;
    for (char o : out) EXPECT_GE(static_cast<unsigned char>(o), 0x20) << "char " << c;
  }
  EXPECT_EQ(Json(std::string(1, '\0')), "\"\\u0000\"");
  EXPECT_EQ(Json("\x01\x1f\x7f"), "\"\\u0001\\u001f\\u007f\"");
  EXPECT_EQ(Json("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
  EXPECT_EQ(Json("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
  EXPECT_EQ(Json("caf\xC3\xA9 \xF0\x9F\x8E\xB5"), "\"caf\xC3\xA9 \xF0\x9F\x8E\xB5\"");
  EXPECT_EQ(Json("bad\xFFtail"), "\"bad" + std::string(kFffd) + "tail\"");
}

TEST(NumberTest, ShortestRoundTrip) {
  std::string out;
  AppendPrometheusDouble(out, 0.1);
  EXPECT_EQ(out, "0.1");
  out.clear();
  AppendPrometheusDouble(out, 3);
  EXPECT_EQ(out, "3");
  out.clear();
  AppendJsonDouble(out, -2.5e-7);
  EXPECT_EQ(std::stod(out), -2.5e-7);
  out.clear();
  AppendJsonDouble(out, 1.0 / 0.0);
  EXPECT_EQ(out, "\"+Inf\"");
}

}  // namespace
}  // namespace quell::obs::internal
