#include "core/entity.h"

#include <utility>

#include "gtest/gtest.h"

namespace quell::core {
namespace {

std::string Canon(std::string_view s) {
  auto e = Entity::Parse(s);
  return e.ok() ? e->str() : "ERR: " + std::string(e.status().message());
}

TEST(EntityTest, ParsesTypeAndId) {
  auto e = Entity::Parse("user:8f3a2c");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->type(), "user");
  EXPECT_EQ(e->id(), "8f3a2c");
  // Split at the first colon: the id may hold more.
  auto p = Entity::Parse("payment:bin-411111:fp");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->type(), "payment");
  EXPECT_EQ(p->id(), "bin-411111:fp");
}

TEST(EntityTest, NormalisesAddresses) {
  EXPECT_EQ(Canon("ip:2001:DB8:0:0:0:0:0:1"), "ip:2001:db8::1");
  EXPECT_EQ(Canon("ip:::ffff:1.2.3.4"), "ip:1.2.3.4");
  EXPECT_EQ(Canon("ip:10.0.0.1"), "ip:10.0.0.1");
  EXPECT_EQ(Canon("cidr:203.0.113.0/24"), "cidr:203.0.113.0/24");
  EXPECT_EQ(Canon("cidr:2001:DB8::/32"), "cidr:2001:db8::/32");
}

TEST(EntityTest, RejectsInvalid) {
  for (const char* bad :
       {"", "user", ":x", "User:x", "1user:x", "user:", "ip:1.2.3", "ip:1.2.3.4/8",
        "cidr:10.0.0.1/8", "cidr:10.0.0.0/33", "cidr:10.0.0.0", "cidr:10.0.0.0/",
        "cidr:10.0.0.0/-1", "user:a\nb", "user:\x7f", "user:\xc3\x28", "user:\xed\xa0\x80",
        "a23456789012345678901234567890123:x"}) {
    EXPECT_FALSE(Entity::Parse(bad).ok()) << bad;
  }
  EXPECT_FALSE(Entity::Parse("user:" + std::string(257, 'a')).ok());
  EXPECT_TRUE(Entity::Parse("user:" + std::string(256, 'a')).ok());
  EXPECT_TRUE(Entity::Parse("artist:Sigur Rós").ok());
}

TEST(EntityTest, HostBitsErrorSuggestsNetwork) {
  auto e = Entity::Parse("cidr:10.1.2.3/8");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("did you mean 10.0.0.0/8"), std::string_view::npos)
      << e.status();
}

TEST(NetworkTest, ANulInsideAnAddressIsNotAnAddress) {
  // inet_pton stops at the NUL: CrowdSec's ?ip=203.0.113.9%00junk matched 203.0.113.9.
  using namespace std::string_view_literals;
  EXPECT_FALSE(ParseIp("203.0.113.9\0junk"sv).ok());
  EXPECT_FALSE(ParseIp("2001:db8::1\0"sv).ok());
  EXPECT_FALSE(ParseNetwork("198.51.0.0\0junk/16"sv).ok());
  EXPECT_TRUE(ParseIp("203.0.113.9"sv).ok());
}

// Either way round, inside, equal or apart, and never across families.
TEST(NetworkTest, Overlaps) {
  const Network wide = *ParseNetwork("10.0.0.0/8");
  const Network narrow = *ParseNetwork("10.1.2.0/24");
  const Network host = {*ParseIp("10.1.2.3"), 32};
  const Network apart = *ParseNetwork("11.0.0.0/8");
  const Network v6 = *ParseNetwork("::/0");
  for (const auto& [a, b] : {std::pair{wide, narrow}, std::pair{narrow, host},
                             std::pair{wide, host}, std::pair{host, host}}) {
    EXPECT_TRUE(a.Overlaps(b)) << FormatNetwork(a) << " " << FormatNetwork(b);
    EXPECT_TRUE(b.Overlaps(a)) << FormatNetwork(a) << " " << FormatNetwork(b);
  }
  EXPECT_FALSE(wide.Overlaps(apart));
  EXPECT_FALSE(apart.Overlaps(host));
  EXPECT_FALSE(narrow.Overlaps(*ParseNetwork("10.1.3.0/24")));
  EXPECT_FALSE(v6.Overlaps(host));  // ::/0 holds every IPv6 address, no IPv4 one
  EXPECT_FALSE(host.Overlaps(v6));
}

TEST(NetworkTest, Contains) {
  auto net = ParseNetwork("10.0.0.0/8");
  ASSERT_TRUE(net.ok());
  EXPECT_TRUE(net->Contains(*ParseIp("10.255.1.2")));
  EXPECT_FALSE(net->Contains(*ParseIp("11.0.0.0")));
  EXPECT_FALSE(net->Contains(*ParseIp("::a00:1")));  // IPv6, not IPv4
  auto v6 = ParseNetwork("2001:db8::/32");
  ASSERT_TRUE(v6.ok());
  EXPECT_TRUE(v6->Contains(*ParseIp("2001:db8:ffff::1")));
  EXPECT_FALSE(v6->Contains(*ParseIp("2001:db9::1")));
  auto all = ParseNetwork("0.0.0.0/0");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Contains(*ParseIp("255.255.255.255")));
  auto host = ParseNetwork("192.0.2.7/32");
  ASSERT_TRUE(host.ok());
  EXPECT_TRUE(host->Contains(*ParseIp("192.0.2.7")));
  EXPECT_FALSE(host->Contains(*ParseIp("192.0.2.6")));
}

TEST(NetworkTest, MaskOddPrefix) {
  auto ip = ParseIp("10.255.255.255");
  ASSERT_TRUE(ip.ok());
  EXPECT_EQ(FormatIp(MaskIp(*ip, 9)), "10.128.0.0");
  auto ip6 = ParseIp("2001:db8:ffff::1");
  EXPECT_EQ(FormatIp(MaskIp(*ip6, 33)), "2001:db8:8000::");
}

}  // namespace
}  // namespace quell::core
