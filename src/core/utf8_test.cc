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

}  // namespace
}  // namespace quell::core
