#include "core/entity_list.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::core {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;

Entity E(std::string_view text) { return *Entity::Parse(text); }
Network N(std::string_view text) { return *ParseNetwork(text); }
IpAddress Ip(std::string_view text) { return *ParseIp(text); }

TEST(EntityList, AnAddressIsOnAListHoldingItOrANetworkAroundIt) {
  EntityList l;
  for (const char* e : {"cidr:10.0.0.0/8", "cidr:192.0.2.128/25", "cidr:2001:db8::/32",
                        "ip:198.51.100.7", "user:u"}) {
    EXPECT_TRUE(l.Insert(e)) << e;
  }
  EXPECT_FALSE(l.Insert("user:u"));
  EXPECT_EQ(l.size(), 5u);
  for (const char* in :
       {"ip:10.0.0.0", "ip:10.1.2.3", "ip:10.255.255.255", "ip:192.0.2.200", "ip:2001:db8::1",
        "ip:2001:db8:ffff:ffff::1", "ip:198.51.100.7", "user:u"}) {
    EXPECT_TRUE(l.Has(E(in))) << in;
  }
  for (const char* out : {"ip:11.0.0.0", "ip:9.255.255.255", "ip:192.0.2.127", "ip:2001:db9::1",
                          "ip:198.51.100.8", "user:v", "ip_addr:10.0.0.1"}) {
    EXPECT_FALSE(l.Has(E(out))) << out;
  }
}

TEST(EntityList, FamiliesDoNotMix) {
  EntityList v4;
  v4.Insert("cidr:0.0.0.0/0");
  EXPECT_TRUE(v4.Has(E("ip:203.0.113.9")));
  EXPECT_TRUE(v4.Has(E("ip:::ffff:203.0.113.9")));  // the same host, IPv4-mapped
  EXPECT_FALSE(v4.Has(E("ip:::cb00:7109")));        // 203.0.113.9's bits, but IPv6
  EXPECT_FALSE(v4.Has(E("ip:2001:db8::1")));
  EXPECT_FALSE(v4.Has(E("cidr:::/0")));
  EntityList v6;
  v6.Insert("cidr:::/0");
  EXPECT_TRUE(v6.Has(E("ip:2001:db8::1")));
  EXPECT_FALSE(v6.Has(E("ip:203.0.113.9")));
  EXPECT_FALSE(v6.Has(E("cidr:0.0.0.0/0")));
}

// A network is on the list when all of it is inside one entry: not when it is wider than
// an entry, nor when it only covers listed addresses.
TEST(EntityList, ANetworkIsOnAListHoldingItOrAWiderOne) {
  EntityList l;
  l.Insert("cidr:10.0.0.0/8");
  l.Insert("ip:192.0.2.1");
  l.Insert("cidr:2001:db8::/32");
  EXPECT_TRUE(l.Has(E("cidr:10.0.0.0/8")));
  EXPECT_TRUE(l.Has(E("cidr:10.20.0.0/16")));
  EXPECT_TRUE(l.Has(E("cidr:10.20.30.40/32")));
  EXPECT_TRUE(l.Has(E("cidr:2001:db8:1::/48")));
  EXPECT_FALSE(l.Has(E("cidr:10.0.0.0/7")));
  EXPECT_FALSE(l.Has(E("cidr:0.0.0.0/0")));
  EXPECT_FALSE(l.Has(E("cidr:192.0.2.0/24")));
  EXPECT_FALSE(l.Has(E("cidr:192.0.2.1/32")));  // the address as a network: not an entry
}

TEST(EntityList, EraseTakesTheNetworkAway) {
  EntityList l;
  l.Insert("cidr:10.0.0.0/8");
  l.Insert("cidr:10.0.0.0/16");
  EXPECT_TRUE(l.Erase("cidr:10.0.0.0/8"));
  EXPECT_FALSE(l.Erase("cidr:10.0.0.0/8"));
  EXPECT_FALSE(l.Has(E("ip:10.1.0.1")));
  EXPECT_TRUE(l.Has(E("ip:10.0.0.1")));
  EXPECT_TRUE(l.Erase("cidr:10.0.0.0/16"));
  EXPECT_FALSE(l.Has(E("ip:10.0.0.1")));
  EXPECT_THAT(l.entries(), IsEmpty());
  // An entry that is not a network is matched exactly, and erased alike.
  l.Insert("cidr:not-a-network");
  EXPECT_TRUE(l.HasEntry("cidr:not-a-network"));
  EXPECT_TRUE(l.Erase("cidr:not-a-network"));
}

TEST(NetworkSet, CoveringIsTheMostSpecificMemberAndCountsAdds) {
  NetworkSet s;
  EXPECT_FALSE(s.Covering(Ip("10.1.2.3")));
  s.Insert(N("10.0.0.0/8"));
  s.Insert(N("10.1.0.0/16"));
  s.Insert(N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(Ip("10.1.2.3")), N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(Ip("10.2.2.3")), N("10.0.0.0/8"));
  EXPECT_EQ(s.Covering(N("10.1.2.0/24")), N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(N("10.1.0.0/16")), N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(N("10.0.0.0/15")), N("10.0.0.0/8"));
  EXPECT_FALSE(s.Covering(N("8.0.0.0/6")));
  s.Erase(N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(Ip("10.1.2.3")), N("10.1.0.0/16"));  // added twice
  s.Erase(N("10.1.0.0/16"));
  EXPECT_EQ(s.Covering(Ip("10.1.2.3")), N("10.0.0.0/8"));
  s.Erase(N("192.0.2.0/24"));  // never added: ignored
  s.Erase(N("10.0.0.0/8"));
  EXPECT_TRUE(s.empty());
}

// What a store asks for: every network that would put the entity on a list, one a prefix
// length, most specific first, as EntityList would match them.
TEST(CoveringCidrEntries, OneNetworkPerShorterPrefixLength) {
  auto v4 = CoveringCidrEntries(E("ip:10.1.2.3"));
  ASSERT_THAT(v4, SizeIs(33));
  EXPECT_EQ(v4[0], "cidr:10.1.2.3/32");
  EXPECT_EQ(v4[8], "cidr:10.1.2.0/24");
  EXPECT_EQ(v4[24], "cidr:10.0.0.0/8");
  EXPECT_EQ(v4[32], "cidr:0.0.0.0/0");
  auto v6 = CoveringCidrEntries(E("ip:2001:db8::1"));
  ASSERT_THAT(v6, SizeIs(129));
  EXPECT_EQ(v6[0], "cidr:2001:db8::1/128");
  EXPECT_EQ(v6[96], "cidr:2001:db8::/32");
  EXPECT_EQ(v6[128], "cidr:::/0");
  EXPECT_THAT(
      CoveringCidrEntries(E("cidr:10.0.0.0/30")),
      ElementsAre("cidr:10.0.0.0/29", "cidr:10.0.0.0/28", "cidr:10.0.0.0/27", "cidr:10.0.0.0/26",
                  "cidr:10.0.0.0/25", "cidr:10.0.0.0/24", "cidr:10.0.0.0/23", "cidr:10.0.0.0/22",
                  "cidr:10.0.0.0/21", "cidr:10.0.0.0/20", "cidr:10.0.0.0/19", "cidr:10.0.0.0/18",
                  "cidr:10.0.0.0/17", "cidr:10.0.0.0/16", "cidr:10.0.0.0/15", "cidr:10.0.0.0/14",
                  "cidr:10.0.0.0/13", "cidr:10.0.0.0/12", "cidr:10.0.0.0/11", "cidr:10.0.0.0/10",
                  "cidr:10.0.0.0/9", "cidr:10.0.0.0/8", "cidr:10.0.0.0/7", "cidr:8.0.0.0/6",
                  "cidr:8.0.0.0/5", "cidr:0.0.0.0/4", "cidr:0.0.0.0/3", "cidr:0.0.0.0/2",
                  "cidr:0.0.0.0/1", "cidr:0.0.0.0/0"));
  EXPECT_THAT(CoveringCidrEntries(E("cidr:0.0.0.0/0")), IsEmpty());
  EXPECT_THAT(CoveringCidrEntries(E("user:u")), IsEmpty());
  // Each is on a list holding it.
  for (const std::string& text : v6) {
    EntityList l;
    l.Insert(text);
    EXPECT_TRUE(l.Has(E("ip:2001:db8::1"))) << text;
  }
}

}  // namespace
}  // namespace quell::core
