#include "api/internal/counter_holder.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quell::api::internal {
namespace {

std::shared_ptr<const policy::PolicySet> Set(const std::string& counters, int64_t version) {
  std::string yaml = absl::StrCat(
      "actions:\n  - {name: flag, verdict: allow, severity: low, ttl: 7d}\n"
      "counters:\n",
      counters,
      "policies:\n  - {id: p1, on: play, when: 'count(\"plays\", entity, \"1m\") > 2', action: "
      "flag}\n");
  auto set = policy::LoadPolicySet(yaml, version);
  EXPECT_TRUE(set.ok()) << set.status();
  return *set;
}

const char kPlays[] = "  - {name: plays, on: play, key: entity, windows: [1m, 1h]}\n";

int64_t Record(counters::CounterStore& s, absl::Time now) {
  counters::Observation o{0, "user:a", "", now};
  auto r = s.Record({&o, 1}, now);
  EXPECT_TRUE(r.ok());
  return r->counted;
}

TEST(CounterHolderTest, KeepsCountsWhenCountersAreUnchanged) {
  CounterHolder h(CounterOptions{});
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  auto v1 = Set(kPlays, 1);
  auto s1 = h.For(v1);
  ASSERT_TRUE(s1.ok());
  ASSERT_NE(*s1, nullptr);
  EXPECT_EQ(Record(**s1, now), 1);
  // Same declarations in a new version: same store, the count survives.
  auto s2 = h.For(Set(kPlays, 2));
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(s2->get(), s1->get());
  EXPECT_EQ(*(*s2)->Count("plays", "user:a", absl::Hours(1), now), 1);
  // A changed window: a new store, counts start again.
  auto s3 = h.For(Set("  - {name: plays, on: play, key: entity, windows: [1m, 2h]}\n", 3));
  ASSERT_TRUE(s3.ok());
  EXPECT_NE(s3->get(), s1->get());
  EXPECT_EQ(*(*s3)->Count("plays", "user:a", absl::Hours(2), now), 0);
  EXPECT_EQ(h.Stats().keys, 0);
}

TEST(CounterHolderTest, PeekNeverBuildsOrSwaps) {
  CounterHolder h(CounterOptions{});
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  auto v1 = Set(kPlays, 1);
  EXPECT_EQ(h.Peek(*v1), nullptr);  // no store built yet
  auto s1 = h.For(v1);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(Record(**s1, now), 1);
  EXPECT_EQ(h.Peek(*Set(kPlays, 2)).get(), s1->get());  // same declarations: the live store
  // Other declarations: none, and the live store (and its count) stays in use.
  auto other = Set("  - {name: plays, on: play, key: entity, windows: [1m, 2h]}\n", 3);
  EXPECT_EQ(h.Peek(*other), nullptr);
  auto again = h.For(v1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), s1->get());
  EXPECT_EQ(*(*again)->Count("plays", "user:a", absl::Hours(1), now), 1);
}

TEST(CounterHolderTest, NoCountersNoStore) {
  CounterHolder h(CounterOptions{});
  auto set = policy::LoadPolicySet(
      "actions:\n  - {name: flag, verdict: allow, severity: low, ttl: 7d}\npolicies: []\n", 1);
  ASSERT_TRUE(set.ok()) << set.status();
  auto s = h.For(*set);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, nullptr);
}

TEST(CounterHolderTest, SameCountersComparesEveryField) {
  counters::CounterSpec a{"n", "play", "entity", "", {absl::Minutes(1)}};
  counters::CounterSpec b = a;
  EXPECT_TRUE(SameCounters({a}, {b}));
  b.distinct = "attrs.ip";
  EXPECT_FALSE(SameCounters({a}, {b}));
  b = a;
  b.on = "login";
  EXPECT_FALSE(SameCounters({a}, {b}));
  EXPECT_FALSE(SameCounters({a}, {a, a}));
}

}  // namespace
}  // namespace quell::api::internal
