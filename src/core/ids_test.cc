#include "core/ids.h"

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace quell::core {
namespace {

TEST(Ids, IsIdAcceptsWhatNewIdMakesAndNothingElse) {
  const std::string id = NewId("m_", absl::Now());
  EXPECT_TRUE(IsId(id, "m_"));
  EXPECT_FALSE(IsId(id, "ap_"));
  EXPECT_FALSE(IsId(id.substr(0, id.size() - 1), "m_"));
  EXPECT_FALSE(IsId(id + "0", "m_"));
  std::string lower = id;
  lower.back() = 'u';  // not in Crockford's alphabet (nor are I, L, O, U, lower case)
  EXPECT_FALSE(IsId(lower, "m_"));
  EXPECT_FALSE(IsId("garbage", "m_"));
  EXPECT_FALSE(IsId("", "m_"));
}

}  // namespace
}  // namespace quell::core
