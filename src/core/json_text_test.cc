#include "core/json_text.h"

#include <string>

#include "gtest/gtest.h"

namespace quell::core {
namespace {

TEST(JsonText, NestingIsCountedOutsideStringsOnly) {
  EXPECT_EQ(FindJsonNestingOver(R"({"a":[1,{"b":[]}]})", 4), std::nullopt);
  EXPECT_EQ(FindJsonNestingOver(R"({"a":[1,{"b":[]}]})", 3), 13u);  // the innermost '['
  // Brackets in strings, escaped quotes included, are text.
  EXPECT_EQ(FindJsonNestingOver(R"({"a":"[[[[\"[[[[","b":{}})", 2), std::nullopt);
  EXPECT_EQ(FindJsonNestingOver(std::string(100, '[') + std::string(100, ']')), std::nullopt);
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_EQ(FindJsonNestingOver(deep), static_cast<size_t>(kMaxJsonDepth));
  // Closing more than was opened does not earn credit for later levels.
  EXPECT_EQ(FindJsonNestingOver("]]]]" + std::string(3, '['), 2), 6u);
}

}  // namespace
}  // namespace quell::core
