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
  EntityCache cache(8);
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
  EntityCache cache(8);
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

TEST(EntityCache, KeepsAtMostCapacityAndTheRecentlyUsed) {
  EntityCache cache(4);  // two generations of 2
  cache.Put("user:a", kT0, {});
  cache.Put("user:b", kT0, {});                   // young: a b
  cache.Put("user:c", kT0, {});                   // old: a b; young: c
  ASSERT_NE(cache.Find("user:a", kT0), nullptr);  // used again: old: b; young: c a
  cache.Put("user:d", kT0, {});                   // b dropped; old: c a; young: d
  cache.Put("user:e", kT0, {});                   // young: d e
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_EQ(cache.Find("user:b", kT0), nullptr);
  EXPECT_NE(cache.Find("user:e", kT0), nullptr);
  EXPECT_NE(cache.Find("user:d", kT0), nullptr);
  EXPECT_NE(cache.Find("user:a", kT0), nullptr);  // old, so young again: d e become old
  EXPECT_EQ(cache.Find("user:c", kT0), nullptr);  // dropped with the old generation
  EXPECT_EQ(cache.size(), 3u);
  EntityCache none(0);
  none.Put("user:a", kT0, {});
  EXPECT_EQ(none.Find("user:a", kT0), nullptr);
}

TEST(EntityCache, AnEntityWithTooManyMitigationsIsNotKept) {
  EntityCache cache(8);
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
