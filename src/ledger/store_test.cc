// The Store contract, run against every backend in testing::AllBackends().
#include "ledger/store.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ledger/internal/test_backends.h"
#include "ledger/sqlite/internal/wal_vfs.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::ledger {
namespace {

using testing::BackendFactory;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAre;

#define ASSERT_OK(expr)                                \
  do {                                                 \
    const auto& quell_st_ = (expr);                    \
    ASSERT_TRUE(quell_st_.ok()) << quell_st_.status(); \
  } while (0)
#define EXPECT_OK(expr)                                \
  do {                                                 \
    const auto& quell_st_ = (expr);                    \
    EXPECT_TRUE(quell_st_.ok()) << quell_st_.status(); \
  } while (0)

// absl::Status has no .status(); give it one for the macros above.
struct StatusView {
  absl::Status s;
  bool ok() const { return s.ok(); }
  const absl::Status& status() const { return s; }
};
StatusView V(absl::Status s) { return {std::move(s)}; }

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

core::Entity E(std::string_view text) { return *core::Entity::Parse(text); }

core::Mitigation MakeMitigation(int n, std::string_view entity, std::string_view action,
                                core::MitigationState state = core::MitigationState::kActive) {
  core::Mitigation m;
  // Ids sort by creation time: later n, later id.
  m.id = core::NewId("m_", kT0 + absl::Seconds(n));
  m.entity = E(entity);
  m.action = action;
  m.state = state;
  m.created_at = m.updated_at = kT0 + absl::Seconds(n);
  m.starts_at = m.created_at;
  m.expires_at = m.created_at + absl::Hours(1);
  m.reason = "test";
  m.source = "manual";
  m.actor = "k_test";
  return m;
}

class StoreTest : public ::testing::TestWithParam<BackendFactory> {
 protected:
  void SetUp() override {
    backend_ = GetParam().make();
    auto s = backend_->Open();
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }

  std::unique_ptr<Txn> Begin(absl::Time now = kT0) {
    auto t = store_->Begin(now);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : nullptr;
  }

  // Every one of `rows` is stored, as it is.
  void ExpectStored(const std::vector<StoredDetection>& rows) {
    for (const StoredDetection& d : rows) {
      auto got = store_->GetDetection(d.source, d.id);
      ASSERT_OK(got);
      ASSERT_TRUE(got->has_value()) << d.id;
      EXPECT_EQ(**got, d);
    }
  }

  // Appends `m` as a mitigation change inside `txn`, setting m->seq.
  absl::StatusOr<Change> AppendMitigation(Txn& txn, core::Mitigation* m) {
    m->seq = txn.NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = "k_test";
    return txn.Append(std::move(c), m);
  }

  // Appending `moved` (a stored mitigation given another entity) fails with
  // kInvalidArgument: SQLite refuses the append; PostgreSQL sends its deferred upsert at
  // the next round trip, where its trigger refuses it. The caller rolls back to a
  // savepoint it took before.
  void ExpectEntityKept(Txn& txn, core::Mitigation moved) {
    absl::Status st = AppendMitigation(txn, &moved).status();
    if (st.ok()) st = txn.EntityMitigations(moved.entity, kT0).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(st.message(), HasSubstr("belongs to another entity")) << st;
  }

  // Writes `m` in a transaction of its own.
  Change Put(core::Mitigation* m, absl::Time now = kT0) {
    auto txn = Begin(now);
    auto c = AppendMitigation(*txn, m);
    EXPECT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(txn->Commit().ok());
    return c.ok() ? *c : Change{};
  }

  Change Note(Txn& txn, std::string subject) {
    Change c;
    c.kind = ChangeKind::kReview;  // a kind the store does not materialise
    c.actor = "cli";
    c.subject = std::move(subject);
    c.payload = R"({"note":"x"})";
    auto r = txn.Append(std::move(c), nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Change{};
  }

  std::vector<std::string> Ids(const std::vector<core::Mitigation>& ms) {
    std::vector<std::string> out;
    for (const auto& m : ms) out.push_back(m.id);
    return out;
  }

  std::unique_ptr<testing::TestBackend> backend_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreTest, AppendAssignsSeqAtAndChainsHashes) {
  auto last = store_->LastSeq();
  ASSERT_OK(last);
  EXPECT_EQ(*last, 0);

  const absl::Time now = kT0 + absl::Nanoseconds(1500);  // sub-microsecond part is dropped
  auto txn = Begin(now);
  EXPECT_EQ(txn->NextSeq(), 1);
  Change a = Note(*txn, "protected");
  EXPECT_EQ(txn->NextSeq(), 2);
  Change b = Note(*txn, "watch");
  ASSERT_OK(V(txn->Commit()));

  EXPECT_EQ(a.seq, 1);
  EXPECT_EQ(b.seq, 2);
  EXPECT_EQ(a.at, kT0 + absl::Microseconds(1));
  EXPECT_EQ(a.prev_hash, kGenesisHash);
  EXPECT_EQ(a.hash, ChainHash(a));
  EXPECT_EQ(b.prev_hash, a.hash);
  EXPECT_EQ(b.hash, ChainHash(b));

  auto read = store_->ReadChanges(0, 10);
  ASSERT_OK(read);
  ASSERT_THAT(*read, SizeIs(2));
  for (int i = 0; i < 2; ++i) {
    const Change& want = i == 0 ? a : b;
    const Change& got = (*read)[i];
    EXPECT_EQ(got.seq, want.seq);
    EXPECT_EQ(got.at, want.at);
    EXPECT_EQ(got.kind, want.kind);
    EXPECT_EQ(got.actor, want.actor);
    EXPECT_EQ(got.subject, want.subject);
    EXPECT_EQ(got.entity, want.entity);
    EXPECT_EQ(got.payload, want.payload);
    EXPECT_EQ(got.prev_hash, want.prev_hash);
    EXPECT_EQ(got.hash, want.hash);
  }
  auto tail = store_->ReadChanges(1, 10);
  ASSERT_OK(tail);
  ASSERT_THAT(*tail, SizeIs(1));
  EXPECT_EQ((*tail)[0].seq, 2);
  auto one = store_->ReadChanges(0, 1);
  ASSERT_OK(one);
  EXPECT_THAT(*one, SizeIs(1));
  last = store_->LastSeq();
  ASSERT_OK(last);
  EXPECT_EQ(*last, 2);
  EXPECT_EQ(store_->ReadChanges(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, AppendRejectsInconsistentMitigationChanges) {
  auto txn = Begin();
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  Change c;
  c.kind = ChangeKind::kMitigation;
  EXPECT_EQ(txn->Append(c, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  m.seq = 5;  // not NextSeq()
  EXPECT_EQ(txn->Append(c, &m).status().code(), absl::StatusCode::kInvalidArgument);
  m.seq = txn->NextSeq();
  Change wrong_payload = c;
  wrong_payload.payload = "{}";
  EXPECT_EQ(txn->Append(wrong_payload, &m).status().code(), absl::StatusCode::kInvalidArgument);
  Change list;
  list.kind = ChangeKind::kList;
  EXPECT_EQ(txn->Append(list, &m).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(txn->NextSeq(), 1);

  auto ok = txn->Append(c, &m);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->seq, 1);
  EXPECT_EQ(ok->payload, core::MitigationToJson(m));
  EXPECT_EQ(ok->subject, m.id);
  EXPECT_EQ(ok->entity, "user:u1");
  ASSERT_OK(V(txn->Commit()));
}

TEST_P(StoreTest, MitigationUpsertThroughAppend) {
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  Change first = Put(&m);
  EXPECT_EQ(m.seq, 1);
  auto got = store_->GetMitigation(m.id);
  ASSERT_OK(got);
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, m);

  auto txn = Begin(kT0 + absl::Minutes(1));
  core::Mitigation revoked = m;
  revoked.state = core::MitigationState::kRevoked;
  revoked.state_reason = "appeal granted";
  ASSERT_OK(AppendMitigation(*txn, &revoked));
  // Reads inside the Txn see its own write; committed reads do not yet.
  auto inside = txn->GetMitigation(m.id);
  ASSERT_OK(inside);
  ASSERT_TRUE(inside->has_value());
  EXPECT_EQ((*inside)->state, core::MitigationState::kRevoked);
  auto outside = store_->GetMitigation(m.id);
  ASSERT_OK(outside);
  EXPECT_EQ((*outside)->state, core::MitigationState::kActive);
  ASSERT_OK(V(txn->Commit()));

  got = store_->GetMitigation(m.id);
  ASSERT_OK(got);
  EXPECT_EQ(**got, revoked);
  EXPECT_EQ((*got)->seq, 2);
  auto missing = store_->GetMitigation("m_nope");
  ASSERT_OK(missing);
  EXPECT_FALSE(missing->has_value());

  auto timeline = store_->ReadEntityChanges(E("user:u1"), 10);
  ASSERT_OK(timeline);
  ASSERT_THAT(*timeline, SizeIs(2));
  EXPECT_EQ((*timeline)[0].hash, first.hash);
  EXPECT_EQ((*timeline)[1].payload, core::MitigationToJson(revoked));
  auto rest = store_->ReadEntityChanges(E("user:u1"), 10, (*timeline)[0].seq);  // paging on
  ASSERT_OK(rest);
  ASSERT_THAT(*rest, SizeIs(1));
  EXPECT_EQ((*rest)[0].seq, (*timeline)[1].seq);
  auto other = store_->ReadEntityChanges(E("user:u2"), 10);
  ASSERT_OK(other);
  EXPECT_THAT(*other, IsEmpty());
}

TEST_P(StoreTest, AppendMitigationIfAtWritesOnlyTheVersionRead) {
  core::Mitigation a = MakeMitigation(1, "user:u1", "block");
  core::Mitigation b = MakeMitigation(2, "user:u2", "block");
  Put(&a);
  Put(&b);
  const int64_t a_read = a.seq, b_read = b.seq;
  // b moves on after it was read.
  core::Mitigation b2 = b;
  b2.expires_at += absl::Hours(1);
  Put(&b2);

  auto txn = Begin(kT0 + absl::Minutes(1));
  auto revoke = [&](core::Mitigation m, int64_t read_at) {
    m.state = core::MitigationState::kRevoked;
    m.state_reason = "rollback";
    m.seq = txn->NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = "k_admin";
    return std::make_pair(m, txn->AppendMitigationIfAt(std::move(c), m, read_at));
  };
  auto [a_rev, a_done] = revoke(a, a_read);
  ASSERT_OK(a_done);
  ASSERT_TRUE(a_done->has_value());
  EXPECT_EQ((*a_done)->seq, 4);
  EXPECT_EQ((*a_done)->payload, core::MitigationToJson(a_rev));
  auto [b_rev, b_done] = revoke(b, b_read);
  ASSERT_OK(b_done);
  EXPECT_FALSE(b_done->has_value());  // stale: nothing written, seq not taken
  EXPECT_EQ(txn->NextSeq(), 5);
  // Identity columns must match the stored row too.
  core::Mitigation other = a_rev;
  other.entity = E("user:u9");
  auto [o_rev, o_done] = revoke(other, 4);
  ASSERT_OK(o_done);
  EXPECT_FALSE(o_done->has_value());
  // Inside the Txn the revocation is visible, as an Append's would be.
  auto inside = txn->GetMitigation(a.id);
  ASSERT_OK(inside);
  EXPECT_EQ(**inside, a_rev);
  // A savepoint rollback undoes it like any write.
  ASSERT_OK(V(txn->Savepoint()));
  core::Mitigation b_now = b2;
  auto [b2_rev, b2_done] = revoke(b_now, b2.seq);
  ASSERT_OK(b2_done);
  ASSERT_TRUE(b2_done->has_value());
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  auto b_back = txn->GetMitigation(b.id);
  ASSERT_OK(b_back);
  EXPECT_EQ(**b_back, b2);
  EXPECT_EQ(txn->NextSeq(), 5);
  ASSERT_OK(V(txn->Commit()));

  auto got = store_->GetMitigation(a.id);
  ASSERT_OK(got);
  EXPECT_EQ(**got, a_rev);
  auto live = store_->ListMitigations({.state = core::MitigationState::kActive});
  ASSERT_OK(live);
  EXPECT_EQ(Ids(live->mitigations), std::vector<std::string>{b.id});
  auto timeline = store_->ReadEntityChanges(E("user:u1"), 10);
  ASSERT_OK(timeline);
  ASSERT_THAT(*timeline, SizeIs(2));
  EXPECT_EQ((*timeline)[1].payload, core::MitigationToJson(a_rev));
}

TEST_P(StoreTest, FindLiveReturnsOnlyLiveMatches) {
  using S = core::MitigationState;
  core::Mitigation active = MakeMitigation(1, "user:u1", "block", S::kActive);
  core::Mitigation scheduled = MakeMitigation(2, "user:u1", "block", S::kScheduled);
  core::Mitigation pending = MakeMitigation(3, "user:u1", "block", S::kPendingApproval);
  core::Mitigation revoked = MakeMitigation(4, "user:u1", "block", S::kRevoked);
  core::Mitigation shadow = MakeMitigation(5, "user:u1", "block", S::kShadow);
  core::Mitigation other_action = MakeMitigation(6, "user:u1", "flag", S::kActive);
  core::Mitigation other_entity = MakeMitigation(7, "user:u2", "block", S::kActive);
  auto txn = Begin();
  for (auto* m : {&active, &scheduled, &pending, &revoked, &shadow, &other_action, &other_entity}) {
    ASSERT_OK(AppendMitigation(*txn, m));
  }
  auto live = txn->FindLive(E("user:u1"), "block");
  ASSERT_OK(live);
  EXPECT_THAT(Ids(*live), ElementsAre(active.id, scheduled.id, pending.id));
  ASSERT_OK(V(txn->Commit()));
}

TEST_P(StoreTest, EntityMitigationsAreTheLiveOnesAndThoseCreatedSince) {
  using S = core::MitigationState;
  core::Mitigation old_expired = MakeMitigation(1, "user:u1", "block", S::kExpired);
  core::Mitigation old_active = MakeMitigation(2, "user:u1", "block", S::kActive);
  core::Mitigation recent_revoked = MakeMitigation(3, "user:u1", "flag", S::kRevoked);
  core::Mitigation recent_shadow = MakeMitigation(4, "user:u1", "block", S::kShadow);
  core::Mitigation old_scheduled = MakeMitigation(1, "user:u1", "flag", S::kScheduled);
  core::Mitigation other_entity = MakeMitigation(5, "user:u2", "block", S::kActive);
  auto txn = Begin();
  for (auto* m : {&old_expired, &old_active, &recent_revoked, &recent_shadow, &old_scheduled,
                  &other_entity}) {
    ASSERT_OK(AppendMitigation(*txn, m));
  }
  auto check = [&](Txn& t) {
    auto got = t.EntityMitigations(E("user:u1"), kT0 + absl::Seconds(3));
    ASSERT_OK(got);
    EXPECT_THAT(Ids(*got), UnorderedElementsAre(old_active.id, recent_revoked.id, recent_shadow.id,
                                                old_scheduled.id));
    for (const core::Mitigation& m : *got) {
      if (m.id == recent_shadow.id) {
        EXPECT_EQ(m, recent_shadow);
      }
    }
    auto live = t.EntityMitigations(E("user:u1"), absl::InfiniteFuture());
    ASSERT_OK(live);
    EXPECT_THAT(Ids(*live), UnorderedElementsAre(old_active.id, old_scheduled.id));
    auto none = t.EntityMitigations(E("user:u3"), kT0);
    ASSERT_OK(none);
    EXPECT_THAT(*none, IsEmpty());
  };
  check(*txn);  // this Txn's own writes
  ASSERT_OK(V(txn->Commit()));
  // An update moves a mitigation in or out: revoking the old active one drops it.
  auto txn2 = Begin();
  core::Mitigation revoked = old_active;
  revoked.state = S::kRevoked;
  ASSERT_OK(AppendMitigation(*txn2, &revoked));
  auto got = txn2->EntityMitigations(E("user:u1"), kT0 + absl::Seconds(3));
  ASSERT_OK(got);
  EXPECT_THAT(Ids(*got),
              UnorderedElementsAre(recent_revoked.id, recent_shadow.id, old_scheduled.id));
  ASSERT_OK(V(txn2->Commit()));
}

// An entity read in one transaction and written in a later one that rolls back (whole,
// to a savepoint, or, on SQLite, one failed append) reads as committed; so does one that another
// writer changed since. (The SQLite store keeps entities it read in memory across
// transactions: these are the ways that memory could lie.)
TEST_P(StoreTest, EntityMitigationsFollowRollbacksAndOtherWriters) {
  using S = core::MitigationState;
  const core::Entity u1 = E("user:u1");
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  Put(&m);
  auto read = [&](Txn& t) -> std::vector<core::Mitigation> {
    auto got = t.EntityMitigations(u1, kT0);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : std::vector<core::Mitigation>{};
  };
  {  // rolled back whole
    auto txn = Begin();
    EXPECT_THAT(read(*txn), ElementsAre(m));
    core::Mitigation extended = m;
    extended.expires_at += absl::Hours(5);
    ASSERT_OK(AppendMitigation(*txn, &extended));
    EXPECT_THAT(read(*txn), ElementsAre(extended));
    txn->Rollback();
  }
  {  // to a savepoint; then one append that fails (a mitigation keeps its entity)
    auto txn = Begin();
    EXPECT_THAT(read(*txn), ElementsAre(m));
    ASSERT_OK(V(txn->Savepoint()));
    core::Mitigation added = MakeMitigation(2, "user:u1", "flag");
    ASSERT_OK(AppendMitigation(*txn, &added));
    EXPECT_THAT(read(*txn), SizeIs(2));
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    EXPECT_THAT(read(*txn), ElementsAre(m));
    core::Mitigation moved = m;
    moved.entity = E("user:u2");
    moved.state = S::kRevoked;
    ASSERT_OK(V(txn->Savepoint()));
    ExpectEntityKept(*txn, moved);
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    EXPECT_THAT(read(*txn), ElementsAre(m));
    ASSERT_OK(V(txn->Commit()));
  }
  {  // written, then a savepoint undoes another entity's write, then read and rolled back
    auto txn = Begin();
    core::Mitigation extended = m;
    extended.expires_at += absl::Hours(7);
    ASSERT_OK(AppendMitigation(*txn, &extended));
    ASSERT_OK(V(txn->Savepoint()));
    core::Mitigation other = MakeMitigation(5, "user:u5", "flag");
    ASSERT_OK(AppendMitigation(*txn, &other));
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    EXPECT_THAT(read(*txn), ElementsAre(extended));
    txn->Rollback();
  }
  {
    auto txn = Begin();
    EXPECT_THAT(read(*txn), ElementsAre(m));
  }
  // Another writer on the same data (a CLI process) revokes it, and mitigates an entity
  // this store has never seen written.
  auto other = backend_->Open();
  ASSERT_OK(other);
  core::Mitigation revoked = m;
  revoked.state = S::kRevoked;
  core::Mitigation stranger = MakeMitigation(3, "user:u9", "block");
  {
    auto txn = (*other)->Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(AppendMitigation(**txn, &revoked));
    ASSERT_OK(AppendMitigation(**txn, &stranger));
    ASSERT_OK(V((*txn)->Commit()));
  }
  auto txn = Begin();
  EXPECT_THAT(read(*txn), ElementsAre(revoked));
  auto live = txn->EntityMitigations(u1, absl::InfiniteFuture());
  ASSERT_OK(live);
  EXPECT_THAT(*live, IsEmpty());
  auto found = txn->EntityMitigations(E("user:u9"), kT0);
  ASSERT_OK(found);
  EXPECT_THAT(*found, ElementsAre(stranger));
  auto found_live = txn->FindLive(E("user:u9"), "block");
  ASSERT_OK(found_live);
  EXPECT_THAT(*found_live, ElementsAre(stranger));
  auto counted = txn->CountMitigations(E("user:u9"), "", "", kT0, false);
  ASSERT_OK(counted);
  EXPECT_EQ(*counted, 1);
}

TEST_P(StoreTest, ReadChangesOfKindPagesThroughOneKindInSeqOrder) {
  auto txn = Begin();
  std::vector<int64_t> notes;
  for (int i = 0; i < 5; ++i) {
    core::Mitigation m = MakeMitigation(i + 1, absl::StrCat("user:k", i), "block");
    ASSERT_OK(AppendMitigation(*txn, &m));
    notes.push_back(Note(*txn, absl::StrCat("n", i)).seq);
  }
  ASSERT_OK(V(txn->Commit()));
  auto first = store_->ReadChangesOfKind(ChangeKind::kReview, 0, 3);
  ASSERT_OK(first);
  ASSERT_EQ(first->size(), 3u);
  std::vector<int64_t> seqs;
  for (const Change& c : *first) {
    EXPECT_EQ(c.kind, ChangeKind::kReview);
    seqs.push_back(c.seq);
  }
  auto rest = store_->ReadChangesOfKind(ChangeKind::kReview, seqs.back(), 3);
  ASSERT_OK(rest);
  for (const Change& c : *rest) seqs.push_back(c.seq);
  EXPECT_EQ(seqs, notes);
  auto none = store_->ReadChangesOfKind(ChangeKind::kBreaker, 0, 10);
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(store_->ReadChangesOfKind(ChangeKind::kReview, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, ListMitigationsPagesNewestFirstAndFilters) {
  using S = core::MitigationState;
  std::vector<core::Mitigation> all;
  auto txn = Begin();
  for (int i = 0; i < 25; ++i) {
    core::Mitigation m =
        MakeMitigation(i, i % 2 ? "user:odd" : "user:even", i % 3 ? "block" : "flag",
                       i % 5 == 0 ? S::kRevoked : S::kActive);
    m.policy = i % 4 == 0 ? "bot-model-high" : "";
    m.source = i < 10 ? "pipeline-a" : "manual";
    ASSERT_OK(AppendMitigation(*txn, &m));
    all.push_back(m);
  }
  ASSERT_OK(V(txn->Commit()));
  std::vector<core::Mitigation> newest_first(all.rbegin(), all.rend());

  std::vector<std::string> seen;
  MitigationQuery q;
  q.limit = 10;
  int pages = 0;
  while (true) {
    auto page = store_->ListMitigations(q);
    ASSERT_OK(page);
    ++pages;
    for (const auto& m : page->mitigations) seen.push_back(m.id);
    if (page->next_cursor.empty()) break;
    EXPECT_EQ(page->next_cursor, page->mitigations.back().id);
    q.cursor = page->next_cursor;
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, Ids(newest_first));

  auto expect_filter = [&](MitigationQuery query, auto pred) {
    query.limit = 100;
    auto page = store_->ListMitigations(query);
    ASSERT_OK(page);
    std::vector<std::string> want;
    for (const auto& m : newest_first) {
      if (pred(m)) want.push_back(m.id);
    }
    EXPECT_FALSE(want.empty());
    EXPECT_EQ(Ids(page->mitigations), want);
    EXPECT_EQ(page->next_cursor, "");
  };
  MitigationQuery by_entity;
  by_entity.entity = E("user:odd");
  expect_filter(by_entity, [](const auto& m) { return m.entity.str() == "user:odd"; });
  MitigationQuery by_state;
  by_state.state = S::kRevoked;
  expect_filter(by_state, [](const auto& m) { return m.state == S::kRevoked; });
  MitigationQuery by_action;
  by_action.action = "flag";
  expect_filter(by_action, [](const auto& m) { return m.action == "flag"; });
  MitigationQuery by_policy;
  by_policy.policy = "bot-model-high";
  expect_filter(by_policy, [](const auto& m) { return m.policy == "bot-model-high"; });
  MitigationQuery by_source;
  by_source.source = "pipeline-a";
  expect_filter(by_source, [](const auto& m) { return m.source == "pipeline-a"; });
  MitigationQuery combined;
  combined.entity = E("user:even");
  combined.action = "block";
  combined.state = S::kActive;
  expect_filter(combined, [](const auto& m) {
    return m.entity.str() == "user:even" && m.action == "block" && m.state == S::kActive;
  });

  MitigationQuery none;
  none.action = "suspend";
  auto empty = store_->ListMitigations(none);
  ASSERT_OK(empty);
  EXPECT_THAT(empty->mitigations, IsEmpty());
  MitigationQuery bad;
  bad.limit = 0;
  EXPECT_EQ(store_->ListMitigations(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, ScanLiveIsOneConsistentRead) {
  using S = core::MitigationState;
  std::set<std::string> live;
  auto txn = Begin();
  for (int i = 0; i < 6; ++i) {
    core::Mitigation m =
        MakeMitigation(i, "user:u1", "block", i % 3 == 2 ? S::kExpired : S::kActive);
    ASSERT_OK(AppendMitigation(*txn, &m));
    if (i % 3 != 2) live.insert(m.id);
  }
  ASSERT_OK(V(txn->Commit()));

  std::set<std::string> scanned;
  core::Mitigation late = MakeMitigation(100, "user:u9", "block");
  bool wrote = false;
  // A write that commits while the scan is under way must not show up in it.
  auto seq = store_->ScanLive([&](const core::Mitigation& m) -> absl::Status {
    scanned.insert(m.id);
    if (!wrote) {
      wrote = true;
      Put(&late);
    }
    return absl::OkStatus();
  });
  ASSERT_OK(seq);
  EXPECT_TRUE(wrote);
  EXPECT_EQ(*seq, 6);
  EXPECT_EQ(scanned, live);

  scanned.clear();
  seq = store_->ScanLive([&](const core::Mitigation& m) {
    scanned.insert(m.id);
    return absl::OkStatus();
  });
  ASSERT_OK(seq);
  EXPECT_EQ(*seq, 7);
  EXPECT_EQ(scanned.size(), live.size() + 1);
  EXPECT_TRUE(scanned.count(late.id));

  auto stopped =
      store_->ScanLive([](const core::Mitigation&) { return absl::CancelledError("enough"); });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled);
}

TEST_P(StoreTest, ScanActiveJsonGivesTheStoredRecordsOfActiveOnes) {
  using S = core::MitigationState;
  std::map<std::string, core::Mitigation> active;
  auto txn = Begin();
  for (int i = 0; i < 9; ++i) {
    S state = i % 3 == 0 ? S::kActive : (i % 3 == 1 ? S::kScheduled : S::kRevoked);
    core::Mitigation m = MakeMitigation(i, "user:j" + std::to_string(i), "block", state);
    ASSERT_OK(AppendMitigation(*txn, &m));
    if (state == S::kActive) active[m.id] = m;
  }
  ASSERT_OK(V(txn->Commit()));
  std::map<std::string, core::Mitigation> seen;
  int64_t started = -1;
  auto seq = store_->ScanActiveJson([&](int64_t s) { started = s; },
                                    [&](std::string_view json) -> absl::Status {
                                      auto m = core::MitigationFromJson(json);
                                      if (!m.ok()) return m.status();
                                      seen[m->id] = *m;
                                      return absl::OkStatus();
                                    });
  ASSERT_OK(seq);
  EXPECT_EQ(*seq, 9);
  EXPECT_EQ(started, 9);
  EXPECT_EQ(seen, active);
}

TEST_P(StoreTest, ScanActiveEntriesGivesTheEnforcementFieldsOfActiveOnes) {
  using S = core::MitigationState;
  std::map<std::string, std::string> active;  // id -> "entity action expires_us"
  auto txn = Begin();
  for (int i = 0; i < 9; ++i) {
    S state = i % 3 == 0 ? S::kActive : (i % 3 == 1 ? S::kScheduled : S::kRevoked);
    core::Mitigation m =
        MakeMitigation(i, i == 3 ? "cidr:10.0.0.0/8" : "user:k" + std::to_string(i),
                       i == 6 ? "throttle" : "block", state);
    m.expires_at = kT0 + absl::Seconds(100 + i);
    ASSERT_OK(AppendMitigation(*txn, &m));
    if (state == S::kActive) {
      active[m.id] = absl::StrCat(m.entity.str(), " ", m.action, " ", core::ToMicros(m.expires_at));
    }
  }
  ASSERT_OK(V(txn->Commit()));
  // A later revoke of an active one: the scan sees the latest state.
  auto gone = store_->GetMitigation(active.begin()->first);
  ASSERT_OK(gone);
  ASSERT_TRUE(gone->has_value());
  core::Mitigation revoked = **gone;
  revoked.state = S::kRevoked;
  auto txn2 = Begin();
  ASSERT_OK(AppendMitigation(*txn2, &revoked));
  ASSERT_OK(V(txn2->Commit()));
  active.erase(revoked.id);

  std::map<std::string, std::string> seen;
  int64_t started = -1;
  auto seq = store_->ScanActiveEntries([&](int64_t s) { started = s; },
                                       [&](const Store::ActiveEntry& e) -> absl::Status {
                                         seen[std::string(e.id)] =
                                             absl::StrCat(AV(e.entity), " ", AV(e.action), " ",
                                                          core::ToMicros(e.expires_at));
                                         return absl::OkStatus();
                                       });
  ASSERT_OK(seq);
  EXPECT_EQ(*seq, 10);
  EXPECT_EQ(started, 10);
  EXPECT_EQ(seen, active);
}

TEST_P(StoreTest, ListDueAndNextDue) {
  using S = core::MitigationState;
  auto none = store_->NextDue();
  ASSERT_OK(none);
  EXPECT_FALSE(none->has_value());

  core::Mitigation a10 = MakeMitigation(1, "user:a", "block");
  a10.expires_at = kT0 + absl::Seconds(10);
  core::Mitigation a20 = MakeMitigation(2, "user:b", "block");
  a20.expires_at = kT0 + absl::Seconds(20);
  core::Mitigation s5 = MakeMitigation(3, "user:c", "block", S::kScheduled);
  s5.starts_at = kT0 + absl::Seconds(5);
  s5.expires_at = kT0 + absl::Hours(9);
  core::Mitigation revoked = MakeMitigation(4, "user:d", "block", S::kRevoked);
  revoked.expires_at = kT0 + absl::Seconds(1);
  core::Mitigation pending = MakeMitigation(5, "user:e", "block", S::kPendingApproval);
  pending.expires_at = kT0 + absl::Seconds(2);
  auto txn = Begin();
  for (auto* m : {&a10, &a20, &s5, &revoked, &pending}) ASSERT_OK(AppendMitigation(*txn, m));
  ASSERT_OK(V(txn->Commit()));

  auto next = store_->NextDue();
  ASSERT_OK(next);
  ASSERT_TRUE(next->has_value());
  EXPECT_EQ(**next, kT0 + absl::Seconds(5));

  auto due = store_->ListDue(kT0 + absl::Seconds(15), 100);
  ASSERT_OK(due);
  EXPECT_THAT(Ids(*due), ElementsAre(s5.id, a10.id));
  due = store_->ListDue(kT0 + absl::Seconds(15), 1);
  ASSERT_OK(due);
  EXPECT_THAT(Ids(*due), ElementsAre(s5.id));
  due = store_->ListDue(kT0 + absl::Seconds(4), 100);
  ASSERT_OK(due);
  EXPECT_THAT(*due, IsEmpty());
  due = store_->ListDue(kT0 + absl::Seconds(10), 100);  // expires_at <= now is due
  ASSERT_OK(due);
  EXPECT_THAT(Ids(*due), ElementsAre(s5.id, a10.id));
}

TEST_P(StoreTest, IdempotencyPutGetPurge) {
  IdempotencyRecord r{.scope = "k_1 POST /v1/mitigations",
                      .key = "abc",
                      .request_hash = std::string(64, 'a'),
                      .status = 201,
                      .response = R"({"id":"m_1"})",
                      .created_at = kT0};
  {
    auto txn = Begin();
    auto miss = txn->GetIdempotency(r.scope, r.key);
    ASSERT_OK(miss);
    EXPECT_FALSE(miss->has_value());
    ASSERT_OK(V(txn->PutIdempotency(r)));
    auto hit = txn->GetIdempotency(r.scope, r.key);
    ASSERT_OK(hit);
    ASSERT_TRUE(hit->has_value());
    EXPECT_EQ((*hit)->response, r.response);
    EXPECT_EQ(txn->PutIdempotency(r).code(), absl::StatusCode::kAlreadyExists);
    ASSERT_OK(V(txn->Commit()));
  }
  {
    // A rolled-back Put leaves nothing.
    auto txn = Begin();
    IdempotencyRecord other = r;
    other.key = "def";
    ASSERT_OK(V(txn->PutIdempotency(other)));
    txn->Rollback();
  }
  auto txn = Begin();
  auto hit = txn->GetIdempotency(r.scope, r.key);
  ASSERT_OK(hit);
  ASSERT_TRUE(hit->has_value());
  EXPECT_EQ((*hit)->request_hash, r.request_hash);
  EXPECT_EQ((*hit)->status, 201);
  EXPECT_EQ((*hit)->created_at, kT0);
  auto gone = txn->GetIdempotency(r.scope, "def");
  ASSERT_OK(gone);
  EXPECT_FALSE(gone->has_value());
  auto other_scope = txn->GetIdempotency("k_2 POST /v1/mitigations", r.key);
  ASSERT_OK(other_scope);
  EXPECT_FALSE(other_scope->has_value());
  txn->Rollback();

  auto purged = store_->PurgeIdempotency(kT0);  // created_at == kT0 is not before kT0
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 0);
  purged = store_->PurgeIdempotency(kT0 + absl::Seconds(1));
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 1);
  txn = Begin();
  auto after = txn->GetIdempotency(r.scope, r.key);
  ASSERT_OK(after);
  EXPECT_FALSE(after->has_value());
}

TEST_P(StoreTest, KeysCreateListRevokeVersion) {
  auto v0 = store_->KeysVersion();
  ASSERT_OK(v0);
  ApiKey k{.id = "k_det",
           .secret_hash = std::string(64, 'b'),
           .role = "detector",
           .sources = {"pipeline-a", "model \"x\""},
           .name = "batch jobs",
           .created_at = kT0};
  ASSERT_OK(V(store_->CreateKey(k)));
  auto v1 = store_->KeysVersion();
  ASSERT_OK(v1);
  EXPECT_NE(*v1, *v0);
  ApiKey admin{.id = "k_admin",
               .secret_hash = std::string(64, 'c'),
               .role = "admin",
               .created_at = kT0 + absl::Seconds(1)};
  ASSERT_OK(V(store_->CreateKey(admin)));
  EXPECT_EQ(store_->CreateKey(k).code(), absl::StatusCode::kAlreadyExists);
  ApiKey same_secret = admin;
  same_secret.id = "k_other";
  EXPECT_EQ(store_->CreateKey(same_secret).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store_->CreateKey(ApiKey{}).code(), absl::StatusCode::kInvalidArgument);

  auto keys = store_->ListKeys();
  ASSERT_OK(keys);
  ASSERT_THAT(*keys, SizeIs(2));
  EXPECT_EQ((*keys)[0].id, "k_det");
  EXPECT_EQ((*keys)[0].sources, k.sources);
  EXPECT_EQ((*keys)[0].secret_hash, k.secret_hash);
  EXPECT_EQ((*keys)[0].name, "batch jobs");
  EXPECT_EQ((*keys)[0].created_at, kT0);
  EXPECT_FALSE((*keys)[0].revoked_at.has_value());
  EXPECT_EQ((*keys)[1].id, "k_admin");

  // A second handle on the same data (another process: `quell keys revoke`).
  auto cli = backend_->Open();
  ASSERT_OK(cli);
  auto before = store_->KeysVersion();
  ASSERT_OK(before);
  ASSERT_OK(V((*cli)->RevokeKey("k_det", kT0 + absl::Minutes(1))));
  auto after = store_->KeysVersion();
  ASSERT_OK(after);
  EXPECT_NE(*after, *before);
  ASSERT_OK(V(store_->RevokeKey("k_det", kT0 + absl::Minutes(2))));  // twice is fine
  auto again = store_->KeysVersion();
  ASSERT_OK(again);
  EXPECT_EQ(*again, *after);
  EXPECT_EQ(store_->RevokeKey("k_nope", kT0).code(), absl::StatusCode::kNotFound);
  keys = store_->ListKeys();
  ASSERT_OK(keys);
  ASSERT_TRUE((*keys)[0].revoked_at.has_value());
  EXPECT_EQ(*(*keys)[0].revoked_at, kT0 + absl::Minutes(1));
  EXPECT_FALSE((*keys)[1].revoked_at.has_value());
}

TEST_P(StoreTest, SavepointRollbackRewindsSeqAndWrites) {
  auto txn = Begin();
  Change a = Note(*txn, "a");
  ASSERT_OK(V(txn->Savepoint()));
  Note(*txn, "b");
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  ASSERT_OK(AppendMitigation(*txn, &m));
  ASSERT_OK(V(txn->Savepoint()));  // nested
  Note(*txn, "inner");
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  EXPECT_EQ(txn->NextSeq(), 4);
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  EXPECT_EQ(txn->NextSeq(), 2);
  auto gone = txn->GetMitigation(m.id);
  ASSERT_OK(gone);
  EXPECT_FALSE(gone->has_value());
  EXPECT_EQ(txn->RollbackToSavepoint().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(txn->ReleaseSavepoint().code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_OK(V(txn->Savepoint()));
  Change c = Note(*txn, "c");
  ASSERT_OK(V(txn->ReleaseSavepoint()));
  EXPECT_EQ(c.seq, 2);
  EXPECT_EQ(c.prev_hash, a.hash);
  ASSERT_OK(V(txn->Commit()));

  auto read = store_->ReadChanges(0, 10);
  ASSERT_OK(read);
  ASSERT_THAT(*read, SizeIs(2));
  EXPECT_EQ((*read)[0].subject, "a");
  EXPECT_EQ((*read)[1].subject, "c");
  EXPECT_EQ((*read)[1].hash, c.hash);
}

// Rolling back to a savepoint undoes updates too: the mitigation row returns to its
// earlier change (and so to its earlier due time), idempotency records disappear, and a
// write made before the savepoint stays.
TEST_P(StoreTest, SavepointRollbackRestoresUpdatedRowsAndDropsInserts) {
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  Put(&m);
  auto txn = Begin(kT0 + absl::Minutes(1));
  core::Mitigation other = MakeMitigation(2, "user:u2", "block");
  ASSERT_OK(AppendMitigation(*txn, &other));
  ASSERT_OK(V(txn->Savepoint()));
  core::Mitigation revoked = m;
  revoked.state = core::MitigationState::kRevoked;
  ASSERT_OK(AppendMitigation(*txn, &revoked));
  core::Mitigation again = revoked;  // a second update of the same row in the savepoint
  again.state = core::MitigationState::kExpired;
  ASSERT_OK(AppendMitigation(*txn, &again));
  IdempotencyRecord r{.scope = "k_1 POST /v1/mitigations",
                      .key = "abc",
                      .request_hash = "h",
                      .status = 201,
                      .response = "{}",
                      .created_at = kT0};
  ASSERT_OK(V(txn->PutIdempotency(r)));
  ASSERT_OK(V(txn->RollbackToSavepoint()));

  auto inside = txn->GetMitigation(m.id);
  ASSERT_OK(inside);
  ASSERT_TRUE(inside->has_value());
  EXPECT_EQ(**inside, m);
  auto idem = txn->GetIdempotency(r.scope, r.key);
  ASSERT_OK(idem);
  EXPECT_FALSE(idem->has_value());
  // The same key can be stored again after the rollback.
  ASSERT_OK(V(txn->PutIdempotency(r)));
  ASSERT_OK(V(txn->Commit()));

  auto got = store_->GetMitigation(m.id);
  ASSERT_OK(got);
  EXPECT_EQ(**got, m);
  got = store_->GetMitigation(other.id);
  ASSERT_OK(got);
  EXPECT_EQ(**got, other);
  auto due = store_->ListDue(kT0 + absl::Hours(2), 10);
  ASSERT_OK(due);
  EXPECT_THAT(Ids(*due), ElementsAre(m.id, other.id));
  auto last = store_->LastSeq();
  ASSERT_OK(last);
  EXPECT_EQ(*last, 2);
}

// A savepoint rollback puts each mitigation of one entity back at its own version: the
// entity's other mitigations and its non-mitigation changes (even one naming the
// mitigation) in between are not mistaken for it.
TEST_P(StoreTest, SavepointRollbackRestoresEachMitigationOfAnEntity) {
  core::Mitigation a = MakeMitigation(1, "user:u1", "block");
  core::Mitigation b = MakeMitigation(2, "user:u1", "challenge");
  Put(&a);
  Put(&b);
  a.state = core::MitigationState::kRevoked;  // a's second version, after b's first
  Put(&a);
  auto txn = Begin(kT0 + absl::Minutes(1));
  ASSERT_OK(V(txn->Savepoint()));
  Change note;
  note.kind = ChangeKind::kReview;
  note.actor = "cli";
  note.subject = b.id;
  note.entity = "user:u1";
  note.payload = R"({"note":"x"})";
  ASSERT_OK(txn->Append(note, nullptr));
  core::Mitigation b2 = b;
  b2.state = core::MitigationState::kExpired;
  ASSERT_OK(AppendMitigation(*txn, &b2));
  core::Mitigation a3 = a;
  a3.state = core::MitigationState::kExpired;
  ASSERT_OK(AppendMitigation(*txn, &a3));
  core::Mitigation c = MakeMitigation(3, "user:u1", "flag");
  ASSERT_OK(AppendMitigation(*txn, &c));
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  core::Mitigation moved = a;  // undo finds a mitigation's versions by its entity
  moved.entity = E("user:u9");
  ASSERT_OK(V(txn->Savepoint()));
  ExpectEntityKept(*txn, moved);
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  ASSERT_OK(V(txn->Commit()));
  for (const core::Mitigation& want : {a, b}) {
    auto got = store_->GetMitigation(want.id);
    ASSERT_OK(got);
    ASSERT_TRUE(got->has_value()) << want.id;
    EXPECT_EQ(**got, want);
  }
  auto gone = store_->GetMitigation(c.id);
  ASSERT_OK(gone);
  EXPECT_FALSE(gone->has_value());
}

StoredDetection MakeDetection(std::string source, std::string id, absl::Time observed,
                              absl::Time received) {
  StoredDetection d;
  d.source = std::move(source);
  d.id = std::move(id);
  d.type = "artificial_streaming";
  d.entity = "user:u1";
  d.score = 0.97;
  d.observed_at = observed;
  d.received_at = received;
  d.json = absl::StrCat("{\"id\":\"", d.id, "\"}");
  d.reply = "{\"status\":\"accepted\",\"decisions\":[]}";
  return d;
}

// `n` bot-model detections with ids PREFIX0, PREFIX1, ..., each carrying a JSON of
// `json_bytes` bytes of `fill` (0: a letter per row, 'a' to 'z'): bulk that fills pages.
std::vector<StoredDetection> BulkDetections(std::string_view prefix, int n, size_t json_bytes,
                                            char fill = 0) {
  std::vector<StoredDetection> rows;
  for (int i = 0; i < n; ++i) {
    rows.push_back(MakeDetection("bot-model", absl::StrCat(AV(prefix), i), kT0, kT0));
    rows.back().json = std::string(json_bytes, fill != 0 ? fill : static_cast<char>('a' + i % 26));
  }
  return rows;
}

// The batch forms: a batch longer than a backend's chunk, two sources, repeats, a key
// that is not stored, this Txn's own writes, and the undo of a savepoint.
TEST_P(StoreTest, DetectionBatchesAreStoredAndFoundAsOneByOne) {
  std::vector<StoredDetection> rows;
  for (int i = 0; i < 75; ++i) {
    rows.push_back(MakeDetection(i % 10 == 9 ? "ato-model" : "bot-model", absl::StrCat("b", i),
                                 kT0 + absl::Seconds(i), kT0));
    rows.back().reply = absl::StrCat("{\"n\":", i, "}");
    // Replies without decisions (a backend may store them compactly), one of them of an id
    // that needs escaping, and one that only looks like one (another detection's).
    if (i % 3 == 0) rows.back().reply = NoDecisionReply(rows.back().source, rows.back().id);
    if (i == 6) rows.back().id = "b\"6\\";
    if (i == 6) rows.back().reply = NoDecisionReply(rows.back().source, rows.back().id);
    if (i == 4) rows.back().reply = NoDecisionReply(rows.back().source, "b5");
    // JSON that starts with the head of the row's own fields (a backend may store only the
    // rest), one that is only the head, and one with another row's head.
    StoredDetection& d = rows.back();
    if (i % 4 == 1 || i == 6) {
      d.score = 0.1 * i;
      d.json.clear();
      AppendDetectionJsonHead(d.id, d.source, d.type, d.entity, d.score, d.observed_at, &d.json);
      // Half of them say how long the head is, as the detection codec does.
      if (i % 8 == 1) d.json_head_bytes = d.json.size();
      if (i != 9) absl::StrAppend(&d.json, ",\"evidence\":{\"i\":", i, "},\"related\":[]}");
    }
    if (i == 13) {
      d.json.clear();
      AppendDetectionJsonHead("b12", d.source, d.type, d.entity, d.score, d.observed_at, &d.json);
      d.json.append("}");
    }
  }
  {
    auto txn = Begin();
    ASSERT_OK(V(txn->PutDetection(rows[0])));
    std::vector<StoredDetection> rest(rows.begin() + 1, rows.end());
    ASSERT_OK(V(txn->PutDetections(rest)));
    // Every key, one not stored, a repeat; in a long run of one source.
    std::vector<DetectionKey> keys;
    for (const StoredDetection& d : rows) keys.push_back({d.source, d.id});
    keys.push_back({"bot-model", "missing"});
    keys.push_back({"bot-model", "b3"});
    keys.push_back({"ato-model", "b3"});  // b3 is a bot-model detection only
    auto replies = txn->GetDetectionReplies(keys);
    ASSERT_OK(replies);
    ASSERT_THAT(*replies, SizeIs(keys.size()));
    for (size_t i = 0; i < rows.size(); ++i) {
      ASSERT_TRUE((*replies)[i].has_value()) << i;
      EXPECT_EQ(*(*replies)[i], rows[i].reply);
    }
    EXPECT_FALSE((*replies)[75].has_value());
    ASSERT_TRUE((*replies)[76].has_value());
    EXPECT_EQ(*(*replies)[76], rows[3].reply);
    EXPECT_FALSE((*replies)[77].has_value());
    std::vector<DetectionKey> run;
    for (int i = 0; i < 70; ++i) {
      run.push_back({"bot-model", i % 2 ? std::string_view("b0") : std::string_view("zz")});
    }
    auto run_replies = txn->GetDetectionReplies(run);
    ASSERT_OK(run_replies);
    for (int i = 0; i < 70; ++i) {
      EXPECT_EQ((*run_replies)[i].has_value(), i % 2 == 1) << i;
      if ((*run_replies)[i]) {
        EXPECT_EQ(*(*run_replies)[i], rows[0].reply) << i;
      }
    }

    // A batch that collides with a stored detection fails whole (with the rollback).
    ASSERT_OK(V(txn->Savepoint()));
    std::vector<StoredDetection> again;
    for (int i = 0; i < 40; ++i) {
      again.push_back(MakeDetection("bot-model", absl::StrCat("c", i), kT0, kT0));
    }
    again.push_back(rows[5]);
    EXPECT_EQ(txn->PutDetections(again).code(), absl::StatusCode::kAlreadyExists);
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    // A batch undone by its savepoint.
    ASSERT_OK(V(txn->Savepoint()));
    again.pop_back();
    ASSERT_OK(V(txn->PutDetections(again)));
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    std::vector<StoredDetection> bad = {MakeDetection("bot-model", "", kT0, kT0)};
    EXPECT_EQ(txn->PutDetections(bad).code(), absl::StatusCode::kInvalidArgument);
    ASSERT_OK(V(txn->Commit()));
  }
  ExpectStored(rows);
  for (int i = 0; i < 40; ++i) {
    auto got = store_->GetDetection("bot-model", absl::StrCat("c", i));
    ASSERT_OK(got);
    EXPECT_FALSE(got->has_value()) << i;
  }
}

// PutNewDetections writes the rows whose key is not stored (by an earlier Txn or this
// one) and says which; a savepoint rollback undoes them.
// The last active admin key survives two revokes at once (two DELETEs, or two nodes):
// the count is checked with the revoke, not read before it.
TEST_P(StoreTest, TwoRevokesAtOnceKeepTheLastAdminKey) {
  auto other = backend_->Open();  // a second handle: another node or process
  ASSERT_OK(other);
  for (int round = 0; round < 5; ++round) {
    const std::string a = absl::StrCat("k_a", round), b = absl::StrCat("k_b", round);
    for (const std::string& id : {a, b}) {
      ASSERT_OK(V(store_->CreateKey({.id = id,
                                     .secret_hash = std::string(64, 'a' + (round * 2 + (id == b))),
                                     .role = "admin",
                                     .created_at = kT0})));
    }
    std::atomic<int> ready{0};
    absl::Status sa, sb;
    auto revoke = [&](Store* s, const std::string& id, absl::Status* out) {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      *out = s->RevokeKey(id, kT0, /*keep_last_admin=*/true);
    };
    std::thread ta(revoke, store_.get(), a, &sa), tb(revoke, other->get(), b, &sb);
    ta.join();
    tb.join();
    EXPECT_EQ(sa.ok() + sb.ok(), 1) << sa << " / " << sb;
    // The survivor is the last one: it stays (and the next round's pair is on top of it).
    const std::string& kept = sa.ok() ? b : a;
    EXPECT_EQ(store_->RevokeKey(kept, kT0, true).code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_OK(V(store_->RevokeKey(kept, kT0)));  // without the guard (the CLI): revoked
  }
}

TEST_P(StoreTest, PutNewDetectionsWritesOnlyNewKeysAndSaysWhich) {
  std::vector<StoredDetection> rows;
  for (int i = 0; i < 70; ++i) {
    rows.push_back(MakeDetection(i % 7 == 6 ? "ato-model" : "bot-model", absl::StrCat("n", i),
                                 kT0 + absl::Seconds(i), kT0));
  }
  {
    auto txn = Begin();
    ASSERT_OK(V(txn->PutDetection(rows[3])));
    ASSERT_OK(V(txn->Commit()));
  }
  {
    auto txn = Begin();
    ASSERT_OK(V(txn->PutDetection(rows[40])));  // this Txn's own write
    ASSERT_OK(V(txn->Savepoint()));
    auto undone = txn->PutNewDetections(rows);
    ASSERT_OK(undone);
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    auto stored = txn->PutNewDetections(rows);
    ASSERT_OK(stored);
    ASSERT_EQ(stored->size(), rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ((*stored)[i], i != 3 && i != 40) << i;
      EXPECT_EQ((*undone)[i], (*stored)[i]) << i;
    }
    // Two batches under one savepoint (a decision mutation's quiet rows, then the
    // others): one rollback undoes both.
    ASSERT_OK(V(txn->Savepoint()));
    StoredDetection quiet = MakeDetection("bot-model", "later-quiet", kT0, kT0);
    StoredDetection decided = MakeDetection("bot-model", "later-decided", kT0, kT0);
    ASSERT_OK(txn->PutNewDetections({quiet}));
    ASSERT_OK(V(txn->PutDetections({decided})));
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    for (const StoredDetection& d : {quiet, decided}) {
      auto gone = txn->GetDetection(d.source, d.id);
      ASSERT_OK(gone);
      EXPECT_FALSE(gone->has_value()) << d.id;
    }
    std::vector<StoredDetection> bad = {MakeDetection("bot-model", "", kT0, kT0)};
    EXPECT_EQ(txn->PutNewDetections(bad).status().code(), absl::StatusCode::kInvalidArgument);
    auto none = txn->PutNewDetections({});
    ASSERT_OK(none);
    EXPECT_TRUE(none->empty());
    ASSERT_OK(V(txn->Commit()));
  }
  ExpectStored(rows);
}

TEST_P(StoreTest, DetectionsAreIdempotentScannedInObservedOrderAndPurged) {
  StoredDetection late = MakeDetection("bot-model", "d1", kT0 + absl::Seconds(20), kT0);
  StoredDetection early = MakeDetection("bot-model", "d2", kT0 + absl::Seconds(10), kT0);
  StoredDetection other = MakeDetection("ato-model", "d1", kT0 + absl::Seconds(30), kT0);
  other.batch = "b_1";
  {
    auto txn = Begin();
    ASSERT_OK(V(txn->PutDetection(late)));
    ASSERT_OK(V(txn->PutDetection(early)));
    ASSERT_OK(V(txn->PutDetection(other)));  // same id, other source: a different detection
    EXPECT_EQ(txn->PutDetection(late).code(), absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(txn->PutDetection(MakeDetection("bot-model", "", kT0, kT0)).code(),
              absl::StatusCode::kInvalidArgument);
    ASSERT_OK(V(txn->Savepoint()));
    ASSERT_OK(V(txn->PutDetection(MakeDetection("bot-model", "d9", kT0, kT0))));
    ASSERT_OK(V(txn->RollbackToSavepoint()));
    auto inside = txn->GetDetection("bot-model", "d1");
    ASSERT_OK(inside);
    ASSERT_TRUE(inside->has_value());
    EXPECT_EQ(**inside, late);
    auto outside = store_->GetDetection("bot-model", "d1");
    ASSERT_OK(outside);
    EXPECT_FALSE(outside->has_value());
    ASSERT_OK(V(txn->Commit()));
  }
  auto got = store_->GetDetection("ato-model", "d1");
  ASSERT_OK(got);
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, other);
  auto gone = store_->GetDetection("bot-model", "d9");
  ASSERT_OK(gone);
  EXPECT_FALSE(gone->has_value());
  // A detection of a later batch, received later.
  {
    auto txn = Begin(kT0 + absl::Minutes(5));
    ASSERT_OK(V(txn->PutDetection(
        MakeDetection("bot-model", "d3", kT0 + absl::Seconds(15), kT0 + absl::Minutes(5)))));
    ASSERT_OK(V(txn->Commit()));
  }

  std::vector<std::string> seen;
  auto collect = [&](const StoredDetection& d) {
    seen.push_back(absl::StrCat(d.source, "/", d.id));
    return absl::OkStatus();
  };
  ASSERT_OK(V(store_->ScanDetections(kT0, kT0 + absl::Hours(1), collect)));
  EXPECT_THAT(seen, ElementsAre("bot-model/d2", "bot-model/d3", "bot-model/d1", "ato-model/d1"));
  seen.clear();
  // [from, to): the bounds select by observed_at.
  ASSERT_OK(V(store_->ScanDetections(kT0 + absl::Seconds(15), kT0 + absl::Seconds(30), collect)));
  EXPECT_THAT(seen, ElementsAre("bot-model/d3", "bot-model/d1"));
  int calls = 0;
  absl::Status stop = store_->ScanDetections(kT0, kT0 + absl::Hours(1), [&](const auto&) {
    ++calls;
    return absl::CancelledError("enough");
  });
  EXPECT_EQ(stop.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 1);

  auto purged = store_->PurgeDetections(kT0 + absl::Minutes(1));
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 3);
  seen.clear();
  ASSERT_OK(V(store_->ScanDetections(kT0, kT0 + absl::Hours(1), collect)));
  EXPECT_THAT(seen, ElementsAre("bot-model/d3"));
  purged = store_->PurgeDetections(kT0 + absl::Minutes(1));
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 0);
}

// Every stored detection is older than the cut (a quiet spell past the retention): the
// purge must not take the detections committed while its chunks run. It did (its bound was
// "every row"), and a replay of one was decided again. Racy by nature: the purge starts,
// then a writer commits one detection at a time while it reads its bound (a scan of
// 30,000 rows) and deletes them in chunks; the code before lost some in most runs, this
// one none in any.
TEST_P(StoreTest, APurgeKeepsDetectionsCommittedWhileItRuns) {
  {
    std::vector<StoredDetection> old;
    for (int i = 0; i < 30000; ++i) {
      old.push_back(MakeDetection("m", absl::StrCat("old", i), kT0, kT0));
    }
    auto txn = Begin(kT0);
    ASSERT_OK(V(txn->PutDetections(old)));
    ASSERT_OK(V(txn->Commit()));
  }
  const absl::Time later = kT0 + absl::Hours(2);
  std::atomic<bool> purging{true};
  absl::StatusOr<int64_t> purged;
  std::thread purge([&] {
    purged = store_->PurgeDetections(kT0 + absl::Hours(1));
    purging = false;
  });
  absl::SleepFor(absl::Milliseconds(1));  // its bound read has begun, most runs
  int written = 0;
  bool write_failed = false;
  while (!write_failed && (purging.load() || written < 20)) {
    auto txn = store_->Begin(later);
    write_failed =
        !txn.ok() ||
        !(*txn)
             ->PutDetection(MakeDetection("m", absl::StrCat("new", written), later, later))
             .ok() ||
        !(*txn)->Commit().ok();
    if (!write_failed) ++written;
  }
  purge.join();  // before any ASSERT: a joinable thread must not be destroyed
  EXPECT_FALSE(write_failed);
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 30000);
  int kept = 0;
  ASSERT_OK(V(store_->ScanDetections(kT0, later + absl::Hours(1), [&](const StoredDetection& d) {
    kept += absl::StartsWith(d.id, "new");
    return absl::OkStatus();
  })));
  EXPECT_EQ(kept, written);
}

TEST_P(StoreTest, CountMitigationsByEntityPolicyActionAndWindow) {
  using S = core::MitigationState;
  auto make = [](int n, std::string_view entity, std::string_view action, std::string_view policy,
                 S state) {
    core::Mitigation m = MakeMitigation(n, entity, action, state);
    m.policy = policy;
    return m;
  };
  std::vector<core::Mitigation> ms = {
      make(1, "user:u1", "challenge", "bot-high", S::kExpired),
      make(2, "user:u1", "challenge", "bot-high", S::kActive),
      make(3, "user:u1", "suspend", "bot-high", S::kActive),
      make(4, "user:u1", "challenge", "bot-high", S::kShadow),
      make(5, "user:u1", "challenge", "ato", S::kActive),
      make(6, "user:u2", "challenge", "bot-high", S::kActive),
  };
  auto txn = Begin();
  for (auto& m : ms) ASSERT_OK(AppendMitigation(*txn, &m));
  auto count = [&](auto& reader, std::string_view entity, std::string_view policy,
                   std::string_view action, int since, bool no_shadow) -> int64_t {
    auto n =
        reader.CountMitigations(E(entity), policy, action, kT0 + absl::Seconds(since), no_shadow);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : -1;
  };
  // Inside the Txn, before commit.
  EXPECT_EQ(count(*txn, "user:u1", "bot-high", "", 0, false), 4);
  EXPECT_EQ(count(*txn, "user:u1", "bot-high", "", 0, true), 3);
  EXPECT_EQ(count(*store_, "user:u1", "bot-high", "", 0, false), 0);
  ASSERT_OK(V(txn->Commit()));
  EXPECT_EQ(count(*store_, "user:u1", "bot-high", "", 0, false), 4);
  EXPECT_EQ(count(*store_, "user:u1", "bot-high", "challenge", 0, false), 3);
  EXPECT_EQ(count(*store_, "user:u1", "bot-high", "challenge", 0, true), 2);
  EXPECT_EQ(count(*store_, "user:u1", "", "", 0, false), 5);
  EXPECT_EQ(count(*store_, "user:u1", "", "challenge", 2, true), 2);  // created_at >= since
  EXPECT_EQ(count(*store_, "user:u1", "bot-high", "", 5, false), 0);
  EXPECT_EQ(count(*store_, "user:u2", "bot-high", "", 0, false), 1);
  EXPECT_EQ(count(*store_, "user:u3", "", "", 0, false), 0);
}

// Escalation and prior() count offences, not every decision ever made: one a person undid
// (revoked, rejected) or a held one nobody approved in time is not a prior offence; one
// that expired after it was enforced is. The state is the mitigation's latest change.
TEST_P(StoreTest, CountMitigationsLeavesOutDecisionsThatWereUndoneOrNeverApproved) {
  using S = core::MitigationState;
  auto make = [](int n, S state, std::string_view state_reason = "") {
    core::Mitigation m = MakeMitigation(n, "user:u1", "challenge", state);
    m.policy = "bot-high";
    m.state_reason = state_reason;
    return m;
  };
  std::vector<core::Mitigation> ms = {
      make(1, S::kActive),
      make(2, S::kPendingApproval),
      make(3, S::kScheduled),
      make(4, S::kExpired, "expired"),  // enforced, then over: counts
      make(5, S::kRevoked, "revoked: false positive"),
      make(6, S::kRejected, "rejected by k_rev"),
      make(7, S::kSuppressed),
      make(8, S::kExpired, "pending approval expired: nobody approved it within 72h"),
      make(9, S::kPendingApproval),  // held now, expired unapproved below
      make(10, S::kActive),          // enforced now, revoked below
      // Scheduled, started only after its expiry: never enforced (the reason before, then now).
      make(11, S::kExpired, core::kStartAfterExpiryReasonBefore),
      make(12, S::kExpired, core::kStartAfterExpiryReason),
      // Started on time, then merged into a live one: enforced through it, counts.
      make(13, S::kExpired, "scheduled start reached; merged into m_x, already active"),
  };
  auto txn = Begin();
  for (auto& m : ms) ASSERT_OK(AppendMitigation(*txn, &m));
  auto count = [&](auto& reader) -> int64_t {
    auto n = reader.CountMitigations(E("user:u1"), "bot-high", "", kT0, /*exclude_shadow=*/true);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : -1;
  };
  EXPECT_EQ(count(*txn), 7);  // 1, 2, 3, 4, 9, 10, 13
  ASSERT_OK(V(txn->Commit()));
  EXPECT_EQ(count(*store_), 7);
  ms[8].state = S::kExpired;
  ms[8].state_reason = "pending approval expired: nobody approved it within 72h";
  ms[9].state = S::kRevoked;
  ms[9].state_reason = "revoked: appeal granted";
  txn = Begin();
  ASSERT_OK(AppendMitigation(*txn, &ms[8]));
  ASSERT_OK(AppendMitigation(*txn, &ms[9]));
  EXPECT_EQ(count(*txn), 5);
  ASSERT_OK(V(txn->Commit()));
  EXPECT_EQ(count(*store_), 5);
  // The same rule in C++ (escalation's later hits, prior() on a dry run).
  EXPECT_EQ(std::count_if(ms.begin(), ms.end(),
                          [](const core::Mitigation& m) { return core::CountsAsPrior(m, true); }),
            5);
}

TEST_P(StoreTest, PolicySetVersionsAreMaterialisedAndNeverRepeat) {
  auto none = store_->LatestPolicySet();
  ASSERT_OK(none);
  EXPECT_FALSE(none->has_value());
  auto publish = [&](Txn& txn, int64_t version, std::string_view yaml) {
    Change c;
    c.kind = ChangeKind::kPolicySet;
    c.actor = "k_admin";
    c.payload = absl::StrCat("{\"version\":", version, ",\"yaml\":\"", AV(yaml), "\"}");
    return txn.Append(std::move(c), nullptr);
  };
  auto txn = Begin();
  auto next = txn->NextPolicyVersion();
  ASSERT_OK(next);
  EXPECT_EQ(*next, 1);
  EXPECT_EQ(publish(*txn, 2, "a").status().code(), absl::StatusCode::kInvalidArgument);
  Change bad;
  bad.kind = ChangeKind::kPolicySet;
  bad.payload = R"({"version":1})";
  EXPECT_EQ(txn->Append(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(txn->NextSeq(), 1);  // nothing written
  auto v1 = publish(*txn, 1, "policies: []");
  ASSERT_OK(v1);
  EXPECT_EQ(v1->subject, "1");
  ASSERT_OK(V(txn->Savepoint()));
  ASSERT_OK(publish(*txn, 2, "undone"));
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  next = txn->NextPolicyVersion();
  ASSERT_OK(next);
  EXPECT_EQ(*next, 2);
  EXPECT_EQ(publish(*txn, 1, "again").status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK(publish(*txn, 2, "v2"));
  ASSERT_OK(V(txn->Commit()));

  auto p1 = store_->GetPolicySet(1);
  ASSERT_OK(p1);
  ASSERT_TRUE(p1->has_value());
  EXPECT_EQ((*p1)->version, 1);
  EXPECT_EQ((*p1)->seq, v1->seq);
  EXPECT_EQ((*p1)->yaml, "policies: []");
  EXPECT_EQ((*p1)->actor, "k_admin");
  EXPECT_EQ((*p1)->created_at, kT0);
  auto latest = store_->LatestPolicySet();
  ASSERT_OK(latest);
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->version, 2);
  EXPECT_EQ((*latest)->yaml, "v2");
  auto missing = store_->GetPolicySet(3);
  ASSERT_OK(missing);
  EXPECT_FALSE(missing->has_value());
}

TEST_P(StoreTest, ListChangesAreMaterialisedAndUndone) {
  auto change = [&](Txn& txn, std::string payload) {
    Change c;
    c.kind = ChangeKind::kList;
    c.actor = "k_admin";
    c.payload = std::move(payload);
    return txn.Append(std::move(c), nullptr);
  };
  auto txn = Begin();
  auto first = change(*txn, R"({"list":"vip","add":["user:b","user:a"],"protected":true})");
  ASSERT_OK(first);
  EXPECT_EQ(first->subject, "vip");
  ASSERT_OK(change(*txn, R"({"list":"watch","add":["ip:10.0.0.1"],"kind":"ip"})"));
  EXPECT_EQ(change(*txn, R"({"list":"vip","add":["nonsense"]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(change(*txn, R"({"add":["user:c"]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(txn->NextSeq(), 3);
  auto has = txn->ListHas("vip", E("user:a"));
  ASSERT_OK(has);
  EXPECT_TRUE(*has);

  ASSERT_OK(V(txn->Savepoint()));
  ASSERT_OK(
      change(*txn, R"({"list":"vip","add":["user:c"],"remove":["user:a"],"protected":false})"));
  ASSERT_OK(change(*txn, R"({"list":"new","add":["user:z"]})"));
  has = txn->ListHas("vip", E("user:a"));
  ASSERT_OK(has);
  EXPECT_FALSE(*has);
  ASSERT_OK(V(txn->RollbackToSavepoint()));
  ASSERT_OK(change(*txn, R"({"list":"watch","remove":["ip:10.0.0.1","ip:10.0.0.2"]})"));
  ASSERT_OK(V(txn->Commit()));

  auto lists = store_->Lists();
  ASSERT_OK(lists);
  ASSERT_THAT(*lists, SizeIs(2));
  EXPECT_EQ((*lists)[0].name, "vip");
  EXPECT_TRUE((*lists)[0].is_protected);
  EXPECT_EQ((*lists)[1].name, "watch");
  EXPECT_FALSE((*lists)[1].is_protected);
  EXPECT_EQ((*lists)[1].kind, "ip");
  auto vip = store_->ListEntries("vip");
  ASSERT_OK(vip);
  EXPECT_THAT(*vip, ElementsAre("user:a", "user:b"));
  auto watch = store_->ListEntries("watch");
  ASSERT_OK(watch);
  EXPECT_THAT(*watch, IsEmpty());
  std::vector<std::string> all;
  auto seq = store_->ScanListEntries([&](std::string_view list, std::string_view entity) {
    all.push_back(absl::StrCat(AV(list), " ", AV(entity)));
    return absl::OkStatus();
  });
  ASSERT_OK(seq);
  EXPECT_EQ(*seq, 3);
  EXPECT_THAT(all, ElementsAre("vip user:a", "vip user:b"));
}

// SPEC: a cidr: id matches every ip: inside it. ListHas (what a policy's in_list() reads
// inside the transaction) answers so, for both families, without crossing them; a cidr:
// is on a list holding it or a wider network, not one holding a narrower one or an ip.
TEST_P(StoreTest, ListHasCoversAddressesInsideListedNetworks) {
  auto list = [&](Txn& txn, std::string payload) {
    Change c;
    c.kind = ChangeKind::kList;
    c.actor = "k_admin";
    c.payload = std::move(payload);
    return txn.Append(std::move(c), nullptr).status();
  };
  auto has = [](Txn& txn, std::string_view name, std::string_view entity) {
    auto h = txn.ListHas(name, E(entity));
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() && *h;
  };
  auto txn = Begin();
  ASSERT_OK(V(list(*txn, R"({"list":"vpn","add":["cidr:10.0.0.0/8","cidr:2001:db8::/32",)"
                         R"("cidr:192.0.2.128/25","ip:198.51.100.7","user:u"]})")));
  ASSERT_OK(V(list(*txn, R"({"list":"users","add":["user:a"]})")));
  EXPECT_TRUE(has(*txn, "vpn", "ip:10.1.2.3"));
  EXPECT_TRUE(has(*txn, "vpn", "ip:10.0.0.0"));
  EXPECT_TRUE(has(*txn, "vpn", "ip:10.255.255.255"));
  EXPECT_TRUE(has(*txn, "vpn", "ip:192.0.2.200"));
  EXPECT_TRUE(has(*txn, "vpn", "ip:2001:db8:ffff::1"));
  EXPECT_TRUE(has(*txn, "vpn", "ip:198.51.100.7"));  // exactly
  EXPECT_TRUE(has(*txn, "vpn", "user:u"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:11.0.0.1"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:192.0.2.127"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:2001:db9::1"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:198.51.100.8"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:::a00:1"));  // 10.0.0.1's bits, but IPv6
  EXPECT_FALSE(has(*txn, "users", "ip:10.1.2.3"));
  EXPECT_FALSE(has(*txn, "nope", "ip:10.1.2.3"));
  // Networks: on the list if one of its networks holds them whole.
  EXPECT_TRUE(has(*txn, "vpn", "cidr:10.0.0.0/8"));
  EXPECT_TRUE(has(*txn, "vpn", "cidr:10.20.0.0/16"));
  EXPECT_TRUE(has(*txn, "vpn", "cidr:2001:db8:1::/48"));
  EXPECT_FALSE(has(*txn, "vpn", "cidr:0.0.0.0/0"));
  EXPECT_FALSE(has(*txn, "vpn", "cidr:192.0.2.0/24"));     // wider than the /25
  EXPECT_FALSE(has(*txn, "vpn", "cidr:198.51.100.0/24"));  // over a listed ip only
  // Removed, and seen within the same transaction.
  ASSERT_OK(V(list(*txn, R"({"list":"vpn","remove":["cidr:10.0.0.0/8"]})")));
  EXPECT_FALSE(has(*txn, "vpn", "ip:10.1.2.3"));
  ASSERT_OK(V(txn->Commit()));
  txn = Begin();
  EXPECT_TRUE(has(*txn, "vpn", "ip:2001:db8::5"));
  EXPECT_FALSE(has(*txn, "vpn", "ip:10.1.2.3"));
  txn->Rollback();
}

TEST_P(StoreTest, RollbackAndOneTxnAtATime) {
  {
    auto txn = Begin();
    Note(*txn, "x");
    EXPECT_EQ(store_->Begin(kT0).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(txn->NextSeq(), 2);
    // Destroyed without Commit: rolled back.
  }
  auto last = store_->LastSeq();
  ASSERT_OK(last);
  EXPECT_EQ(*last, 0);
  auto txn = Begin();
  EXPECT_EQ(txn->NextSeq(), 1);
  txn->Rollback();
  EXPECT_EQ(txn->Commit().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(StoreTest, ReopenKeepsEverythingAndChainsOn) {
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  Change first = Put(&m);
  ASSERT_OK(
      V(store_->CreateKey({.id = "k_1", .secret_hash = "h", .role = "admin", .created_at = kT0})));
  store_.reset();

  for (int round = 0; round < 3; ++round) {  // migrations are idempotent on re-open
    auto reopened = backend_->Open();
    ASSERT_OK(reopened);
    store_ = *std::move(reopened);
    auto got = store_->GetMitigation(m.id);
    ASSERT_OK(got);
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ(**got, m);
    auto keys = store_->ListKeys();
    ASSERT_OK(keys);
    EXPECT_THAT(*keys, SizeIs(1));
    auto read = store_->ReadChanges(0, 10);
    ASSERT_OK(read);
    ASSERT_THAT(*read, SizeIs(1));
    EXPECT_EQ((*read)[0].hash, first.hash);
    store_.reset();
  }
  store_ = *backend_->Open();
  auto txn = Begin();
  Change next = Note(*txn, "after restart");
  ASSERT_OK(V(txn->Commit()));
  EXPECT_EQ(next.seq, 2);
  EXPECT_EQ(next.prev_hash, first.hash);
}

TEST_P(StoreTest, SecondWriterOnSameDataChainsOntoTheHeadNeverForks) {
  auto other = backend_->Open();  // e.g. a CLI process writing the same data
  ASSERT_OK(other);
  auto txn = Begin();
  Change a = Note(*txn, "from A");
  ASSERT_OK(V(txn->Commit()));
  txn.reset();
  auto txn2 = (*other)->Begin(kT0);
  ASSERT_OK(txn2);
  EXPECT_EQ((*txn2)->NextSeq(), 2);
  Change b = Note(**txn2, "from B");
  ASSERT_OK(V((*txn2)->Commit()));
  EXPECT_EQ(b.prev_hash, a.hash);
  txn = Begin();
  EXPECT_EQ(txn->NextSeq(), 3);
  Change c = Note(*txn, "from A again");
  ASSERT_OK(V(txn->Commit()));
  EXPECT_EQ(c.prev_hash, b.hash);
}

TEST_P(StoreTest, RefusesNewerSchema) {
  store_.reset();
  ASSERT_OK(V(backend_->RecordNewerSchema()));
  auto s = backend_->Open();
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::ValuesIn(testing::AllBackends()),
                         [](const auto& info) { return info.param.name; });

// ---- SQLite specifics ----

// `--data DIR/quell.db` (the file, not its directory) said "no ledger in DIR/quell.db (no
// quell.db)" of the ledger it named.
TEST(SqliteStore, CheckSqliteLedgerNamesAFileGivenForTheDirectory) {
  const std::string dir = ::testing::TempDir() + "/check_ledger_" + core::RandomHex(6);
  ASSERT_TRUE(OpenSqliteStore({.path = dir}).ok());
  EXPECT_TRUE(CheckSqliteLedger(dir).ok());
  absl::Status file = CheckSqliteLedger(dir + "/quell.db");
  EXPECT_EQ(file.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(file.message(), absl::StrCat(dir,
                                         "/quell.db is a file: --data takes the data "
                                         "directory (the one that holds quell.db)"));
  absl::Status none = CheckSqliteLedger(dir + "/nothing");
  EXPECT_EQ(none.message(),
            absl::StrCat("no ledger in ", dir, "/nothing (no quell.db): check --data"));
  std::filesystem::remove_all(dir);
}

TEST(SqliteStore, WalAndSynchronousAreReallySet) {
  testing::SqliteTestBackend backend;
  auto store = backend.Open();
  ASSERT_OK(store);
  auto mode = SqlitePragmaForTest(**store, "journal_mode");
  ASSERT_OK(mode);
  EXPECT_EQ(*mode, "wal");
  // FULL: the write connection runs at NORMAL and the store syncs the WAL itself, on
  // Commit() and, after CommitVisible(), on SyncCommitted().
  auto sync = SqlitePragmaForTest(**store, "synchronous");
  ASSERT_OK(sync);
  EXPECT_EQ(*sync, "1");
  auto syncs = [&](Store& s) {
    auto n = SqliteWalSyncsForTest(s);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : -1;
  };
  auto note = [](Store& s, std::string_view what) -> absl::StatusOr<std::unique_ptr<Txn>> {
    QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Txn> txn, s.Begin(absl::Now()));
    Change c;
    c.kind = ChangeKind::kReview;  // a kind the store does not materialise
    c.actor = "test";
    c.subject = std::string(what);
    c.payload = R"({"note":"x"})";
    QUELL_RETURN_IF_ERROR(txn->Append(std::move(c), nullptr).status());
    return txn;
  };
  const int64_t before = syncs(**store);
  auto txn = note(**store, "durable");
  ASSERT_OK(txn);
  ASSERT_OK(V((*txn)->Commit()));
  EXPECT_EQ(syncs(**store), before + 1);
  txn = note(**store, "visible first");
  ASSERT_OK(txn);
  ASSERT_OK(V((*txn)->CommitVisible()));
  EXPECT_EQ(syncs(**store), before + 1);
  ASSERT_OK(V((*store)->SyncCommitted()));
  EXPECT_EQ(syncs(**store), before + 2);
  txn->reset();
  store->reset();

  auto normal = OpenSqliteStore({.path = backend.dir().string(), .synchronous_full = false});
  ASSERT_OK(normal);
  sync = SqlitePragmaForTest(**normal, "synchronous");
  ASSERT_OK(sync);
  EXPECT_EQ(*sync, "1");  // NORMAL
  auto txn2 = note(**normal, "not synced");
  ASSERT_OK(txn2);
  ASSERT_OK(V((*txn2)->Commit()));
  ASSERT_OK(V((*normal)->SyncCommitted()));
  EXPECT_EQ(syncs(**normal), 0);
  txn2->reset();
  auto busy = SqlitePragmaForTest(**normal, "busy_timeout");
  ASSERT_OK(busy);
  EXPECT_EQ(*busy, "5000");
}

// The first row `sql` returns, as text, read by a plain SQLite (the default VFS) opening
// `file` read-write, so that it recovers a WAL left behind; empty if anything fails.
std::vector<std::string> PlainSqliteRow(const std::string& file, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_stmt* st = nullptr;
  std::vector<std::string> row;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(st); ++i) {
      const unsigned char* text = sqlite3_column_text(st, i);
      row.emplace_back(text == nullptr ? "" : reinterpret_cast<const char*>(text));
    }
  }
  sqlite3_finalize(st);
  sqlite3_close_v2(db);
  return row;
}

// A commit's WAL frames go out in large writes (sqlite/internal/wal_vfs.h) before the
// commit publishes them: another connection reads a commit larger than the buffer (one
// that spills, so SQLite rewrites frame headers) at once, and a copy of the files taken
// as a crash would leave them recovers every commit from the WAL alone.
TEST(SqliteStore, WalFramesOfACommitGoOutTogetherBeforeTheyArePublished) {
  if (sqlite_internal::WalBufferingVfs() == nullptr) GTEST_SKIP() << "SQLite version unchecked";
  testing::SqliteTestBackend backend;
  // No checkpoint at all: the commits stay in the WAL.
  auto store = OpenSqliteStore({.path = backend.dir().string(), .checkpoint_pages = 1 << 20});
  ASSERT_OK(store);
  const int64_t flushes = sqlite_internal::WalCommitFlushesForTest();
  // ~20 MiB of pages: past the buffer and the page cache.
  const std::vector<StoredDetection> rows = BulkDetections("big-", 5000, 2000);
  {
    auto txn = (*store)->Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(V((*txn)->PutDetections(rows)));
    ASSERT_OK(V((*txn)->Commit()));
  }
  EXPECT_EQ(sqlite_internal::WalCommitFlushesForTest() - flushes, 1);
  // The files as a crash would leave them now (the store still open), recovered by a
  // plain SQLite: WAL recovery checks every frame's checksum chain up to the last commit.
  auto recovered = [&](const std::string& name) {
    const std::filesystem::path copy = backend.dir() / name;
    std::filesystem::create_directories(copy);
    for (const char* suffix : {"", "-wal"}) {
      const std::string file = std::string(kSqliteFileName) + suffix;
      std::filesystem::copy_file(backend.dir() / file, copy / file);
    }
    return PlainSqliteRow((copy / std::string(kSqliteFileName)).string(),
                          "SELECT (SELECT count(*) FROM detections WHERE id LIKE 'big-%'), "
                          "(SELECT sum(length(json)) FROM detections WHERE id LIKE 'big-%'), "
                          "(SELECT count(*) FROM mitigations)");
  };
  EXPECT_THAT(recovered("after-first"), ElementsAre("5000", "10000000", "0"));
  for (size_t i : {size_t{0}, size_t{2500}, rows.size() - 1}) {  // a pooled connection
    auto got = (*store)->GetDetection("bot-model", rows[i].id);
    ASSERT_OK(got);
    ASSERT_TRUE(got->has_value()) << rows[i].id;
    EXPECT_EQ((*got)->json, rows[i].json);
  }
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  {
    auto txn = (*store)->Begin(kT0);
    ASSERT_OK(txn);
    m.seq = (*txn)->NextSeq();
    ASSERT_OK((*txn)->Append(Change{.kind = ChangeKind::kMitigation, .actor = "k"}, &m));
    ASSERT_OK(V((*txn)->Commit()));
  }
  EXPECT_EQ(sqlite_internal::WalCommitFlushesForTest() - flushes, 2);
  auto read = (*store)->GetMitigation(m.id);
  ASSERT_OK(read);
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, m);

  EXPECT_THAT(recovered("after-second"), ElementsAre("5000", "10000000", "1"));
}

// Frames a transaction spilled and then rolled back may still be in its connection's
// buffer: they must never reach the file, where another writer's commit now lies.
TEST(SqliteStore, RolledBackSpillNeverOverwritesAnotherWritersCommit) {
  if (sqlite_internal::WalBufferingVfs() == nullptr) GTEST_SKIP() << "SQLite version unchecked";
  testing::SqliteTestBackend backend;
  const SqliteOptions o{.path = backend.dir().string(), .checkpoint_pages = 1 << 20};
  auto a = OpenSqliteStore(o);
  ASSERT_OK(a);
  auto b = OpenSqliteStore(o);  // another writer of the same file (a CLI process)
  ASSERT_OK(b);
  // An empty WAL: the rollback then reads its pages from the database file, not the
  // WAL, so what the spill left buffered is still there when the write lock is released.
  ASSERT_OK(SqlitePragmaForTest(**a, "wal_checkpoint(TRUNCATE)"));
  const int64_t dropped = sqlite_internal::WalDroppedBytesForTest();
  {
    auto txn = (*a)->Begin(kT0);
    ASSERT_OK(txn);
    // ~18 MiB: spills a little past the 16 MiB page cache.
    ASSERT_OK(V((*txn)->PutDetections(BulkDetections("spill-", 4400, 4000, 's'))));
    (*txn)->Rollback();
  }
  // The case this is about: spilled frames were still buffered at the rollback.
  ASSERT_GT(sqlite_internal::WalDroppedBytesForTest() - dropped, 0);
  // ~8 MiB over the frames A spilled.
  const std::vector<StoredDetection> theirs = BulkDetections("b-", 2000, 3000);
  {
    auto txn = (*b)->Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(V((*txn)->PutDetections(theirs)));
    ASSERT_OK(V((*txn)->Commit()));
  }
  {  // A writes again: its connection reads the WAL (and would flush anything it kept)
    auto txn = (*a)->Begin(kT0);
    ASSERT_OK(txn);
    for (const StoredDetection& d : {theirs.front(), theirs.back()}) {
      auto got = (*txn)->GetDetection(d.source, d.id);
      ASSERT_OK(got);
      ASSERT_TRUE(got->has_value()) << d.id;
      EXPECT_EQ((*got)->json, d.json);
    }
    ASSERT_OK(V((*txn)->PutDetection(MakeDetection("bot-model", "a-after", kT0, kT0))));
    ASSERT_OK(V((*txn)->Commit()));
  }
  const std::string file = (backend.dir() / std::string(kSqliteFileName)).string();
  EXPECT_THAT(PlainSqliteRow(file,
                             "SELECT count(*), sum(length(json)), "
                             "(SELECT count(*) FROM detections WHERE id LIKE 'spill-%') "
                             "FROM detections WHERE id LIKE 'b-%'"),
              ElementsAre("2000", "6000000", "0"));
  EXPECT_THAT(PlainSqliteRow(file, "PRAGMA integrity_check"), ElementsAre("ok"));
}

// With synchronous=FULL on a device without power-safe overwrite, SQLite pads a commit
// to a sector boundary with copies of its last frame, splitting one write around a sync:
// all of it is on file when the commit is published.
TEST(SqliteStore, WalPaddingAfterACommitIsWrittenBeforeItIsPublished) {
  const char* vfs = sqlite_internal::WalBufferingVfs();
  if (vfs == nullptr) GTEST_SKIP() << "SQLite version unchecked";
  testing::SqliteTestBackend backend;
  std::filesystem::create_directories(backend.dir());
  const std::string file = (backend.dir() / "padded.db").string();
  sqlite3* w = nullptr;
  ASSERT_EQ(sqlite3_open_v2(absl::StrCat("file:", file, "?psow=0").c_str(), &w,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, vfs),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(w,
                         "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                         "PRAGMA wal_autocheckpoint=0; CREATE TABLE t (k INTEGER, v TEXT);",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  int64_t rows = 0;
  for (int round = 1; round <= 5; ++round) {
    ASSERT_EQ(sqlite3_exec(
                  w,
                  absl::StrCat("BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                               "SELECT x + 1 FROM c WHERE x < ",
                               37 * round, ") INSERT INTO t SELECT x, printf('%.*c', 900, '",
                               std::string(1, static_cast<char>('a' + round)), "') FROM c; COMMIT;")
                      .c_str(),
                  nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(w);
    rows += 37 * round;
    EXPECT_THAT(PlainSqliteRow(file, "SELECT count(*), sum(length(v)) FROM t"),
                ElementsAre(absl::StrCat(rows), absl::StrCat(rows * 900)));
  }
  sqlite3_close_v2(w);
}

// The WAL is copied into the database file by the background checkpointer: the writer
// alone (below its backstop) never would. Seen from a copy of the file without its WAL.
TEST(SqliteStore, CheckpointsRunOffTheWriter) {
  testing::SqliteTestBackend backend;
  SqliteOptions o;
  o.path = backend.dir().string();
  o.checkpoint_pages = 8;
  auto store = OpenSqliteStore(o);
  ASSERT_OK(store);
  for (int t = 0; t < 6; ++t) {
    auto txn = (*store)->Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(V((*txn)->PutDetections(BulkDetections(absl::StrCat("w", t, "-"), 40, 1000, 'x'))));
    ASSERT_OK(V((*txn)->Commit()));
  }
  // Waits for the thread (no timing is asserted: the loop ends when it has run).
  int64_t runs = 0;
  for (int i = 0; i < 6000 && runs == 0; ++i) {
    auto r = SqliteCheckpointRunsForTest(**store);
    ASSERT_OK(r);
    runs = *r;
    if (runs == 0) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GT(runs, 0);
  // A copy taken while a later checkpoint is still writing may be torn: take another.
  int64_t in_file = -1;
  for (int attempt = 0; attempt < 100 && in_file <= 0; ++attempt) {
    const std::filesystem::path copy = backend.dir() / absl::StrCat("copy", attempt);
    std::filesystem::create_directories(copy);
    std::filesystem::copy_file(backend.dir() / std::string(kSqliteFileName),
                               copy / std::string(kSqliteFileName));
    const std::vector<std::string> row = PlainSqliteRow(
        (copy / std::string(kSqliteFileName)).string(), "SELECT count(*) FROM detections");
    if (row.size() == 1) in_file = std::stoll(row[0]);
    if (in_file <= 0) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GT(in_file, 0);
  // Everything is still there through the store.
  auto got = (*store)->GetDetection("bot-model", "w5-39");
  ASSERT_OK(got);
  EXPECT_TRUE(got->has_value());
}

TEST(SqliteStore, MigrationsRecordTheirVersionOnce) {
  testing::SqliteTestBackend backend;
  for (int i = 0; i < 3; ++i) {
    auto store = backend.Open();
    ASSERT_OK(store);
  }
  // A duplicate version row would violate the primary key; count them to be sure.
  ASSERT_OK(V(backend.ExecRaw(
      "CREATE TABLE probe AS SELECT COUNT(*) AS n, MAX(version) AS v FROM schema_version")));
  auto store = backend.Open();
  ASSERT_OK(store);
  ASSERT_OK(V(backend.ExecRaw(
      absl::StrCat("SELECT CASE WHEN (SELECT n FROM probe) = ", SqliteSchemaVersion(),
                   " AND (SELECT v FROM probe) = ", SqliteSchemaVersion(),
                   " THEN 1 ELSE abs(-9223372036854775807 - 1) END"))));
}

// The compact row form is what is written: a reply without decisions as '', a JSON that
// starts with its own columns' head as the BLOB of the rest; other rows as they are.
TEST(SqliteStore, CompactDetectionRowsAreWritten) {
  testing::SqliteTestBackend backend;
  {
    auto store = backend.Open();
    ASSERT_OK(store);
    StoredDetection quiet = MakeDetection("bot-model", "q", kT0, kT0);
    quiet.reply = NoDecisionReply(quiet.source, quiet.id);
    quiet.json.clear();
    AppendDetectionJsonHead(quiet.id, quiet.source, quiet.type, quiet.entity, quiet.score,
                            quiet.observed_at, &quiet.json);
    quiet.json_head_bytes = quiet.json.size();
    quiet.json.append(",\"evidence\":{},\"related\":[]}");
    StoredDetection whole = MakeDetection("bot-model", "w", kT0, kT0);  // other JSON, a reply
    auto txn = (*store)->Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(V((*txn)->PutDetections({quiet, whole})));
    ASSERT_OK(V((*txn)->Commit()));
    txn->reset();
    for (const StoredDetection& d : {quiet, whole}) {
      auto got = (*store)->GetDetection(d.source, d.id);
      ASSERT_OK(got);
      ASSERT_TRUE(got->has_value());
      EXPECT_EQ(**got, d);
    }
  }
  ASSERT_OK(V(backend.ExecRaw(
      "SELECT CASE WHEN (SELECT reply = '' AND typeof(json) = 'blob' FROM detections "
      "WHERE id = 'q') AND (SELECT reply <> '' AND typeof(json) = 'text' FROM detections "
      "WHERE id = 'w') THEN 1 ELSE abs(-9223372036854775807 - 1) END")));
}

TEST(SqliteStore, OutOfDateFileNeedsMigrateWhenNotApplying) {
  testing::SqliteTestBackend backend;
  auto store = OpenSqliteStore({.path = backend.dir().string(), .apply_migrations = false});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_OK(backend.Open());
  EXPECT_OK(OpenSqliteStore({.path = backend.dir().string(), .apply_migrations = false}));
}

// Entity reads done ahead (PrefetchEntities, as quell import --data does off the commit
// thread) are used only when nothing can have changed the entity since they were read:
// each case below would read a stale entity if the prefetch were taken. Without the
// entity cache (as the direct import runs), so that every read reaches the prefetch.
TEST(SqliteStore, EntityReadsDoneAheadAreUsedOnlyIfNothingWroteTheEntitySince) {
  testing::SqliteTestBackend backend;
  auto opened = OpenSqliteStore({.path = backend.dir().string(), .entity_cache_bytes = 0});
  ASSERT_OK(opened);
  Store& store = **opened;
  using S = core::MitigationState;
  const core::Entity u1 = E("user:u1");
  auto append = [](Txn& txn, core::Mitigation* m) {
    m->seq = txn.NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = "k_test";
    return txn.Append(std::move(c), m).status();
  };
  auto put = [&](core::Mitigation* m) {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    ASSERT_OK(V(append(**txn, m)));
    ASSERT_OK(V((*txn)->Commit()));
  };
  auto read = [&](Txn& txn, absl::Time since) {
    auto got = txn.EntityMitigations(u1, since);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : std::vector<core::Mitigation>{};
  };
  auto taken = [&] {
    auto n = SqlitePrefetchTakenForTest(store);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : -1;
  };
  core::Mitigation m = MakeMitigation(1, "user:u1", "block");
  put(&m);

  // Nothing wrote u1 since: the read done ahead answers.
  store.PrefetchEntities({{u1, kT0}});
  {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    EXPECT_THAT(read(**txn, kT0), ElementsAre(m));
    EXPECT_EQ(taken(), 1);
  }
  // Written and committed after the read ahead.
  store.PrefetchEntities({{u1, kT0}});
  m.expires_at += absl::Hours(1);
  put(&m);
  {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    EXPECT_THAT(read(**txn, kT0), ElementsAre(m));
  }
  // Written by the open Txn, before and after the read ahead (which sees committed data).
  store.PrefetchEntities({{u1, kT0}});
  {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    core::Mitigation extended = m;
    extended.expires_at += absl::Hours(2);
    ASSERT_OK(V(append(**txn, &extended)));
    EXPECT_THAT(read(**txn, kT0), ElementsAre(extended));
    store.PrefetchEntities({{u1, kT0}});
    EXPECT_THAT(read(**txn, kT0), ElementsAre(extended));
    (*txn)->Rollback();
  }
  // Read ahead for the live ones only: a read reaching back further is not answered by it.
  core::Mitigation revoked = MakeMitigation(2, "user:u1", "flag", S::kRevoked);
  put(&revoked);
  store.PrefetchEntities({{u1, absl::InfiniteFuture()}});
  {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    EXPECT_THAT(read(**txn, kT0), UnorderedElementsAre(m, revoked));
  }
  // Another writer (a CLI process) changed u1 after the read ahead.
  store.PrefetchEntities({{u1, kT0}});
  {
    auto other = backend.Open();
    ASSERT_OK(other);
    auto txn = (*other)->Begin(kT0);
    ASSERT_OK(txn);
    m.state = S::kRevoked;
    ASSERT_OK(V(append(**txn, &m)));
    ASSERT_OK(V((*txn)->Commit()));
  }
  {
    auto txn = store.Begin(kT0);
    ASSERT_OK(txn);
    EXPECT_THAT(read(**txn, kT0), UnorderedElementsAre(m, revoked));
  }
  EXPECT_EQ(taken(), 1);  // only the first
}

// The same random operations on two stores, one reading entities ahead (before and during
// its transactions) and one never: every read inside a Txn agrees. Writes to a few
// entities in every state, nested savepoints rolled back or released (seqs reused), Txns
// rolled back, committed or committed visible then synced, and now and then another
// process writing both files.
void ReadAheadAgrees(uint32_t seed, size_t entity_cache_bytes, int64_t* taken) {
  testing::SqliteTestBackend backend_a, backend_b;
  auto opened_a =
      OpenSqliteStore({.path = backend_a.dir().string(), .entity_cache_bytes = entity_cache_bytes});
  auto opened_b = OpenSqliteStore({.path = backend_b.dir().string(), .entity_cache_bytes = 0});
  ASSERT_OK(opened_a);
  ASSERT_OK(opened_b);
  Store& a = **opened_a;
  Store& b = **opened_b;
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  const std::vector<std::string> entities = {"user:a", "user:b", "user:c", "user:d"};
  using S = core::MitigationState;
  const S states[] = {S::kActive,          S::kRevoked,   S::kExpired,
                      S::kPendingApproval, S::kScheduled, S::kShadow};
  auto since = [&] {
    return pick(4) == 0 ? absl::InfiniteFuture()
                        : kT0 + absl::Milliseconds(pick(20000)) + absl::Nanoseconds(pick(1000));
  };
  auto by_id = [](std::vector<core::Mitigation> v) {
    std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.id < y.id; });
    return v;
  };
  auto read_ahead = [&](bool all) {
    std::vector<EntityRead> reads;
    for (const std::string& e : entities) {
      if (all || pick(2)) reads.push_back({E(e), since()});
    }
    a.PrefetchEntities(reads);
  };
  std::vector<std::string> ids;
  int n = 0;
  auto write = [&](Txn& ta, Txn& tb) {  // one mitigation write, the same on both
    core::Mitigation m;
    if (ids.empty() || pick(3) == 0) {
      m = MakeMitigation(++n, entities[pick(4)], pick(2) ? "block" : "flag", states[pick(6)]);
      m.created_at = kT0 + absl::Milliseconds(pick(20000)) + absl::Microseconds(pick(1000));
      m.id = absl::StrCat("m_", seed, "_", n);
    } else {
      auto current = tb.GetMitigation(ids[pick(static_cast<int>(ids.size()))]);
      if (!current.ok() || !current->has_value()) return;  // rolled back since
      m = **current;
      m.state = states[pick(6)];
      m.expires_at += absl::Seconds(1);
    }
    ASSERT_EQ(ta.NextSeq(), tb.NextSeq());
    m.seq = ta.NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = "k_test";
    auto ra = ta.Append(c, &m);
    auto rb = tb.Append(c, &m);
    ASSERT_EQ(ra.ok(), rb.ok()) << ra.status() << " / " << rb.status();
    ids.push_back(m.id);
  };
  for (int round = 0; round < 200; ++round) {
    for (int k = pick(3); k > 0; --k) read_ahead(false);
    if (pick(8) == 0) {  // another process
      auto other_a = backend_a.Open();
      auto other_b = backend_b.Open();
      ASSERT_OK(other_a);
      ASSERT_OK(other_b);
      auto ta = (*other_a)->Begin(kT0);
      auto tb = (*other_b)->Begin(kT0);
      ASSERT_OK(ta);
      ASSERT_OK(tb);
      write(**ta, **tb);
      ASSERT_OK(V((*ta)->Commit()));
      ASSERT_OK(V((*tb)->Commit()));
    }
    auto ta = a.Begin(kT0);
    auto tb = b.Begin(kT0);
    ASSERT_OK(ta);
    ASSERT_OK(tb);
    int savepoints = 0;
    for (int op = pick(12); op > 0; --op) {
      switch (pick(7)) {
        case 0:
        case 1:
          write(**ta, **tb);
          break;
        case 2:
          ASSERT_OK(V((*ta)->Savepoint()));
          ASSERT_OK(V((*tb)->Savepoint()));
          ++savepoints;
          break;
        case 3:
        case 4:
          if (savepoints > 0) {
            const bool undo = pick(2) == 0;
            ASSERT_OK(V(undo ? (*ta)->RollbackToSavepoint() : (*ta)->ReleaseSavepoint()));
            ASSERT_OK(V(undo ? (*tb)->RollbackToSavepoint() : (*tb)->ReleaseSavepoint()));
            --savepoints;
          }
          break;
        case 5:
          read_ahead(true);  // while the Txn is open: it sees committed data only
          break;
        default: {
          const core::Entity e = E(entities[pick(4)]);
          const absl::Time from = since();
          auto ra = (*ta)->EntityMitigations(e, from);
          auto rb = (*tb)->EntityMitigations(e, from);
          ASSERT_OK(ra);
          ASSERT_OK(rb);
          ASSERT_EQ(by_id(*ra), by_id(*rb))
              << "seed " << seed << " round " << round << " " << e.str() << " since " << from;
        }
      }
    }
    switch (pick(3)) {
      case 0:
        (*ta)->Rollback();
        (*tb)->Rollback();
        break;
      case 1:
        ASSERT_OK(V((*ta)->CommitVisible()));
        ASSERT_OK(V((*tb)->CommitVisible()));
        ASSERT_OK(V(a.SyncCommitted()));
        ASSERT_OK(V(b.SyncCommitted()));
        break;
      default:
        ASSERT_OK(V((*ta)->Commit()));
        ASSERT_OK(V((*tb)->Commit()));
    }
  }
  auto used = SqlitePrefetchTakenForTest(a);
  ASSERT_OK(used);
  *taken += *used;
}

TEST(SqliteStore, EntityReadsDoneAheadNeverChangeWhatATxnReads) {
  for (size_t cache : {size_t{0}, size_t{1} << 20}) {
    int64_t taken = 0;
    for (uint32_t seed = 1; seed <= 8; ++seed) {
      ReadAheadAgrees(seed, cache, &taken);
      if (HasFatalFailure()) return;
    }
    EXPECT_GT(taken, 0) << "cache " << cache << ": no read done ahead was used";
  }
}

TEST(SqliteStore, UnusableDirectoryIsAnError) {
  auto store = OpenSqliteStore({.path = "/proc/quell-cannot-create-this"});
  EXPECT_FALSE(store.ok());
  EXPECT_EQ(OpenSqliteStore({}).status().code(), absl::StatusCode::kInvalidArgument);
  // A file that opens but cannot be used (here: not a database; an immutable directory
  // fails at the same first statement) is named: SQLite's own message does not say which.
  const std::string dir = ::testing::TempDir() + "/unopenable_" + core::RandomHex(6);
  std::filesystem::create_directories(dir);
  std::ofstream(std::filesystem::path(dir) / kSqliteFileName) << std::string(8192, 'x');
  auto unopenable = OpenSqliteStore({.path = dir});
  ASSERT_FALSE(unopenable.ok());
  EXPECT_NE(unopenable.status().message().find(dir + "/quell.db: "), absl::string_view::npos)
      << unopenable.status();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace quell::ledger
