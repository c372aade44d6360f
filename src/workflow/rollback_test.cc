#include "workflow/rollback.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "ledger/audit.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/mitigations.h"
#include "workflow/reviews.h"

namespace quell::workflow {
namespace {

using core::MitigationState;

class RollbackTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/rb_" + core::RandomHex(6);
    Open();
  }
  void TearDown() override {
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    auto store = ledger::OpenSqliteStore({.path = dir_});
    ASSERT_TRUE(store.ok()) << store.status();
    auto l = ledger::Ledger::Open(*std::move(store), ledger::LedgerOptions{}, &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
    requests_ = std::make_unique<RollbackRequests>();
    ASSERT_TRUE(requests_->Load(ledger_->store()).ok());
    ledger_->AddListener(requests_.get());
  }
  void Reopen() {
    ledger_.reset();
    Open();
  }

  // A request for a block of `policy` p1 on `entity`; the action's default ttl unless
  // `ttl` is given.
  static CreateRequest Block(std::string entity, std::string source,
                             std::optional<absl::Duration> ttl = std::nullopt) {
    CreateRequest r;
    r.entity = *core::Entity::Parse(entity);
    r.action = "block";
    r.ttl = ttl;
    r.reason = "test";
    r.actor = "k_detector";
    r.source = std::move(source);
    r.policy = "p1";
    return r;
  }
  // Submits `r`, its detections stored first as the intake stores them (with r's source
  // and batch, in the same transaction); the id of the mitigation it made or extended.
  std::string Submit(const CreateRequest& r) {
    auto out = std::make_shared<CreateResult>();
    ledger::Mutation create = CreateMitigation(r, core::ActionCatalog::Default(), out);
    auto done = ledger_->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
      for (const std::string& id : r.detections) {
        ledger::StoredDetection d;
        d.source = r.source;
        d.id = id;
        d.type = "artificial_streaming";
        d.entity = r.entity.str();
        d.batch = r.batch;
        d.json = "{}";
        QUELL_RETURN_IF_ERROR(txn.PutDetection(d));
      }
      return create(txn, now);
    });
    EXPECT_TRUE(done.ok()) << done.status();
    return out->mitigation.id;
  }
  std::string Create(std::string entity, std::string source,
                     std::optional<absl::Duration> ttl = std::nullopt) {
    return Submit(Block(std::move(entity), std::move(source), ttl));
  }
  MitigationState State(const std::string& id) {
    return (*ledger_->store().GetMitigation(id))->state;
  }
  std::string Request(const RollbackFilter& f, std::string requester = "k_admin1") {
    RollbackRequest r;
    r.id = core::NewId("rb_", clock_.Now());
    r.filter = f;
    r.reason = "bad model";
    r.requested_by = std::move(requester);
    auto t = FindRollbackTargetSet(ledger_->store(), f, clock_.Now(), kTtl);
    EXPECT_TRUE(t.ok());
    r.matched = static_cast<int64_t>(t->mitigations.size());
    r.entities = t->entities;
    auto stored = std::make_shared<RollbackRequest>();
    EXPECT_TRUE(ledger_->SubmitAndWait(requests_->Request(r, stored)).ok());
    EXPECT_EQ(stored->id, r.id);
    EXPECT_EQ(stored->requested_at, clock_.Now());
    return r.id;
  }
  absl::Status Decide(const std::string& id, bool approve, std::string reviewer,
                      std::shared_ptr<RollbackRequest> out = nullptr) {
    if (!out) out = std::make_shared<RollbackRequest>();
    auto r = requests_->Get(id);
    std::vector<core::Mitigation> ids;
    if (r) ids = *FindRollbackTargets(ledger_->store(), r->filter, clock_.Now(), kTtl);
    return ledger_
        ->SubmitAndWait(
            requests_->Decide(id, approve, "note", std::move(reviewer), std::move(ids), kTtl, out))
        .status();
  }

  // Runs a rollback of `f` at once on what it finds now: what it found, and its request as
  // filed.
  // A reviewer approves the held decision `id` (DecideReview, as Reviews does).
  absl::Status Approve(const std::string& id) {
    auto m = ledger_->store().GetMitigation(id);
    if (!m.ok() || !m->has_value()) return absl::NotFoundError(id);
    auto facts = LoadReviewFacts(ledger_->store(), **m);
    if (!facts.ok()) return facts.status();
    auto outcome = std::make_shared<ReviewOutcome>();
    return ledger_
        ->SubmitAndWait(DecideReview(id, true, "ok", "k_reviewer", *facts,
                                     core::ActionCatalog::Default(), kTtl, outcome))
        .status();
  }
  std::pair<RollbackTargets, RollbackRequest> RunRollback(const std::string& id,
                                                          const RollbackFilter& f,
                                                          WhyHeldFn why_held = nullptr) {
    auto t = FindRollbackTargetSet(ledger_->store(), f, clock_.Now(), kTtl);
    EXPECT_TRUE(t.ok());
    RollbackRequest r;
    r.id = id;
    r.filter = f;
    r.reason = "bad";
    r.requested_by = "k_admin";
    auto out = std::make_shared<RollbackRequest>();
    EXPECT_TRUE(
        ledger_->SubmitAndWait(Rollback(r, t->mitigations, out, kTtl, std::move(why_held))).ok());
    return {*t, *out};
  }

  static constexpr absl::Duration kTtl = absl::Hours(1);
  core::FakeClock clock_;
  std::string dir_;
  std::unique_ptr<ledger::Ledger> ledger_;
  std::unique_ptr<RollbackRequests> requests_;
};

// Another node (on PostgreSQL) knows of a request only through the change feed: deciding
// it before the feed brings this node's decision must still be refused (it was answered
// 200, and the record ended "rejected, revoked 0" after everything was revoked).
TEST_F(RollbackTest, ARequestIsDecidedOnceWhateverANodeHasSeen) {
  Create("user:n1", "bad-model");
  RollbackFilter f;
  f.source = "bad-model";
  std::string id = Request(f);
  RollbackRequests other;  // the other node: loaded now, its feed lags from here on
  ASSERT_TRUE(other.Load(ledger_->store()).ok());
  ASSERT_TRUE(Decide(id, true, "k_reviewer").ok());
  auto out = std::make_shared<RollbackRequest>();
  absl::Status st =
      ledger_->SubmitAndWait(other.Decide(id, false, "", "k_reviewer2", {}, kTtl, out)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(requests_->Get(id)->state, "done");
}

TEST_F(RollbackTest, RollbackRevokesMatchesOnlyAndIsIdempotent) {
  std::string a = Create("user:a", "model-v3");
  std::string b = Create("user:b", "model-v3");
  std::string c = Create("user:c", "model-v2");
  RollbackFilter f;
  f.source = "model-v3";
  auto t = FindRollbackTargetSet(ledger_->store(), f, clock_.Now(), kTtl);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->mitigations.size(), 2u);
  EXPECT_EQ(t->entities, 2);
  auto run = [&](std::string id, std::vector<core::Mitigation> targets) {
    RollbackRequest r;
    r.id = std::move(id);
    r.filter = f;
    r.reason = "bad";
    r.requested_by = "k_admin";
    // As the route reads them, before the transaction (the run counts them again).
    r.matched = static_cast<int64_t>(t->mitigations.size());
    r.entities = t->entities;
    auto out = std::make_shared<RollbackRequest>();
    EXPECT_TRUE(ledger_->SubmitAndWait(Rollback(r, std::move(targets), out, kTtl)).ok());
    return out;
  };
  auto targets = t->mitigations;
  auto out = run("rb_1", targets);
  EXPECT_EQ(out->revoked, 2);
  EXPECT_EQ(out->matched, 2);
  EXPECT_EQ(out->entities, 2);
  EXPECT_EQ(State(a), MitigationState::kRevoked);
  EXPECT_EQ(State(b), MitigationState::kRevoked);
  EXPECT_EQ(State(c), MitigationState::kActive);
  EXPECT_NE((*ledger_->store().GetMitigation(a))->state_reason.find("rollback rb_1: bad"),
            std::string::npos);
  // Filed as done by its requester, as an approved request would be; also after a reopen.
  for (int pass = 0; pass < 2; ++pass) {
    auto filed = requests_->Get("rb_1");
    ASSERT_TRUE(filed.has_value());
    EXPECT_EQ(filed->state, "done");
    EXPECT_EQ(filed->revoked, 2);
    EXPECT_EQ(filed->decided_by, "k_admin");
    EXPECT_EQ(filed->filter.source, "model-v3");
    if (pass == 0) Reopen();
  }
  // Again with the same (now stale) targets: re-read, nothing more.
  out = run("rb_2", targets);
  EXPECT_EQ(out->revoked, 0);
  EXPECT_EQ(requests_->Get("rb_2")->revoked, 0);
  // Its record counts as the transaction found them: no mitigation, no entity (it said
  // matched 0, entities 2, the read before the transaction).
  EXPECT_EQ(requests_->Get("rb_2")->matched, 0);
  EXPECT_EQ(requests_->Get("rb_2")->entities, 0);
  EXPECT_TRUE(FindRollbackTargets(ledger_->store(), f, clock_.Now(), kTtl)->empty());
  // One transaction: the chain still verifies.
  auto audit = ledger::VerifyChain(ledger_->store());
  ASSERT_TRUE(audit.ok());
  EXPECT_TRUE(audit->ok()) << audit->reason;
}

// A mitigation past its expiry, its `expired` change not written yet, is over: a rollback
// leaves it for the scheduler to expire rather than recording it revoked.
TEST_F(RollbackTest, RollbackLeavesOnesPastTheirExpiry) {
  const std::string short_lived = Create("user:short", "model-v3", absl::Minutes(1));
  const std::string live = Create("user:long", "model-v3");  // the default ttl: days
  RollbackFilter f;
  f.source = "model-v3";
  auto t = FindRollbackTargetSet(ledger_->store(), f, clock_.Now(), kTtl);
  ASSERT_TRUE(t.ok());
  ASSERT_EQ(t->mitigations.size(), 2u);
  clock_.Advance(absl::Minutes(2));  // past the short one's expiry; no scheduler runs here
  RollbackRequest r;
  r.id = "rb_late";
  r.filter = f;
  r.reason = "bad";
  r.requested_by = "k_admin";
  auto out = std::make_shared<RollbackRequest>();
  ASSERT_TRUE(ledger_->SubmitAndWait(Rollback(r, t->mitigations, out, kTtl)).ok());
  EXPECT_EQ(out->revoked, 1);
  EXPECT_EQ(State(live), MitigationState::kRevoked);
  EXPECT_EQ(State(short_lived), MitigationState::kActive);  // the scheduler's
}

TEST_F(RollbackTest, RequestWaitsThenAnotherReviewerApproves) {
  std::string a = Create("user:a", "model-v3");
  std::string b = Create("user:b", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  std::string id = Request(f);
  auto got = requests_->Get(id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->state, "pending_approval");
  EXPECT_EQ(got->matched, 2);
  EXPECT_EQ(requests_->Pending(clock_.Now(), kTtl).size(), 1u);
  EXPECT_EQ(State(a), MitigationState::kActive);

  // The requester cannot approve it.
  EXPECT_EQ(Decide(id, true, "k_admin1").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(State(a), MitigationState::kActive);

  // One more match while it waits: the approval runs on what matches then, and its record
  // says so (it used to keep the request's 2 matched beside 3 revoked).
  std::string c = Create("user:c", "model-v3");
  auto out = std::make_shared<RollbackRequest>();
  ASSERT_TRUE(Decide(id, true, "k_reviewer", out).ok());
  EXPECT_EQ(out->state, "done");
  EXPECT_EQ(out->revoked, 3);
  EXPECT_EQ(out->matched, 3);
  EXPECT_EQ(out->entities, 3);
  EXPECT_EQ(requests_->Get(id)->matched, 3);
  EXPECT_EQ(out->decided_by, "k_reviewer");
  EXPECT_EQ(State(a), MitigationState::kRevoked);
  EXPECT_EQ(State(b), MitigationState::kRevoked);
  EXPECT_EQ(State(c), MitigationState::kRevoked);
  EXPECT_NE((*ledger_->store().GetMitigation(a))->state_reason.find("approved by k_reviewer"),
            std::string::npos);
  EXPECT_EQ(requests_->Get(id)->state, "done");
  EXPECT_TRUE(requests_->Pending(clock_.Now(), kTtl).empty());
  // Decided once only.
  EXPECT_EQ(Decide(id, false, "k_other").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Decide("rb_missing", true, "k_other").code(), absl::StatusCode::kNotFound);
}

TEST_F(RollbackTest, RejectionRevokesNothing) {
  std::string a = Create("user:a", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  std::string id = Request(f);
  auto out = std::make_shared<RollbackRequest>();
  ASSERT_TRUE(Decide(id, false, "k_reviewer", out).ok());
  EXPECT_EQ(out->state, "rejected");
  EXPECT_EQ(State(a), MitigationState::kActive);
  EXPECT_EQ(Decide(id, true, "k_reviewer2").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RollbackTest, TwoDecisionsInOneCommitBatchCannotBothPass) {
  Create("user:a", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  std::string id = Request(f);
  std::vector<core::Mitigation> ids = *FindRollbackTargets(ledger_->store(), f, clock_.Now(), kTtl);
  // Both run in one transaction: the second sees the first's decision.
  auto first = std::make_shared<RollbackRequest>();
  auto second = std::make_shared<RollbackRequest>();
  auto m1 = requests_->Decide(id, true, "", "k_r1", ids, kTtl, first);
  auto m2 = requests_->Decide(id, false, "", "k_r2", ids, kTtl, second);
  auto both = ledger_->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
    if (auto s = m1(txn, now); !s.ok()) return s;
    absl::Status s2 = m2(txn, now);
    EXPECT_EQ(s2.code(), absl::StatusCode::kFailedPrecondition) << s2;
    return absl::OkStatus();
  });
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(requests_->Get(id)->state, "done");
}

TEST_F(RollbackTest, FailedDecisionLeavesItPending) {
  Create("user:a", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  std::string id = Request(f);
  std::vector<core::Mitigation> ids = *FindRollbackTargets(ledger_->store(), f, clock_.Now(), kTtl);
  auto out = std::make_shared<RollbackRequest>();
  auto m = requests_->Decide(id, true, "", "k_r1", ids, kTtl, out);
  // The decision's mutation succeeds but its caller fails after it: all rolled back.
  auto failed = ledger_->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
    if (auto s = m(txn, now); !s.ok()) return s;
    return absl::InternalError("later step failed");
  });
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(requests_->Get(id)->state, "pending_approval");
  // The voided decision does not block a real one.
  ASSERT_TRUE(Decide(id, false, "k_r2").ok());
  EXPECT_EQ(requests_->Get(id)->state, "rejected");
}

TEST_F(RollbackTest, ExpiredRequestCannotBeDecided) {
  std::string a = Create("user:a", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  std::string id = Request(f);
  clock_.Advance(kTtl + absl::Seconds(1));
  EXPECT_TRUE(requests_->Pending(clock_.Now(), kTtl).empty());
  EXPECT_EQ(RollbackRequestState(*requests_->Get(id), kTtl, clock_.Now()), "expired");
  EXPECT_EQ(Decide(id, true, "k_reviewer").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(State(a), MitigationState::kActive);
}

TEST_F(RollbackTest, RequestsSurviveARestart) {
  Create("user:a", "model-v3");
  RollbackFilter f;
  f.source = "model-v3";
  f.since = clock_.Now() - absl::Hours(1);
  std::string id = Request(f);
  Reopen();
  auto got = requests_->Get(id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->state, "pending_approval");
  EXPECT_EQ(got->filter.source, "model-v3");
  EXPECT_EQ(got->filter.since, f.since);
  EXPECT_EQ(got->requested_by, "k_admin1");
  ASSERT_TRUE(Decide(id, true, "k_reviewer").ok());
  Reopen();
  EXPECT_EQ(requests_->Get(id)->state, "done");
  EXPECT_EQ(requests_->Get(id)->revoked, 1);
}

TEST(RollbackRequestJson, ShapeAndBadPayload) {
  RollbackRequest r;
  r.id = "rb_x";
  r.filter.policy = "p\"1";
  r.filter.until = absl::FromUnixSeconds(1767225600);
  r.reason = "why";
  r.requested_by = "k_a";
  r.requested_at = absl::FromUnixSeconds(1767225000);
  std::string json = RollbackRequestJson(r, absl::Hours(1), r.requested_at);
  EXPECT_NE(json.find("\"state\":\"pending_approval\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"expires_at\":\"2026-01-01T00:50:00Z\""), std::string::npos) << json;
  json = RollbackRequestJson(r, absl::Hours(1), r.requested_at + absl::Hours(2));
  EXPECT_NE(json.find("\"state\":\"expired\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"expires_at\":\"2026-01-01T00:50:00Z\""), std::string::npos) << json;
  // A decided request did not wait out its window: no expiry to show.
  r.state = "done";
  r.decided_by = "k_b";
  r.decided_at = r.requested_at + absl::Minutes(5);
  json = RollbackRequestJson(r, absl::Hours(1), r.requested_at + absl::Hours(2));
  EXPECT_NE(json.find("\"state\":\"done\""), std::string::npos) << json;
  EXPECT_EQ(json.find("expires_at"), std::string::npos) << json;
  EXPECT_FALSE(RollbackRequestFromPayload("{\"x\":1}", absl::Now()).ok());
}

// A filter naming an import batch also takes back that batch's extensions of mitigations
// created otherwise: each expiry goes back to what the other hits asked for (another
// batch's included), and one already over without it ends.
TEST_F(RollbackTest, ABatchsExtensionsAreUndoneWithIt) {
  const absl::Time t0 = clock_.Now();
  auto hit = [&](const std::string& entity, const std::string& batch, absl::Duration ttl) {
    CreateRequest r = Block(entity, batch.empty() ? "manual" : "model-v3", ttl);
    if (batch.empty()) r.policy.clear();  // a person's
    r.batch = batch;
    r.detections = {core::NewId("d_", clock_.Now())};
    return Submit(r);
  };
  auto get = [&](const std::string& id) { return **ledger_->store().GetMitigation(id); };
  const std::string x = hit("user:x", "", absl::Hours(1));  // a person's block, 1 h
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(hit("user:x", "b_1", absl::Hours(5)), x);  // extended to t0 + 5h10m
  const std::string y = hit("user:y", "b_1", absl::Hours(5));
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(hit("user:x", "b_2", absl::Hours(3)), x);  // asks t0 + 3h20m: no extension
  EXPECT_EQ(get(x).expires_at, t0 + absl::Minutes(310));

  RollbackFilter windowed;  // a window selects by creation time: no extension matches
  windowed.batch = "b_1";
  windowed.since = t0;
  auto [wt, wout] = RunRollback("rb_w", windowed);
  EXPECT_EQ(wt.extensions, 0);
  EXPECT_EQ(wout.revoked, 1);  // y
  EXPECT_EQ(get(x).expires_at, t0 + absl::Minutes(310));

  RollbackFilter f;
  f.batch = "b_1";
  auto [targets, out] = RunRollback("rb_1", f);
  EXPECT_EQ(targets.extensions, 1);
  EXPECT_EQ(out.matched, 1);
  EXPECT_EQ(out.restored, 1);
  EXPECT_EQ(out.revoked, 0);
  core::Mitigation m = get(x);
  EXPECT_EQ(m.state, MitigationState::kActive);
  EXPECT_EQ(m.expires_at, t0 + absl::Minutes(200));  // b_2's
  EXPECT_EQ(m.state_reason,
            absl::StrCat("rollback rb_1: bad; took back the hits of batch b_1: expires ",
                         core::FormatRfc3339(t0 + absl::Minutes(200))));
  EXPECT_EQ(get(y).state, MitigationState::kRevoked);
  EXPECT_EQ(requests_->Get("rb_1")->restored, 1);
  // b_1's hit stays as evidence, no longer a hit of p1 (escalation counts b_2's only).
  EXPECT_EQ(m.detection_policies, (std::vector<std::string>{"", "rolled_back:p1", "p1"}));
  // Idempotent: nothing of b_1 is left to undo.
  auto [again, out2] = RunRollback("rb_2", f);
  EXPECT_TRUE(again.mitigations.empty());
  EXPECT_EQ(out2.matched, 0);

  // Without b_2 it would have ended at t0 + 1h: past by now, so it ends, an enforced
  // decision that expired (still a prior offence), not a revoked one.
  clock_.Set(t0 + absl::Hours(2));
  RollbackFilter f2;
  f2.batch = "b_2";
  f2.source = "other-model";  // another source's batch of that id: not this one
  EXPECT_TRUE(FindRollbackTargetSet(ledger_->store(), f2, clock_.Now(), kTtl)->mitigations.empty());
  f2.source = "model-v3";
  auto [t3, out3] = RunRollback("rb_3", f2);
  EXPECT_EQ(out3.restored, 1);
  m = get(x);
  EXPECT_EQ(m.state, MitigationState::kExpired);
  EXPECT_EQ(m.expires_at, t0 + absl::Hours(1));
  EXPECT_TRUE(m.batch_expiries.empty());
  EXPECT_TRUE(core::CountsAsPrior(m, true));
  EXPECT_NE(m.state_reason.find("over since"), std::string::npos) << m.state_reason;
  // The hits stay on its record as evidence.
  EXPECT_EQ(m.detections.size(), 3u);
  EXPECT_EQ(m.detection_policies,
            (std::vector<std::string>{"", "rolled_back:p1", "rolled_back:p1"}));
}

// A held decision that another import's held hit lengthened, approved later: it runs its
// whole length from the approval, and so does what each batch asked of it (a rollback of
// that batch then takes back exactly that batch's part).
TEST_F(RollbackTest, AnApprovedHoldKeepsEachBatchsPartInStep) {
  const absl::Time t0 = clock_.Now();
  auto held = [&](const std::string& batch, absl::Duration ttl) {
    CreateRequest r = Block("user:h", "model-v3", ttl);
    r.batch = batch;
    r.state = MitigationState::kPendingApproval;
    r.pending_ttl = kTtl;
    return Submit(r);
  };
  const std::string id = held("b_1", absl::Hours(2));  // until t0 + 2h
  EXPECT_EQ(held("b_2", absl::Hours(5)), id);          // until t0 + 5h, b_2's part
  clock_.Advance(absl::Minutes(30));
  core::Mitigation m = **ledger_->store().GetMitigation(id);
  auto facts = LoadReviewFacts(ledger_->store(), m);
  ASSERT_TRUE(facts.ok());
  auto outcome = std::make_shared<ReviewOutcome>();
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait(DecideReview(id, true, "ok", "k_reviewer", *facts,
                                               core::ActionCatalog::Default(), kTtl, outcome))
                  .ok());
  m = **ledger_->store().GetMitigation(id);
  ASSERT_EQ(m.state, MitigationState::kActive);
  EXPECT_EQ(m.expires_at, t0 + absl::Minutes(330));
  RollbackFilter f;
  f.batch = "b_2";
  EXPECT_EQ(RunRollback("rb_h", f).second.restored, 1);
  m = **ledger_->store().GetMitigation(id);
  EXPECT_EQ(m.state, MitigationState::kActive);
  EXPECT_EQ(m.expires_at, t0 + absl::Minutes(150));  // b_1's 2 h, from the approval
}

// A held decision of an import batch, approved while another of the same action was
// active, is merged into that one (its extension, its creation kept as evidence). Rolling
// the batch back takes the extension back and undoes the merged decision with it: it was
// enforced only as that extension, and no longer counts as a prior offence.
TEST_F(RollbackTest, ABatchsDecisionMergedIntoAnotherIsUndoneWithItsExtension) {
  const absl::Time t0 = clock_.Now();
  const std::string active = Create("user:m", "manual", absl::Hours(1));
  CreateRequest p = Block("user:m", "model-v3", absl::Hours(4));
  p.policy = "p2";
  p.batch = "b_9";
  p.detections = {"d_9"};
  p.state = MitigationState::kPendingApproval;
  p.pending_ttl = kTtl;
  const std::string held = Submit(p);
  ASSERT_NE(held, active);
  ASSERT_TRUE(Approve(held).ok());
  ASSERT_TRUE(WasMergedInto(**ledger_->store().GetMitigation(held), active));
  EXPECT_EQ((**ledger_->store().GetMitigation(active)).expires_at, t0 + absl::Hours(4));
  auto prior_of_p2 = [&] {
    auto n = ledger_->store().CountMitigations(*core::Entity::Parse("user:m"), "p2", "",
                                               absl::InfinitePast(), /*exclude_shadow=*/true);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  };
  EXPECT_EQ(prior_of_p2(), 1);

  RollbackFilter other;  // another batch of that source leaves it alone
  other.batch = "b_8";
  RunRollback("rb_8", other);
  EXPECT_EQ(State(held), MitigationState::kExpired);

  RollbackFilter f;
  f.batch = "b_9";
  auto [targets, out] = RunRollback("rb_9", f);
  EXPECT_EQ(targets.extensions, 1);
  EXPECT_EQ(out.restored, 1);
  core::Mitigation a = **ledger_->store().GetMitigation(active);
  EXPECT_EQ(a.state, MitigationState::kActive);
  EXPECT_EQ(a.expires_at, t0 + absl::Hours(1));
  core::Mitigation m = **ledger_->store().GetMitigation(held);
  EXPECT_EQ(m.state, MitigationState::kRevoked);
  EXPECT_EQ(m.actor, "k_admin");
  EXPECT_EQ(m.state_reason, absl::StrCat("rollback rb_9: bad; it had been merged into ", active));
  EXPECT_FALSE(core::CountsAsPrior(m, true));
  EXPECT_EQ(prior_of_p2(), 0);
  auto report = ledger::VerifyChain(ledger_->store());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok());
}

// A merged decision that a rolled-back batch's hit had lengthened comes back into force
// without that batch's part: the rollback takes the batch's hits back from it as from the
// mitigation it was merged into.
TEST_F(RollbackTest, AMergedDecisionBackInForceLosesTheRolledBackBatchsPart) {
  const std::string active = [&] {
    CreateRequest a = Block("user:mb", "model-v3", absl::Hours(1));
    a.batch = "b_1";
    a.detections = {"d_a"};
    return Submit(a);
  }();
  auto held = [&](const std::string& batch, const std::string& detection, absl::Duration ttl) {
    CreateRequest p = Block("user:mb", "model-v3", ttl);
    p.policy = "p2";
    p.batch = batch;
    p.detections = {detection};
    p.state = MitigationState::kPendingApproval;
    p.pending_ttl = kTtl;
    return Submit(p);
  };
  const std::string merged = held("b_2", "d_2", absl::Hours(2));
  ASSERT_NE(merged, active);
  EXPECT_EQ(held("b_1", "d_1", absl::Hours(5)), merged);  // b_1's hit lengthens it
  clock_.Advance(absl::Minutes(10));
  const absl::Time approved = clock_.Now();
  ASSERT_TRUE(Approve(merged).ok());
  ASSERT_TRUE(WasMergedInto(**ledger_->store().GetMitigation(merged), active));

  RollbackFilter f;
  f.batch = "b_1";
  auto [targets, out] = RunRollback("rb_b1", f);
  EXPECT_EQ(out.revoked, 1);
  EXPECT_EQ(State(active), MitigationState::kRevoked);
  core::Mitigation m = **ledger_->store().GetMitigation(merged);
  EXPECT_EQ(m.state, MitigationState::kActive);
  EXPECT_EQ(m.expires_at, approved + absl::Hours(2));  // b_2's part, not b_1's 5 h
  EXPECT_EQ(m.detection_policies, (std::vector<std::string>{"p2", "rolled_back:p2"}));
  EXPECT_EQ(m.state_reason.rfind(absl::StrCat("back in force: ", active), 0), 0u) << m.state_reason;
  auto report = ledger::VerifyChain(ledger_->store());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok());
}

// A scheduled decision that started while another was active was merged into it without
// a person's approval. When a rollback revokes that one and the entity has been protected
// since, it does not come back into force by itself: it stays expired, and says why.
TEST_F(RollbackTest, AMergedDecisionOnAnEntityProtectedSinceStaysOver) {
  const std::string active = Create("user:sp", "model-v3", absl::Hours(1));
  CreateRequest p = Block("user:sp", "model-v3", absl::Hours(2));
  p.policy = "p2";
  p.detections = {"d_sp"};
  p.starts_at = clock_.Now() + absl::Minutes(5);
  p.state = MitigationState::kScheduled;
  const std::string scheduled = Submit(p);
  ASSERT_NE(scheduled, active);
  clock_.Advance(absl::Minutes(10));
  auto n = std::make_shared<int>(0);
  ASSERT_TRUE(ledger_->SubmitAndWait(ApplyDue({scheduled}, n)).ok());
  ASSERT_TRUE(WasMergedInto(**ledger_->store().GetMitigation(scheduled), active));

  RollbackFilter f;
  f.policy = "p1";
  auto protected_now = [](const core::Mitigation& m, absl::Time) -> std::optional<std::string> {
    return absl::StrCat(m.entity.str(), " is on protected list vip");
  };
  auto [targets, out] = RunRollback("rb_sp", f, protected_now);
  EXPECT_EQ(out.revoked, 1);
  core::Mitigation m = **ledger_->store().GetMitigation(scheduled);
  EXPECT_EQ(m.state, MitigationState::kExpired);
  EXPECT_NE(m.state_reason.find(absl::StrCat("; not back in force after ", active,
                                             " was revoked (rollback rb_sp: bad): user:sp is on "
                                             "protected list vip")),
            std::string::npos)
      << m.state_reason;
  EXPECT_TRUE(WasMergedInto(m, active));
}

}  // namespace
}  // namespace quell::workflow
