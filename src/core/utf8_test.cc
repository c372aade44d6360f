#include "core/utf8.h"

#include <gtest/gtest.h>

namespace quell::core {
namespace {

TEST(Utf8Test, FindsTheFirstInvalidSequence) {
  EXPECT_FALSE(FindInvalidUtf8("plain ascii and \xc3\xa9 and \xf0\x9f\x98\x80").has_value());
  EXPECT_FALSE(FindInvalidUtf8("").has_value());
  EXPECT_EQ(FindInvalidUtf8("abc\xff"), 3u);
  EXPECT_EQ(FindInvalidUtf8("ab\xc3"), 2u);         // truncated sequence
  EXPECT_EQ(FindInvalidUtf8("\xc0\xaf"), 0u);       // overlong
  EXPECT_EQ(FindInvalidUtf8("x\xed\xa0\x80"), 1u);  // surrogate
  EXPECT_EQ(FindInvalidUtf8("12345678\xf5\x80\x80\x80"),
            8u);  // above U+10FFFF, after the fast path
}

TEST(Utf8Test, ReplacesEachInvalidByte) {
  EXPECT_EQ(ReplaceInvalidUtf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(ReplaceInvalidUtf8("a\xff\"b"), "a\xef\xbf\xbd\"b");
  EXPECT_EQ(ReplaceInvalidUtf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");  // overlong
  EXPECT_EQ(ReplaceInvalidUtf8("ok\xc3"), "ok\xef\xbf\xbd");              // truncated
  EXPECT_FALSE(FindInvalidUtf8(ReplaceInvalidUtf8("\xed\xa0\x80\xf5")).has_value());
}

TEST(ControlCharacters, C0AndDelUnlessAllowed) {
  EXPECT_FALSE(HasControlCharacter("plain text, \xc3\xa9 too"));
  EXPECT_TRUE(HasControlCharacter(std::string_view("a\0b", 3)));
  EXPECT_TRUE(HasControlCharacter("\x1b[31mred"));
  EXPECT_TRUE(HasControlCharacter("del\x7f"));
  EXPECT_TRUE(HasControlCharacter("line\nbreak"));
  EXPECT_FALSE(HasControlCharacter("line\nbreak\ttab\r", "\t\n\r"));
  EXPECT_TRUE(HasControlCharacter("line\nbreak\x01", "\t\n\r"));
  // C1: U+009B (CSI) and U+0085 (NEL), in any text; U+00A0 and U+00C2 are not controls.
  EXPECT_TRUE(
      HasControlCharacter("a\xc2\x9b"
                          "31mred",
                          "\t\n\r"));
  EXPECT_TRUE(HasControlCharacter("id\xc2\x85"));
  EXPECT_TRUE(HasControlCharacter("\xc2\x80"));
  EXPECT_FALSE(HasControlCharacter("nbsp\xc2\xa0 \xc3\x82\xc2\xbf"));
  EXPECT_FALSE(HasControlCharacter("trailing lead \xc2"));
}

}  // namespace
}  // namespace quell::core
