#include "ledger/internal/entity_prefetch.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quell::ledger::internal {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

EntityPrefetch::Result At(int64_t snapshot_seq, absl::Time since = kT0) {
  return {.snapshot_seq = snapshot_seq, .since = since, .mitigations = {}};
}

TEST(EntityPrefetch, TakesAResultOnceIfItCoversTheReadAndNothingWroteTheEntityAfter) {
  EntityPrefetch p;
  p.Distrust(10);  // the store's first Begin: the chain head is 10
  p.Put("user:a", At(10));
  EXPECT_EQ(p.Take("user:a", kT0 - absl::Seconds(1)), std::nullopt);  // reaches further back
  p.Put("user:a", At(10));
  ASSERT_NE(p.Take("user:a", kT0), std::nullopt);
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);  // taken

  p.Put("user:a", At(10));
  p.Put("user:b", At(10));
  p.NoteWrite("user:a", 11);
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);  // written after its snapshot
  ASSERT_NE(p.Take("user:b", kT0), std::nullopt);
  p.Put("user:a", At(11));  // read after the write
  ASSERT_NE(p.Take("user:a", kT0), std::nullopt);
  EXPECT_EQ(p.taken(), 3);
  EXPECT_EQ(p.refused(), 2);
}

TEST(EntityPrefetch, ResultsReadBeforeAnotherWritersHeadAreRefused) {
  EntityPrefetch p;
  p.Put("user:a", At(5));
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);  // nothing trusted before a Distrust
  p.Distrust(10);
  p.Put("user:a", At(9));  // read before the other writer's changes, put after
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);
  p.Put("user:a", At(10));
  ASSERT_NE(p.Take("user:a", kT0), std::nullopt);
}

TEST(EntityPrefetch, WritesForgottenPastTheBoundRefuseOlderSnapshots) {
  EntityPrefetch p;
  p.Distrust(0);
  p.Put("user:z", At(0));  // writes are logged from the first result on
  p.NoteWrite("user:a", 1);
  for (int64_t i = 0; i < static_cast<int64_t>(EntityPrefetch::kMaxWrites); ++i) {
    p.NoteWrite(absl::StrCat("user:x", i), 2 + i);
  }
  // user:a's write at 1 is no longer noted: a result that did not see it is refused.
  p.Put("user:a", At(0));
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);
  p.Put("user:a", At(1));
  ASSERT_NE(p.Take("user:a", kT0), std::nullopt);
}

TEST(EntityPrefetch, WritesBeforeTheFirstResultAreNotLoggedButRefuseWhatPredatesThem) {
  EntityPrefetch p;
  p.Distrust(10);
  p.NoteWrite("user:a", 11);  // no result yet: not logged
  p.Put("user:b", At(10));    // read before that write
  EXPECT_EQ(p.Take("user:b", kT0), std::nullopt);
  p.Put("user:b", At(11));
  ASSERT_NE(p.Take("user:b", kT0), std::nullopt);
  p.NoteWrite("user:a", 12);  // logged now
  p.Put("user:b", At(11));
  ASSERT_NE(p.Take("user:b", kT0), std::nullopt);
}

TEST(EntityPrefetch, AResultWithTooManyMitigationsIsNotKept) {
  EntityPrefetch p;
  p.Distrust(0);
  p.Put("user:a", At(0));
  EntityPrefetch::Result big = At(0);
  big.mitigations.resize(EntityPrefetch::kMaxMitigations + 1);
  p.Put("user:a", big);
  EXPECT_EQ(p.Take("user:a", kT0), std::nullopt);
  big.mitigations.resize(EntityPrefetch::kMaxMitigations);
  p.Put("user:a", big);
  ASSERT_NE(p.Take("user:a", kT0), std::nullopt);
}

TEST(EntityPrefetch, KeepsTheNewestResults) {
  EntityPrefetch p;
  p.Distrust(0);
  const int n = static_cast<int>(EntityPrefetch::kMaxResults) + 10;
  for (int i = 0; i < n; ++i) p.Put(absl::StrCat("user:u", i), At(0));
  EXPECT_EQ(p.Take("user:u0", kT0), std::nullopt);
  EXPECT_EQ(p.Take("user:u9", kT0), std::nullopt);
  EXPECT_NE(p.Take("user:u10", kT0), std::nullopt);
  EXPECT_NE(p.Take(absl::StrCat("user:u", n - 1), kT0), std::nullopt);
}

}  // namespace
}  // namespace quell::ledger::internal
