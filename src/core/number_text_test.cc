#include "core/number_text.h"

#include <cstdlib>
#include <limits>

#include "gtest/gtest.h"

namespace quell::core {
namespace {

TEST(NumberTextTest, ShortestTextReadsBackAsTheSameNumber) {
  EXPECT_EQ(NumberKeyText(12.5), "12.5");
  EXPECT_EQ(NumberKeyText(12.0), "12");
  // Six significant digits (absl::StrCat) made these one value: one distinct amount.
  EXPECT_EQ(NumberKeyText(12345.67), "12345.67");
  EXPECT_NE(NumberKeyText(12345.67), NumberKeyText(12345.68));
  EXPECT_NE(NumberKeyText(1234567.5), NumberKeyText(1234568.0));
  EXPECT_NE(NumberKeyText(0.1234561), NumberKeyText(0.1234564));
  for (double d : {0.1, 1.0 / 3, 1e300, -2.5e-300, 18446744073709551615.0, 9007199254740993.0}) {
    EXPECT_EQ(std::strtod(NumberKeyText(d).c_str(), nullptr), d) << d;
  }
  EXPECT_EQ(NumberKeyText(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(NumberKeyText(int64_t{4111}), "4111");
  EXPECT_EQ(NumberKeyText(-3.25), "-3.25");
}

}  // namespace
}  // namespace quell::core
