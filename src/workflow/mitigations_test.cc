#include "workflow/mitigations.h"

#include <filesystem>

#include "core/ids.h"
#include "gtest/gtest.h"
#include "ledger/audit.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/appeals.h"
#include "workflow/expiry.h"
#include "workflow/reviews.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

// The server's default approval window.
const absl::Duration kPendingTtl = SafeguardOptions{}.pending_ttl;

using core::MitigationState;

// A model's request for `action` on `entity`, held for approval.
CreateRequest PendingRequest(std::string_view entity, std::string action) {
  CreateRequest r;
  r.entity = *core::Entity::Parse(entity);
  r.action = std::move(action);
  r.reason = "model";
  r.actor = "k_model";
  r.state = MitigationState::kPendingApproval;
  return r;
}

class MitigationsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/wf_" + core::RandomHex(6);
    auto store = ledger::OpenSqliteStore({.path = dir_});
    ASSERT_TRUE(store.ok()) << store.status();
    auto l = ledger::Ledger::Open(*std::move(store), ledger::LedgerOptions{}, &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
  }
  void TearDown() override {
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }

  absl::StatusOr<CreateResult> Create(std::string entity, std::string action, absl::Duration ttl) {
    CreateRequest r;
    r.entity = *core::Entity::Parse(entity);
    r.action = std::move(action);
    r.ttl = ttl;
    r.reason = "test";
    r.actor = "k_test";
    auto out = std::make_shared<CreateResult>();
    auto done = ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out));
    if (!done.ok()) return done.status();
    return *out;
  }

  // Policy q's active suspension of `entity`, then policy p's held one, approved: merged
  // into q's (Activate). Returns {q's id, p's id}.
  std::pair<std::string, std::string> MergeHeldIntoActive(std::string_view entity) {
    CreateRequest q;
    q.entity = *core::Entity::Parse(entity);
    q.action = "suspend";
    q.reason = "q";
    q.policy = "q";
    q.detections = {"dq"};
    auto out = std::make_shared<CreateResult>();
    EXPECT_TRUE(
        ledger_->SubmitAndWait(CreateMitigation(q, core::ActionCatalog::Default(), out)).ok());
    const std::string active_id = out->mitigation.id;
    CreateRequest p = q;
    p.policy = "p";
    p.detections = {"dp"};
    p.state = MitigationState::kPendingApproval;
    EXPECT_TRUE(
        ledger_->SubmitAndWait(CreateMitigation(p, core::ActionCatalog::Default(), out)).ok());
    core::Mitigation pending = out->mitigation;
    EXPECT_TRUE(ledger_
                    ->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
                      return Activate(txn, pending, "k_reviewer", now).status();
                    })
                    .ok());
    return {active_id, pending.id};
  }

  core::FakeClock clock_;
  std::string dir_;
  std::unique_ptr<ledger::Ledger> ledger_;
};

// Past its expiry, before the scheduler writes its `expired` change (up to a fraction of a
// second under a mass expiry), a mitigation is over: check no longer enforces it, so it is
// not revoked (which would record a person's revocation, and immunity, on it), nor
// extended back to life: a new one is created and the old one's expiry written.
TEST_F(MitigationsTest, AnActiveOnePastItsExpiryIsOverBeforeTheSchedulerWritesIt) {
  auto first = Create("user:late", "block", absl::Hours(1));
  ASSERT_TRUE(first.ok()) << first.status();
  clock_.Advance(absl::Hours(1) + absl::Milliseconds(150));  // no ApplyDue has run
  auto revoked = std::make_shared<core::Mitigation>();
  auto revoke = ledger_->SubmitAndWait(
      RevokeMitigation(first->mitigation.id, "late", "k_reviewer", revoked, kPendingTtl));
  ASSERT_FALSE(revoke.ok());
  EXPECT_EQ(revoke.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(revoke.status().message().find("expired at"), absl::string_view::npos)
      << revoke.status();

  auto again = Create("user:late", "block", absl::Hours(1));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->created);
  EXPECT_NE(again->mitigation.id, first->mitigation.id);
  auto old = ledger_->store().GetMitigation(first->mitigation.id);
  ASSERT_TRUE(old.ok() && old->has_value());
  EXPECT_EQ((*old)->state, MitigationState::kExpired);
  EXPECT_EQ((*old)->expires_at, first->mitigation.expires_at);  // not brought back
}

TEST_F(MitigationsTest, CreateThenExtendInsteadOfStacking) {
  auto first = Create("user:u1", "suspend", absl::Hours(1));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);
  EXPECT_EQ(first->mitigation.state, MitigationState::kActive);
  EXPECT_EQ(first->mitigation.expires_at, clock_.Now() + absl::Hours(1));
  // The reply's JSON is the recorded change's payload: the mitigation as stored.
  EXPECT_EQ(first->json, core::MitigationToJson(first->mitigation));

  auto longer = Create("user:u1", "suspend", absl::Hours(5));
  ASSERT_TRUE(longer.ok());
  EXPECT_FALSE(longer->created);
  EXPECT_EQ(longer->mitigation.id, first->mitigation.id);
  EXPECT_EQ(longer->mitigation.expires_at, clock_.Now() + absl::Hours(5));
  EXPECT_EQ(longer->json, core::MitigationToJson(longer->mitigation));

  // A shorter one changes no expiry (the longer wins), but the request is on the record:
  // who asked and why, in a change of its own.
  int64_t seq = ledger_->last_seq();
  auto shorter = Create("user:u1", "suspend", absl::Minutes(1));
  ASSERT_TRUE(shorter.ok());
  EXPECT_EQ(shorter->mitigation.expires_at, clock_.Now() + absl::Hours(5));
  EXPECT_EQ(ledger_->last_seq(), seq + 1);
  EXPECT_EQ(shorter->mitigation.state_reason.rfind("confirmed: ", 0), 0u)
      << shorter->mitigation.state_reason;
  EXPECT_EQ(shorter->json, core::MitigationToJson(shorter->mitigation));

  // Another action is another mitigation.
  auto other = Create("user:u1", "flag", absl::Hours(1));
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->created);
  EXPECT_NE(other->mitigation.id, first->mitigation.id);
}

// A partial approval is data (approvals) that an extension keeps; a record written before
// that, whose approver is only named in its state_reason, keeps it too (as data).
TEST_F(MitigationsTest, AnExtensionKeepsAPartialApproval) {
  for (bool legacy : {false, true}) {
    CreateRequest r = PendingRequest(legacy ? "user:legacy" : "user:pending", "suspend");
    auto out = std::make_shared<CreateResult>();
    ASSERT_TRUE(
        ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
    core::Mitigation m = out->mitigation;
    ASSERT_TRUE(ledger_
                    ->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
                      if (!legacy) m.approvals = {"k_first"};
                      m.state_reason = "approved 1 of 2 by k_first: looks right";
                      return AppendMitigationChange(txn, m, "k_first", now).status();
                    })
                    .ok());
    if (!legacy) {
      EXPECT_EQ(PriorApprovers(m), std::vector<std::string>{"k_first"});
    }
    r.detections = {"d2"};
    ASSERT_TRUE(
        ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
    EXPECT_EQ(out->mitigation.id, m.id);
    EXPECT_EQ(out->mitigation.state_reason.rfind("hit again: ", 0), 0u);
    EXPECT_EQ(out->mitigation.approvals, std::vector<std::string>{"k_first"}) << legacy;
    EXPECT_EQ(PriorApprovers(out->mitigation), std::vector<std::string>{"k_first"});
  }
}

// A pending approval past pending_ttl can no longer be approved: a new held request is
// not folded into it (it answered 200 with the dead one's id, never to be reviewed,
// until the sweeper ran); the old one is expired with the sweeper's reason.
TEST_F(MitigationsTest, APendingApprovalPastItsTtlTakesNoNewRequest) {
  CreateRequest r = PendingRequest("user:held", "suspend");
  r.pending_ttl = absl::Hours(1);
  auto out = std::make_shared<CreateResult>();
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
  const core::Mitigation first = out->mitigation;
  clock_.Advance(absl::Minutes(59));  // still approvable: folded in
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
  EXPECT_FALSE(out->created);
  EXPECT_EQ(out->mitigation.id, first.id);
  clock_.Advance(absl::Minutes(1));  // created_at + pending_ttl: over
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
  EXPECT_TRUE(out->created);
  EXPECT_NE(out->mitigation.id, first.id);
  EXPECT_EQ(out->mitigation.state, MitigationState::kPendingApproval);
  auto old = *ledger_->store().GetMitigation(first.id);
  ASSERT_TRUE(old.has_value());
  EXPECT_EQ(old->state, MitigationState::kExpired);
  EXPECT_EQ(old->state_reason, "pending approval expired: nobody approved it within 1h");
}

// Nor can a person act on it any more: a revoke, an appeal (whose grant made the entity
// immune) and a rollback treated it as live until the sweeper expired it.
TEST_F(MitigationsTest, APendingApprovalPastItsTtlIsOverForRevokesAppealsAndRollbacks) {
  const CreateRequest r = PendingRequest("user:held-over", "block");
  auto created = std::make_shared<CreateResult>();
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), created)).ok());
  const core::Mitigation m = created->mitigation;
  const absl::Duration ttl = absl::Hours(1);
  // An appeal filed within the window, decided after it: a grant is refused.
  auto appealed = std::make_shared<Appeal>();
  ASSERT_TRUE(
      ledger_->SubmitAndWait(FileAppeal(m.id, "not me", "k_user", appealed, ttl)).status().ok());
  int64_t seq = 0;
  auto loaded = LoadAppeal(ledger_->store(), appealed->id, &seq);
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status();
  clock_.Advance(ttl);
  auto decided = std::make_shared<Appeal>();
  absl::Status grant = ledger_
                           ->SubmitAndWait(DecideAppeal(**loaded, seq, /*grant=*/true, "",
                                                        "k_reviewer", decided, ttl))
                           .status();
  EXPECT_EQ(grant.code(), absl::StatusCode::kFailedPrecondition) << grant;
  EXPECT_NE(grant.message().find("is over: nothing to revoke"), std::string_view::npos) << grant;
  auto revoked = std::make_shared<core::Mitigation>();
  absl::Status revoke =
      ledger_->SubmitAndWait(RevokeMitigation(m.id, "no", "k_reviewer", revoked, ttl)).status();
  EXPECT_EQ(revoke.code(), absl::StatusCode::kFailedPrecondition) << revoke;
  EXPECT_NE(revoke.message().find("expired at"), std::string_view::npos) << revoke;
  auto appeal = std::make_shared<Appeal>();
  absl::Status filed =
      ledger_->SubmitAndWait(FileAppeal(m.id, "not me", "k_user", appeal, ttl)).status();
  EXPECT_EQ(filed.code(), absl::StatusCode::kFailedPrecondition) << filed;
  RollbackRequest rb;
  rb.id = "rb_test";
  rb.filter.source = "manual";
  rb.requested_by = "k_admin";
  auto done = std::make_shared<RollbackRequest>();
  ASSERT_TRUE(ledger_->SubmitAndWait(Rollback(rb, {m}, done, ttl)).ok());
  EXPECT_EQ(done->matched, 0);
  auto now = *ledger_->store().GetMitigation(m.id);
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ(now->state, MitigationState::kPendingApproval);  // the sweeper's to expire
  // Within its window, the same revoke goes through.
  CreateRequest r2 = r;
  r2.entity = *core::Entity::Parse("user:held-in");
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r2, core::ActionCatalog::Default(), created)).ok());
  EXPECT_TRUE(ledger_
                  ->SubmitAndWait(
                      RevokeMitigation(created->mitigation.id, "no", "k_reviewer", revoked, ttl))
                  .ok());
  // And a rollback within the window matches what it filters.
  CreateRequest r3 = r;
  r3.entity = *core::Entity::Parse("user:held-rollback");
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r3, core::ActionCatalog::Default(), created)).ok());
  rb.id = "rb_test2";
  ASSERT_TRUE(ledger_->SubmitAndWait(Rollback(rb, {created->mitigation}, done, ttl)).ok());
  EXPECT_EQ(done->matched, 1);
}

// Merged into the active one, a mitigation's first detection is its creation, which
// escalation counts as that (expired) mitigation: it is recorded as a merged creation, not
// as a later hit of its policy (which counted it twice and escalated a step early), yet
// still naming the policy, which a person's revoke of the merged one makes immune.
TEST_F(MitigationsTest, AMergedCreationIsNotALaterHit) {
  auto [active_id, pending_id] = MergeHeldIntoActive("user:merge");
  ASSERT_NE(pending_id, active_id);
  auto merged = *ledger_->store().GetMitigation(active_id);
  ASSERT_TRUE(merged.has_value());
  EXPECT_EQ(merged->detections, (std::vector<std::string>{"dq", "dp"}));
  EXPECT_EQ(merged->detection_policies, (std::vector<std::string>{"q", "merged:p"}));
  EXPECT_NE(core::DetectionPolicy(*merged, 1), "p");  // escalation's view: not p's hit
  EXPECT_EQ(core::EntryPolicy(merged->detection_policies[1]), "p");  // immunity's

  // A manual pending request (a bulk block) that took in policy r's hit: merged, that hit
  // stays r's (a manual mitigation's first detection is a hit, not its creation).
  CreateRequest manual;
  manual.entity = *core::Entity::Parse("user:merge2");
  manual.action = "suspend";
  manual.reason = "q";
  auto out = std::make_shared<CreateResult>();
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(manual, core::ActionCatalog::Default(), out)).ok());
  const std::string active2 = out->mitigation.id;
  manual.state = MitigationState::kPendingApproval;
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(manual, core::ActionCatalog::Default(), out)).ok());
  CreateRequest hit = manual;
  hit.policy = "r";
  hit.detections = {"dr"};
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(hit, core::ActionCatalog::Default(), out)).ok());
  core::Mitigation pending2 = out->mitigation;
  ASSERT_EQ(pending2.detection_policies, (std::vector<std::string>{"r"}));
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
                    return Activate(txn, pending2, "k_reviewer", now).status();
                  })
                  .ok());
  auto merged2 = *ledger_->store().GetMitigation(active2);
  EXPECT_EQ(merged2->detections, (std::vector<std::string>{"dr"}));
  EXPECT_EQ(core::DetectionPolicy(*merged2, 0), "r");
}

// A decision merged into an active mitigation was enforced only as part of it: when a
// person undoes that one (a revoke, a rollback of its policy, a granted appeal), the
// merged decision is undone with it and stops counting as a prior offence (it used to
// stay `expired`, so a cleared listener's next hit of its policy escalated).
TEST_F(MitigationsTest, ADecisionMergedIntoOneAPersonUndoesIsUndoneWithIt) {
  auto prior_of_p = [&](std::string_view entity) {
    auto n = ledger_->store().CountMitigations(*core::Entity::Parse(entity), "p", "",
                                               absl::InfinitePast(), /*exclude_shadow=*/true);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  };

  auto [active, merged] = MergeHeldIntoActive("user:undo-revoke");
  auto m = *ledger_->store().GetMitigation(merged);
  ASSERT_TRUE(m.has_value());
  ASSERT_EQ(m->state, MitigationState::kExpired);
  EXPECT_TRUE(core::CountsAsPrior(*m, true));
  EXPECT_EQ(prior_of_p("user:undo-revoke"), 1);
  auto revoked = std::make_shared<core::Mitigation>();
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait(
                      RevokeMitigation(active, "wrong user", "k_reviewer", revoked, kPendingTtl))
                  .ok());
  m = *ledger_->store().GetMitigation(merged);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->state, MitigationState::kRevoked);
  EXPECT_EQ(m->actor, "k_reviewer");
  EXPECT_EQ(m->state_reason, absl::StrCat("undone with ", active,
                                          ", which it was merged into (revoked: wrong user)"));
  EXPECT_FALSE(core::CountsAsPrior(*m, true));
  EXPECT_EQ(prior_of_p("user:undo-revoke"), 0);

  // A rollback of q's decisions does not lift p's: the decision merged into q's stands
  // on its own again, until its own expiry. Another entity's merged decision, whose
  // absorber the rollback leaves alone, stays as it was.
  auto [active2, merged2] = MergeHeldIntoActive("user:undo-rollback");
  auto [kept_active, kept_merged] = MergeHeldIntoActive("user:undo-kept");
  RollbackRequest rb;
  rb.id = "rb_merged";
  rb.filter.policy = "q";
  rb.requested_by = "k_admin";
  auto done = std::make_shared<RollbackRequest>();
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait(Rollback(rb, {*ledger_->store().GetMitigation(active2).value()},
                                           done, kPendingTtl))
                  .ok());
  EXPECT_EQ(done->matched, 1);
  EXPECT_EQ(ledger_->store().GetMitigation(active2).value()->state, MitigationState::kRevoked);
  auto back = *ledger_->store().GetMitigation(merged2);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->state, MitigationState::kActive);
  EXPECT_EQ(back->state_reason,
            absl::StrCat("back in force: ", active2,
                         ", which it had been merged into, was revoked (rollback rb_merged: )"));
  EXPECT_EQ(prior_of_p("user:undo-rollback"), 1);
  EXPECT_EQ(ledger_->store().GetMitigation(kept_merged).value()->state, MitigationState::kExpired);
  EXPECT_EQ(prior_of_p("user:undo-kept"), 1);
  // So does a granted appeal against the absorber.
  auto [active3, merged3] = MergeHeldIntoActive("user:undo-appeal");
  auto appealed = std::make_shared<Appeal>();
  ASSERT_TRUE(ledger_->SubmitAndWait(FileAppeal(active3, "not me", "k_user", appealed, kPendingTtl))
                  .status()
                  .ok());
  int64_t seq = 0;
  auto loaded = LoadAppeal(ledger_->store(), appealed->id, &seq);
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status();
  auto decided = std::make_shared<Appeal>();
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait(DecideAppeal(**loaded, seq, /*grant=*/true, "", "k_reviewer",
                                               decided, kPendingTtl))
                  .ok());
  EXPECT_EQ(ledger_->store().GetMitigation(merged3).value()->state, MitigationState::kRevoked);
  EXPECT_EQ(prior_of_p("user:undo-appeal"), 0);
  // The ledger still verifies: each undo is an ordinary change of its own.
  auto report = ledger::VerifyChain(ledger_->store());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok());
}

// A scheduled decision whose whole window passed before the scheduler saw its start (the
// server was down) was never enforced: it is written expired with a reason that says so,
// and is no prior offence (it used to count, as any enforced decision that ended).
TEST_F(MitigationsTest, AScheduledDecisionStartedOnlyAfterItsExpiryIsNoPriorOffence) {
  CreateRequest r;
  r.entity = *core::Entity::Parse("user:missed");
  r.action = "block";
  r.reason = "r";
  r.policy = "p";
  r.detections = {"d1"};
  r.ttl = absl::Hours(1);
  r.starts_at = clock_.Now() + absl::Minutes(5);
  r.state = MitigationState::kScheduled;
  auto out = std::make_shared<CreateResult>();
  ASSERT_TRUE(
      ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
  const std::string id = out->mitigation.id;
  auto prior = [&] {
    auto n = ledger_->store().CountMitigations(r.entity, "p", "", absl::InfinitePast(),
                                               /*exclude_shadow=*/true);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(-1);
  };
  EXPECT_EQ(prior(), 1);  // scheduled: counts, as it will be enforced
  clock_.Advance(absl::Hours(2));
  auto n = std::make_shared<int>(0);
  ASSERT_TRUE(ledger_->SubmitAndWait(ApplyDue({id}, n)).ok());
  EXPECT_EQ(*n, 1);
  auto m = *ledger_->store().GetMitigation(id);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->state, MitigationState::kExpired);
  EXPECT_EQ(m->state_reason, core::kStartAfterExpiryReason);
  EXPECT_FALSE(core::CountsAsPrior(*m, true));
  EXPECT_EQ(prior(), 0);
}

// At its start, a policy's scheduled decision on an entity protected meanwhile waits for
// a person; one a person made (manual) or approved starts as scheduled.
TEST_F(MitigationsTest, AScheduledStartOnAnEntityProtectedSinceIsHeld) {
  auto scheduled = [&](std::string entity, std::string policy, std::vector<std::string> approvals) {
    CreateRequest r;
    r.entity = *core::Entity::Parse(entity);
    r.action = "block";
    r.reason = "r";
    r.policy = std::move(policy);
    r.starts_at = clock_.Now() + absl::Minutes(5);
    r.state = MitigationState::kScheduled;
    auto out = std::make_shared<CreateResult>();
    EXPECT_TRUE(
        ledger_->SubmitAndWait(CreateMitigation(r, core::ActionCatalog::Default(), out)).ok());
    core::Mitigation m = out->mitigation;
    if (!approvals.empty()) {  // as DecideReview leaves an approved delayed decision
      m.approvals = std::move(approvals);
      EXPECT_TRUE(ledger_
                      ->SubmitAndWait([&](ledger::Txn& txn, absl::Time now) -> absl::Status {
                        return AppendMitigationChange(txn, m, "k_reviewer", now).status();
                      })
                      .ok());
    }
    return m.id;
  };
  const std::string by_policy = scheduled("user:vip", "p", {});
  const std::string manual = scheduled("user:vip2", "", {});
  const std::string approved = scheduled("user:vip3", "p", {"k_reviewer"});
  clock_.Advance(absl::Minutes(6));
  WhyHeldFn why = [](const core::Mitigation& m, absl::Time) -> std::optional<std::string> {
    return absl::StrCat(m.entity.str(), " is on protected list vips");
  };
  auto n = std::make_shared<int>(0);
  ASSERT_TRUE(ledger_->SubmitAndWait(ApplyDue({by_policy, manual, approved}, n, why)).ok());
  EXPECT_EQ(*n, 3);
  auto state = [&](const std::string& id) { return (*ledger_->store().GetMitigation(id))->state; };
  EXPECT_EQ(state(by_policy), MitigationState::kPendingApproval);
  EXPECT_EQ((*ledger_->store().GetMitigation(by_policy))->state_reason,
            "held at its scheduled start: user:vip is on protected list vips");
  EXPECT_EQ(state(manual), MitigationState::kActive);
  EXPECT_EQ(state(approved), MitigationState::kActive);
  // Its approval window runs from the hold (its start), not from the decision: a delay as
  // long as pending_ttl would otherwise leave no time to review it.
  const core::Mitigation held = **ledger_->store().GetMitigation(by_policy);
  EXPECT_EQ(core::PendingSince(held), held.starts_at);
  EXPECT_GT(core::OverAt(held, absl::Minutes(3)), clock_.Now());  // 6 min after the decision
}

TEST_F(MitigationsTest, UnknownActionIsRejected) {
  auto r = Create("user:u1", "obliterate", absl::Hours(1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ledger_->last_seq(), 0);
}

TEST_F(MitigationsTest, RevokeOnceThenConflict) {
  auto c = Create("ip:10.0.0.1", "block", absl::Hours(1));
  ASSERT_TRUE(c.ok());
  auto out = std::make_shared<core::Mitigation>();
  ASSERT_TRUE(ledger_
                  ->SubmitAndWait(
                      RevokeMitigation(c->mitigation.id, "false positive", "k_r", out, kPendingTtl))
                  .ok());
  EXPECT_EQ(out->state, MitigationState::kRevoked);
  EXPECT_EQ(out->state_reason, "false positive");
  auto again =
      ledger_->SubmitAndWait(RevokeMitigation(c->mitigation.id, "x", "k_r", out, kPendingTtl));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  auto missing = ledger_->SubmitAndWait(RevokeMitigation("m_nope", "x", "k_r", out, kPendingTtl));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  // After a revoke a new mitigation of the same action is a new one, not the revoked one.
  auto fresh = Create("ip:10.0.0.1", "block", absl::Hours(1));
  ASSERT_TRUE(fresh.ok());
  EXPECT_TRUE(fresh->created);
}

TEST_F(MitigationsTest, ExpiryIsALedgerChange) {
  auto c = Create("user:u2", "challenge", absl::Minutes(10));
  ASSERT_TRUE(c.ok());
  ExpiryScheduler expiry(ledger_.get(), &clock_);
  auto none = expiry.RunOnce();
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0);
  clock_.Advance(absl::Minutes(10));
  auto one = expiry.RunOnce();
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, 1);
  auto m = ledger_->store().GetMitigation(c->mitigation.id);
  ASSERT_TRUE(m.ok() && m->has_value());
  EXPECT_EQ((*m)->state, MitigationState::kExpired);
  auto changes = ledger_->store().ReadChanges(0, 10);
  ASSERT_TRUE(changes.ok());
  ASSERT_EQ(changes->size(), 2u);
  EXPECT_EQ((*changes)[1].actor, "system");
  auto report = ledger::VerifyChain(ledger_->store());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
}

}  // namespace
}  // namespace quell::workflow
