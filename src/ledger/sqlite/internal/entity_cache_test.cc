#include "ledger/sqlite/internal/entity_cache.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::ledger::sqlite_internal {
namespace {

using ::testing::ElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

core::Mitigation M(std::string id, std::string_view entity, int64_t seq = 1) {
  core::Mitigation m;
  m.id = std::move(id);
  m.entity = *core::Entity::Parse(entity);
  m.action = "block";
  m.seq = seq;
  return m;
}

std::vector<std::string> Ids(const std::vector<core::Mitigation>* ms) {
  std::vector<std::string> out;
  if (ms == nullptr) return {"<none>"};
  for (const auto& m : *ms) out.push_back(m.id);
  return out;
}

TEST(EntityCache, AnEntryAnswersReadsFromItsSinceOn) {
  EntityCache cache(1 << 20);
  cache.Put("user:a", kT0, {M("m1", "user:a")});
  EXPECT_THAT(Ids(cache.Find("user:a", kT0)), ElementsAre("m1"));
  EXPECT_THAT(Ids(cache.Find("user:a", absl::InfiniteFuture())), ElementsAre("m1"));
  EXPECT_EQ(cache.Find("user:a", kT0 - absl::Seconds(1)), nullptr);  // reaches further back
  EXPECT_EQ(cache.Find("user:b", kT0), nullptr);
  cache.Put("user:b", kT0, {});  // known to have none
  ASSERT_NE(cache.Find("user:b", kT0), nullptr);
  EXPECT_TRUE(cache.Find("user:b", kT0)->empty());
  EXPECT_EQ(cache.hits(), 4);
  EXPECT_EQ(cache.misses(), 2);
}

TEST(EntityCache, WrittenReplacesMovesToTheEndOrAddsAndSkipsUnknownEntities) {
  EntityCache cache(1 << 20);
  cache.Put("user:a", kT0, {M("m1", "user:a"), M("m2", "user:a")});
  cache.Written(M("m1", "user:a", 7));
  cache.Written(M("m3", "user:a", 8));
  cache.Written(M("m9", "user:z", 9));  // never read: nothing to keep true
  const auto* got = cache.Find("user:a", kT0);
  EXPECT_THAT(Ids(got), ElementsAre("m2", "m1", "m3"));
  EXPECT_EQ((*got)[1].seq, 7);
  EXPECT_EQ(cache.Find("user:z", absl::InfiniteFuture()), nullptr);
  cache.Erase("user:a");
  EXPECT_EQ(cache.Find("user:a", absl::InfiniteFuture()), nullptr);
}

TEST(EntityCache, KeepsAboutItsBytesAndTheRecentlyUsed) {
  size_t entry = 0;  // an entry with no mitigation, for a 6-character entity
  {
    EntityCache probe(1 << 20);
    probe.Put("user:a", kT0, {});
    entry = probe.bytes();
  }
  ASSERT_GT(entry, 0u);
  EntityCache cache(4 * entry);  // two generations of two entries
  cache.Put("user:a", kT0, {});
  cache.Put("user:b", kT0, {});                   // young: a b
  cache.Put("user:c", kT0, {});                   // old: a b; young: c
  ASSERT_NE(cache.Find("user:a", kT0), nullptr);  // used again: old: b; young: c a
  cache.Put("user:d", kT0, {});                   // b dropped; old: c a; young: d
  cache.Put("user:e", kT0, {});                   // young: d e
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_EQ(cache.bytes(), 4 * entry);
  EXPECT_EQ(cache.Find("user:b", kT0), nullptr);
  EXPECT_NE(cache.Find("user:e", kT0), nullptr);
  EXPECT_NE(cache.Find("user:d", kT0), nullptr);
  EXPECT_NE(cache.Find("user:a", kT0), nullptr);  // old, so young again: d e become old
  EXPECT_EQ(cache.Find("user:c", kT0), nullptr);  // dropped with the old generation
  EXPECT_EQ(cache.size(), 3u);
  // An entry grows with what it holds: past half the budget, it is not kept.
  cache.Written(M("m1", "user:d"));
  EXPECT_EQ(cache.Find("user:d", kT0), nullptr);
  cache.Clear();
  EXPECT_EQ(cache.bytes(), 0u);
  EntityCache none(0);
  none.Put("user:a", kT0, {});
  EXPECT_EQ(none.Find("user:a", kT0), nullptr);
}

TEST(EntityCache, AnEntryLargerThanHalfTheBudgetIsNotKept) {
  EntityCache cache(4096);
  core::Mitigation big = M("m1", "user:a");
  big.reason = std::string(3000, 'r');
  cache.Put("user:a", kT0, {big});
  EXPECT_EQ(cache.Find("user:a", kT0), nullptr);
  EXPECT_EQ(cache.bytes(), 0u);
  cache.Put("user:a", kT0, {M("m1", "user:a")});  // replaced by a small one: kept
  ASSERT_NE(cache.Find("user:a", kT0), nullptr);
  cache.Written(big);  // grows past half: dropped
  EXPECT_EQ(cache.Find("user:a", kT0), nullptr);
}

TEST(EntityCache, CopiesAreKeptAsTheStoreReturnsThem) {
  EntityCache cache(1 << 20);
  core::Mitigation m = M("m1", "user:a");
  m.expires_at = kT0 + absl::Nanoseconds(1500);  // stored to the microsecond
  cache.Put("user:a", kT0, {m});
  ASSERT_NE(cache.Find("user:a", kT0), nullptr);
  EXPECT_EQ(cache.Find("user:a", kT0)->front().expires_at, kT0 + absl::Microseconds(1));
  m.expires_at = absl::InfiniteFuture();
  cache.Written(m);
  EXPECT_EQ(cache.Find("user:a", kT0)->front().expires_at, absl::InfiniteFuture());
}

TEST(EntityCache, AnEntityWithTooManyMitigationsIsNotKept) {
  EntityCache cache(1 << 20);
  std::vector<core::Mitigation> many;
  for (size_t i = 0; i < EntityCache::kMaxMitigations; ++i) {
    many.push_back(M("m" + std::to_string(i), "user:a"));
  }
  cache.Put("user:a", kT0, many);
  ASSERT_NE(cache.Find("user:a", kT0), nullptr);
  cache.Written(M("another", "user:a"));  // one past the bound: forgotten
  EXPECT_EQ(cache.Find("user:a", kT0), nullptr);
  many.push_back(M("another", "user:a"));
  cache.Put("user:a", kT0, many);
  EXPECT_EQ(cache.Find("user:a", kT0), nullptr);
}

}  // namespace
}  // namespace quell::ledger::sqlite_internal
