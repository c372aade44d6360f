#include "obs/request_id.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace quell::obs {
namespace {

TEST(RequestIdTest, NewIdsAreHexAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewRequestId();
    ASSERT_EQ(id.size(), 16u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(RequestIdTest, SaneIncomingIdsAreKept) {
  EXPECT_EQ(RequestIdFrom("abc-123_X.y:z"), "abc-123_X.y:z");
  EXPECT_TRUE(IsSaneRequestId(std::string(kMaxRequestIdBytes, 'a')));
}

TEST(RequestIdTest, InsaneIncomingIdsAreReplaced) {
  for (std::string bad : {std::string(""), std::string(kMaxRequestIdBytes + 1, 'a'),
                          std::string("a b"), std::string("x\"y"), std::string("a\nb"),
                          std::string("a\0b", 3), std::string("caf\xc3\xa9"), std::string("{}")}) {
    EXPECT_FALSE(IsSaneRequestId(bad)) << bad;
    std::string id = RequestIdFrom(bad);
    EXPECT_NE(id, bad);
    EXPECT_TRUE(IsSaneRequestId(id));
  }
}

}  // namespace
}  // namespace quell::obs
