#include "api/server_metrics.h"

#include <unistd.h>

#include <filesystem>

#include "core/ids.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/appeals.h"
#include "workflow/mitigations.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::api {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

ledger::Change MitigationChange(const std::string& id, core::MitigationState state, absl::Time at,
                                const std::string& reason = "r") {
  core::Mitigation m;
  m.id = id;
  m.entity = *core::Entity::Parse("user:a");
  m.action = "block";
  m.state = state;
  m.reason = reason;
  m.created_at = m.updated_at = m.starts_at = at;
  m.expires_at = at + absl::Hours(1);
  ledger::Change c;
  c.kind = ledger::ChangeKind::kMitigation;
  c.subject = id;
  c.at = at;
  c.payload = core::MitigationToJson(m);
  return c;
}

// A ledger on a fresh SQLite data directory, removed with it (however the test ends).
class TempLedger {
 public:
  TempLedger(const std::string& name, core::Clock* clock)
      : dir_(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()))) {
    std::filesystem::remove_all(dir_);
    auto store = ledger::OpenSqliteStore({.path = dir_.string()});
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return;
    auto opened = ledger::Ledger::Open(*std::move(store), {}, clock);
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (opened.ok()) ledger_ = *std::move(opened);
  }
  ~TempLedger() {
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }
  ledger::Ledger* get() const { return ledger_.get(); }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<ledger::Ledger> ledger_;
};

// Appends a manual block of `entity` in `state`, created at `created`; its id in *id.
absl::Status AppendBlock(ledger::Txn& txn, const std::string& entity, core::MitigationState state,
                         absl::Time created, absl::Time now, std::string* id = nullptr) {
  core::Mitigation m;
  m.id = core::NewId("m_", now);
  QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(entity));
  m.action = "block";
  m.state = state;
  m.created_at = m.starts_at = created;
  m.expires_at = now + absl::Hours(100);
  m.source = "manual";
  if (id != nullptr) *id = m.id;
  return workflow::AppendMitigationChange(txn, m, "k_a", now).status();
}

TEST(ServerMetricsTest, PendingApprovalIsReadFromTheTopLevelStateOnly) {
  using core::MitigationState;
  EXPECT_TRUE(PayloadIsPendingApproval(
      MitigationChange("m_1", MitigationState::kPendingApproval, kT0).payload));
  EXPECT_FALSE(
      PayloadIsPendingApproval(MitigationChange("m_1", MitigationState::kActive, kT0).payload));
  // Text that looks like the field, inside a value, is escaped and does not count.
  EXPECT_FALSE(PayloadIsPendingApproval(
      MitigationChange("m_1", MitigationState::kActive, kT0, "\"state\":\"pending_approval\"")
          .payload));
  EXPECT_FALSE(PayloadIsPendingApproval("{}"));
}

constexpr ReviewKind kM = ReviewKind::kMitigation;
constexpr ReviewKind kRb = ReviewKind::kRollback;
constexpr ReviewKind kAp = ReviewKind::kAppeal;
const absl::Duration kTtl = absl::Hours(2);

ledger::Change RollbackChange(const std::string& id, const std::string& state, absl::Time at) {
  ledger::Change c;
  c.kind = ledger::ChangeKind::kReview;
  c.subject = id;
  c.entity = std::string(workflow::kRollbackJournal);
  c.at = at;
  c.payload = "{\"rollback\":\"" + id + "\",\"state\":\"" + state +
              "\",\"filter\":{\"source\":\"bot\"},\"requested_at\":\"" + core::FormatRfc3339(kT0) +
              "\"}";
  return c;
}

ledger::Change AppealChange(const std::string& id, const std::string& state, absl::Time filed,
                            absl::Time at) {
  ledger::Change c;
  c.kind = ledger::ChangeKind::kReview;
  c.subject = id;
  c.entity = "user:a";
  c.at = at;
  c.payload = "{\"appeal\":\"" + id + "\",\"mitigation_id\":\"m_x\",\"state\":\"" + state +
              "\",\"filed_at\":\"" + core::FormatRfc3339(filed) + "\"}";
  return c;
}

TEST(ServerMetricsTest, ReviewKindNamesMatchTheApi) {
  // GET /v1/reviews says kind "mitigation" and "rollback"; appeals are /v1/appeals.
  EXPECT_EQ(ReviewKindName(kM), "mitigation");
  EXPECT_EQ(ReviewKindName(kRb), "rollback");
  EXPECT_EQ(ReviewKindName(kAp), "appeal");
}

TEST(ServerMetricsTest, ReviewQueueFollowsTheChangeStream) {
  using core::MitigationState;
  core::FakeClock clock(kT0 + absl::Minutes(1));
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = kTtl});
  for (ReviewKind k : kReviewKinds) {
    EXPECT_EQ(t.Depth(k), 0);
    EXPECT_FALSE(t.OldestSince(k).has_value());
  }
  t.OnCommitted(
      {MitigationChange("m_1", MitigationState::kPendingApproval, kT0),
       MitigationChange("m_2", MitigationState::kActive, kT0),
       MitigationChange("m_3", MitigationState::kPendingApproval, kT0 + absl::Minutes(5))});
  EXPECT_EQ(t.Depth(kM), 2);
  EXPECT_EQ(t.OldestSince(kM), kT0);
  EXPECT_EQ(t.Depth(kRb), 0);
  EXPECT_EQ(t.Depth(kAp), 0);
  // A first approval of two keeps it pending, and its age (from created_at).
  t.OnCommitted(
      {MitigationChange("m_1", MitigationState::kPendingApproval, kT0 + absl::Minutes(9))});
  EXPECT_EQ(t.OldestSince(kM), kT0);
  // Approved (active), rejected or expired: out of the queue.
  t.OnCommitted({MitigationChange("m_1", MitigationState::kActive, kT0 + absl::Minutes(10))});
  EXPECT_EQ(t.Depth(kM), 1);
  EXPECT_EQ(t.OldestSince(kM), kT0 + absl::Minutes(5));
  ledger::Change other;
  other.kind = ledger::ChangeKind::kPolicySet;
  other.subject = "m_3";
  t.OnCommitted({other});  // not a mitigation change: ignored
  EXPECT_EQ(t.Depth(kM), 1);
  t.OnCommitted({MitigationChange("m_3", MitigationState::kRejected, kT0 + absl::Minutes(20))});
  EXPECT_EQ(t.Depth(kM), 0);
  EXPECT_FALSE(t.OldestSince(kM).has_value());
}

TEST(ServerMetricsTest, RollbackRequestsCountUntilDecidedOrExpired) {
  core::FakeClock clock(kT0 + absl::Minutes(1));
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = kTtl});
  ledger::Change a = RollbackChange("rb_a", "pending_approval", kT0);
  ledger::Change b = RollbackChange("rb_b", "pending_approval", kT0);
  // requested_at of the payload (not the change's time) is what counts.
  b.payload =
      "{\"rollback\":\"rb_b\",\"state\":\"pending_approval\",\"filter\":{\"source\":"
      "\"bot\"},\"requested_at\":\"" +
      core::FormatRfc3339(kT0 + absl::Minutes(30)) + "\"}";
  t.OnCommitted({a, b});
  clock.Set(kT0 + absl::Hours(1));
  EXPECT_EQ(t.Depth(kRb), 2);
  EXPECT_EQ(t.OldestSince(kRb), kT0);
  EXPECT_EQ(t.Depth(kM), 0);
  EXPECT_EQ(t.Depth(kAp), 0);
  // Nothing is written when a request expires: at requested_at + pending_ttl it stops
  // counting all the same.
  clock.Set(kT0 + kTtl - absl::Microseconds(1));
  EXPECT_EQ(t.Depth(kRb), 2);
  clock.Set(kT0 + kTtl);
  EXPECT_EQ(t.Depth(kRb), 1);
  EXPECT_EQ(t.OldestSince(kRb), kT0 + absl::Minutes(30));
  // Decided (done or rejected): out.
  t.OnCommitted({RollbackChange("rb_b", "rejected", kT0 + kTtl)});
  EXPECT_EQ(t.Depth(kRb), 0);
  EXPECT_FALSE(t.OldestSince(kRb).has_value());
  // A malformed rollback payload is ignored.
  ledger::Change junk = RollbackChange("rb_c", "pending_approval", kT0);
  junk.payload = "{\"state\":\"pending_approval\"}";
  t.OnCommitted({junk});
  EXPECT_EQ(t.Depth(kRb), 0);
}

TEST(ServerMetricsTest, PendingApprovalsStopCountingAtPendingTtl) {
  using core::MitigationState;
  core::FakeClock clock(kT0);
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = kTtl});
  t.OnCommitted({MitigationChange("m_1", MitigationState::kPendingApproval, kT0),
                 MitigationChange("m_2", MitigationState::kPendingApproval, kT0 + kTtl / 2)});
  EXPECT_EQ(t.Depth(kM), 2);
  // Past created_at + pending_ttl, before the sweeper writes it expired.
  clock.Set(kT0 + kTtl);
  EXPECT_EQ(t.Depth(kM), 1);
  EXPECT_EQ(t.OldestSince(kM), kT0 + kTtl / 2);
  clock.Set(kT0 + kTtl * 2);
  EXPECT_EQ(t.Depth(kM), 0);
  // The sweeper's change later is harmless.
  t.OnCommitted({MitigationChange("m_1", MitigationState::kExpired, kT0 + kTtl * 2)});
  EXPECT_EQ(t.Depth(kM), 0);
}

TEST(ServerMetricsTest, AppealsCountUntilDecidedAndDoNotExpire) {
  core::FakeClock clock(kT0);
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = kTtl});
  t.OnCommitted({AppealChange("ap_1", "open", kT0, kT0),
                 AppealChange("ap_2", "open", kT0 + absl::Minutes(1), kT0 + absl::Minutes(1)),
                 AppealChange("ap_3", "open", kT0 + absl::Minutes(2), kT0 + absl::Minutes(2))});
  EXPECT_EQ(t.Depth(kAp), 3);
  EXPECT_EQ(t.Depth(kM), 0);
  EXPECT_EQ(t.Depth(kRb), 0);
  clock.Set(kT0 + kTtl * 10);  // no expiry for appeals
  EXPECT_EQ(t.Depth(kAp), 3);
  EXPECT_EQ(t.OldestSince(kAp), kT0);
  t.OnCommitted({AppealChange("ap_1", "granted", kT0, kT0 + absl::Hours(1)),
                 AppealChange("ap_3", "denied", kT0 + absl::Minutes(2), kT0 + absl::Hours(1))});
  EXPECT_EQ(t.Depth(kAp), 1);
  EXPECT_EQ(t.OldestSince(kAp), kT0 + absl::Minutes(1));
  // Filed again after a denial: open again, from its new filing time.
  t.OnCommitted({AppealChange("ap_3", "open", kT0 + absl::Hours(2), kT0 + absl::Hours(2))});
  EXPECT_EQ(t.Depth(kAp), 2);
  EXPECT_EQ(t.OldestSince(kAp), kT0 + absl::Minutes(1));
}

TEST(ServerMetricsTest, ChangesLoadAlreadyReadAreNotAppliedTwice) {
  core::FakeClock clock(kT0);
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = kTtl});
  TempLedger temp("quell-rq-empty", &clock);
  ASSERT_NE(temp.get(), nullptr);
  ledger::Ledger& ledger = *temp.get();
  ASSERT_TRUE(ledger
                  .SubmitAndWait([](ledger::Txn& txn, absl::Time) -> absl::Status {
                    ledger::Change c = AppealChange("ap_9", "open", kT0, kT0);
                    QUELL_RETURN_IF_ERROR(txn.Append(c, nullptr).status());
                    c = AppealChange("ap_9", "denied", kT0, kT0);
                    return txn.Append(c, nullptr).status();
                  })
                  .ok());
  ASSERT_TRUE(t.Load(ledger.store()).ok());
  EXPECT_EQ(t.Depth(kAp), 0);
  // A change feed that starts earlier delivers seq 1 (the filing) again: ignored.
  ledger::Change again = AppealChange("ap_9", "open", kT0, kT0);
  again.seq = 1;
  t.OnCommitted({again});
  EXPECT_EQ(t.Depth(kAp), 0);
  again.seq = 3;  // a new one is applied
  t.OnCommitted({again});
  EXPECT_EQ(t.Depth(kAp), 1);
}

// Every kind through the real workflow mutations, followed live by one tracker, then a
// second tracker loaded from the store (a restarted node) shows the same figures.
TEST(ServerMetricsTest, ReviewQueueRebuiltFromTheStoreMatchesTheLiveOne) {
  {
    core::FakeClock clock(kT0);
    TempLedger temp("quell-rq-live", &clock);
    ASSERT_NE(temp.get(), nullptr);
    ledger::Ledger& ledger = *temp.get();
    workflow::RollbackRequests rollbacks;
    ASSERT_TRUE(rollbacks.Load(ledger.store()).ok());
    ledger.AddListener(&rollbacks);
    ReviewQueueTracker live({.clock = &clock, .pending_ttl = kTtl});
    ASSERT_TRUE(live.Load(ledger.store()).ok());
    ledger.AddListener(&live);

    // Mitigations: 3 active (appealed below), 2 pending approval.
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) {
      clock.Advance(absl::Minutes(1));
      auto added = ledger.SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
        return AppendBlock(
            txn, "user:p" + std::to_string(i),
            i < 3 ? core::MitigationState::kActive : core::MitigationState::kPendingApproval, now,
            now, &ids.emplace_back());
      });
      ASSERT_TRUE(added.ok()) << added.status();
    }
    // Two rollback requests (requested at T0+6m and T0+7m).
    std::vector<std::string> rbs;
    for (int i = 0; i < 2; ++i) {
      clock.Advance(absl::Minutes(1));
      workflow::RollbackRequest r;
      r.id = "rb_" + std::to_string(i);
      r.filter.source = "bot" + std::to_string(i);
      r.requested_by = "k_a";
      auto out = std::make_shared<workflow::RollbackRequest>();
      ASSERT_TRUE(ledger.SubmitAndWait(rollbacks.Request(r, out)).ok());
      rbs.push_back(r.id);
    }
    // Appeals against the three active mitigations (filed at T0+8m, 9m, 10m).
    std::vector<std::string> appeals;
    for (int i = 0; i < 3; ++i) {
      clock.Advance(absl::Minutes(1));
      auto out = std::make_shared<workflow::Appeal>();
      auto st = ledger.SubmitAndWait(workflow::FileAppeal(
          ids[i], "not me", "k_a", out, workflow::SafeguardOptions{}.pending_ttl));
      ASSERT_TRUE(st.ok()) << st.status();
      appeals.push_back(out->id);
    }
    EXPECT_EQ(live.Depth(kM), 2);
    EXPECT_EQ(live.Depth(kRb), 2);
    EXPECT_EQ(live.Depth(kAp), 3);
    EXPECT_EQ(live.OldestSince(kM), kT0 + absl::Minutes(4));
    EXPECT_EQ(live.OldestSince(kRb), kT0 + absl::Minutes(6));
    EXPECT_EQ(live.OldestSince(kAp), kT0 + absl::Minutes(8));

    // Decide one of each: reject a rollback request, deny an appeal, approve a pending
    // mitigation (it becomes active).
    clock.Advance(absl::Minutes(1));
    auto rb_out = std::make_shared<workflow::RollbackRequest>();
    auto decided =
        ledger.SubmitAndWait(rollbacks.Decide(rbs[0], false, "no", "k_b", {}, kTtl, rb_out));
    ASSERT_TRUE(decided.ok()) << decided.status();
    int64_t seq = 0;
    auto appeal = workflow::LoadAppeal(ledger.store(), appeals[0], &seq);
    ASSERT_TRUE(appeal.ok() && appeal->has_value());
    auto ap_out = std::make_shared<workflow::Appeal>();
    decided = ledger.SubmitAndWait(workflow::DecideAppeal(
        **appeal, seq, false, "no", "k_b", ap_out, workflow::SafeguardOptions{}.pending_ttl));
    ASSERT_TRUE(decided.ok()) << decided.status();
    decided = ledger.SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(auto m, txn.GetMitigation(ids[3]));
      m->state = core::MitigationState::kActive;
      return workflow::AppendMitigationChange(txn, *m, "k_b", now).status();
    });
    ASSERT_TRUE(decided.ok()) << decided.status();

    ReviewQueueTracker restarted({.clock = &clock, .pending_ttl = kTtl});
    ASSERT_TRUE(restarted.Load(ledger.store()).ok());
    for (ReviewQueueTracker* t : {&live, &restarted}) {
      EXPECT_EQ(t->Depth(kM), 1);
      EXPECT_EQ(t->OldestSince(kM), kT0 + absl::Minutes(5));
      EXPECT_EQ(t->Depth(kRb), 1);
      EXPECT_EQ(t->OldestSince(kRb), kT0 + absl::Minutes(7));
      EXPECT_EQ(t->Depth(kAp), 2);
      EXPECT_EQ(t->OldestSince(kAp), kT0 + absl::Minutes(9));
    }
    // Past pending_ttl nothing was written, yet neither the approval nor the rollback
    // request counts on either; the appeals still do.
    clock.Set(kT0 + absl::Minutes(7) + kTtl);
    ReviewQueueTracker later({.clock = &clock, .pending_ttl = kTtl});
    ASSERT_TRUE(later.Load(ledger.store()).ok());
    for (ReviewQueueTracker* t : {&live, &restarted, &later}) {
      EXPECT_EQ(t->Depth(kM), 0);
      EXPECT_EQ(t->Depth(kRb), 0);
      EXPECT_EQ(t->Depth(kAp), 2);
    }
  }
}

TEST(ServerMetricsTest, ReviewQueueLoadsEveryPendingMitigationAcrossLogPages) {
  core::FakeClock clock(kT0);
  TempLedger temp("quell-server-metrics", &clock);
  ASSERT_NE(temp.get(), nullptr);
  // 10,000 pending and 3 active, one transaction: the pending list is two pages.
  auto added = temp.get()->SubmitAndWait([](ledger::Txn& txn, absl::Time now) -> absl::Status {
    for (int i = 0; i < 10003; ++i) {
      QUELL_RETURN_IF_ERROR(AppendBlock(
          txn, "user:p" + std::to_string(i),
          i < 10000 ? core::MitigationState::kPendingApproval : core::MitigationState::kActive,
          now - absl::Seconds(i), now));
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(added.ok()) << added.status();
  // Pending ones expire 24 h after creation.
  ReviewQueueTracker t({.clock = &clock, .pending_ttl = absl::Hours(24)});
  ASSERT_TRUE(t.Load(temp.get()->store()).ok());
  EXPECT_EQ(t.Depth(ReviewKind::kMitigation), 10000);
  EXPECT_EQ(t.OldestSince(ReviewKind::kMitigation), kT0 - absl::Seconds(9999));
}

TEST(ServerMetricsTest, NodeName) {
  EXPECT_EQ(NodeName("quell-eu-1"), "quell-eu-1");
  EXPECT_FALSE(NodeName("").empty());
}

}  // namespace
}  // namespace quell::api
