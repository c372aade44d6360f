#include "ledger/sqlite/internal/entity_cache.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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

// What the cache answers for `entity` from `since` on, or nullopt when it has no answer.
std::optional<std::vector<core::Mitigation>> Find(EntityCache& cache, std::string_view entity,
                                                  absl::Time since) {
  std::vector<core::Mitigation> out;
  if (!cache.Find(entity, since, &out)) return std::nullopt;
  return out;
}

std::vector<std::string> Ids(const std::optional<std::vector<core::Mitigation>>& ms) {
  std::vector<std::string> out;
  if (!ms) return {"<none>"};
  for (const auto& m : *ms) out.push_back(m.id);
  return out;
}

TEST(EntityCache, AnEntryAnswersReadsFromItsSinceOn) {
  EntityCache cache(1 << 20);
  cache.Put("user:a", kT0, {M("m1", "user:a")});
  EXPECT_THAT(Ids(Find(cache, "user:a", kT0)), ElementsAre("m1"));
  EXPECT_THAT(Ids(Find(cache, "user:a", absl::InfiniteFuture())), ElementsAre("m1"));
  EXPECT_EQ(Find(cache, "user:a", kT0 - absl::Seconds(1)), std::nullopt);  // reaches further back
  EXPECT_EQ(Find(cache, "user:b", kT0), std::nullopt);
  cache.Put("user:b", kT0, {});  // known to have none
  ASSERT_NE(Find(cache, "user:b", kT0), std::nullopt);
  EXPECT_TRUE(Find(cache, "user:b", kT0)->empty());
  EXPECT_EQ(cache.hits(), 4);
  EXPECT_EQ(cache.misses(), 2);
}

TEST(EntityCache, WrittenReplacesMovesToTheEndOrAddsAndSkipsUnknownEntities) {
  EntityCache cache(1 << 20);
  cache.Put("user:a", kT0, {M("m1", "user:a"), M("m2", "user:a")});
  cache.Written(M("m1", "user:a", 7));
  cache.Written(M("m3", "user:a", 8));
  cache.Written(M("m9", "user:z", 9));  // never read: nothing to keep true
  const auto got = Find(cache, "user:a", kT0);
  EXPECT_THAT(Ids(got), ElementsAre("m2", "m1", "m3"));
  EXPECT_EQ((*got)[1].seq, 7);
  EXPECT_EQ(Find(cache, "user:z", absl::InfiniteFuture()), std::nullopt);
  cache.Erase("user:a");
  EXPECT_EQ(Find(cache, "user:a", absl::InfiniteFuture()), std::nullopt);
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
  cache.Put("user:b", kT0, {});                         // young: a b
  cache.Put("user:c", kT0, {});                         // old: a b; young: c
  ASSERT_NE(Find(cache, "user:a", kT0), std::nullopt);  // used again: old: b; young: c a
  cache.Put("user:d", kT0, {});                         // b dropped; old: c a; young: d
  cache.Put("user:e", kT0, {});                         // young: d e
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_EQ(cache.bytes(), 4 * entry);
  EXPECT_EQ(Find(cache, "user:b", kT0), std::nullopt);
  EXPECT_NE(Find(cache, "user:e", kT0), std::nullopt);
  EXPECT_NE(Find(cache, "user:d", kT0), std::nullopt);
  EXPECT_NE(Find(cache, "user:a", kT0), std::nullopt);  // old, so young again: d e become old
  EXPECT_EQ(Find(cache, "user:c", kT0), std::nullopt);  // dropped with the old generation
  EXPECT_EQ(cache.size(), 3u);
  // An entry grows with what it holds: past half the budget, it is not kept.
  core::Mitigation grown = M("m1", "user:d");
  grown.reason = std::string(2 * entry, 'r');
  cache.Written(grown);
  EXPECT_EQ(Find(cache, "user:d", kT0), std::nullopt);
  cache.Clear();
  EXPECT_EQ(cache.bytes(), 0u);
  EntityCache none(0);
  none.Put("user:a", kT0, {});
  EXPECT_EQ(Find(none, "user:a", kT0), std::nullopt);
}

TEST(EntityCache, AnEntryLargerThanHalfTheBudgetIsNotKept) {
  EntityCache cache(4096);
  core::Mitigation big = M("m1", "user:a");
  big.reason = std::string(3000, 'r');
  cache.Put("user:a", kT0, {big});
  EXPECT_EQ(Find(cache, "user:a", kT0), std::nullopt);
  EXPECT_EQ(cache.bytes(), 0u);
  cache.Put("user:a", kT0, {M("m1", "user:a")});  // replaced by a small one: kept
  ASSERT_NE(Find(cache, "user:a", kT0), std::nullopt);
  cache.Written(big);  // grows past half: dropped
  EXPECT_EQ(Find(cache, "user:a", kT0), std::nullopt);
}

TEST(EntityCache, CopiesAreKeptAsTheStoreReturnsThem) {
  EntityCache cache(1 << 20);
  core::Mitigation m = M("m1", "user:a");
  m.expires_at = kT0 + absl::Nanoseconds(1500);  // stored to the microsecond
  cache.Put("user:a", kT0, {m});
  ASSERT_NE(Find(cache, "user:a", kT0), std::nullopt);
  EXPECT_EQ(Find(cache, "user:a", kT0)->front().expires_at, kT0 + absl::Microseconds(1));
  m.expires_at = absl::InfiniteFuture();
  cache.Written(m);
  EXPECT_EQ(Find(cache, "user:a", kT0)->front().expires_at, absl::InfiniteFuture());
}

TEST(EntityCache, AnEntityWithTooManyMitigationsIsNotKept) {
  EntityCache cache(1 << 20);
  std::vector<core::Mitigation> many;
  for (size_t i = 0; i < EntityCache::kMaxMitigations; ++i) {
    many.push_back(M(absl::StrCat("m", i), "user:a"));
  }
  cache.Put("user:a", kT0, many);
  ASSERT_NE(Find(cache, "user:a", kT0), std::nullopt);
  cache.Written(M("another", "user:a"));  // one past the bound: forgotten
  EXPECT_EQ(Find(cache, "user:a", kT0), std::nullopt);
  many.push_back(M("another", "user:a"));
  cache.Put("user:a", kT0, many);
  EXPECT_EQ(Find(cache, "user:a", kT0), std::nullopt);
}

// Every field survives the cache's encoding, as a store read would return it: times to the
// microsecond, infinite times infinite, empty and long strings, all three lists.
TEST(EntityCache, EncodedCopiesKeepEveryField) {
  core::Mitigation m = M("m_01KTESTENCODE0000000000000", "ip:2001:db8::1", 123456789012);
  m.state = core::MitigationState::kSuppressed;
  m.created_at = kT0 + absl::Nanoseconds(1999);
  m.updated_at = kT0 - absl::Hours(24 * 365 * 60);  // before the epoch
  m.starts_at = absl::InfinitePast();
  m.expires_at = absl::InfiniteFuture();
  m.reason = std::string(70000, 'r');  // a length of three varint bytes
  m.source = "bot-model-v3";
  m.policy = "";
  m.policy_version = -3;
  m.actor = "k_01KACTOR";
  m.batch = "b_01KBATCH";
  m.detections = {"d1", "", "d3"};
  m.detection_policies = {"p1", "", "p3"};
  m.approvals = {"k_a", "k_b"};
  m.batch_expiries = {{"", "", "", kT0}, {"b_2", "bot-model-v4", "p", absl::InfiniteFuture()}};
  m.unlisted_detections = 4321;
  m.state_reason = "protected: list vip";
  std::string encoded;
  EncodeMitigation(m, &encoded);
  core::Mitigation back;
  ASSERT_TRUE(DecodeMitigation(encoded, &back));
  core::Mitigation want = m;
  want.created_at = kT0 + absl::Microseconds(1);
  EXPECT_EQ(back, want);
  // A cut or extended copy is refused, never half read.
  for (size_t cut : {size_t{0}, size_t{1}, encoded.size() / 2, encoded.size() - 1}) {
    EXPECT_FALSE(DecodeMitigation(std::string_view(encoded).substr(0, cut), &back)) << cut;
  }
  std::string extended = encoded;
  extended.push_back('x');
  EXPECT_FALSE(DecodeMitigation(extended, &back));
}

}  // namespace
}  // namespace quell::ledger::sqlite_internal
