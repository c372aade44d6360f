// Property test (issue 5): for random sequences of decisions (through the safeguards),
// list changes, reviews, revocations, rollbacks, breaker resets, expiries and restarts,
// the enforcement index equals a replay of the ledger, and no automatic decision against
// a protected entity is ever enforced without a reviewer.
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "index/index.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/mitigations.h"
#include "workflow/reviews.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

constexpr char kYaml[] = R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 2h}
  - {name: suspend, verdict: deny, severity: critical, ttl: 1d}
lists:
  - {name: vips, protected: true}
breakers:
  - {name: s1-rate, source: s1, limit: 15, window: 1h}
policies:
  - {id: p1, on: detection, when: 'true', action: block}
  - {id: p2, on: detection, when: 'true', action: suspend}
)";

core::Entity E(std::string_view s) { return *core::Entity::Parse(s); }

// Keeps an index a view of the ledger, as the server's applier does.
class Applier final : public ledger::ChangeListener {
 public:
  explicit Applier(index::Index* index) : index_(index) {}
  void OnCommitted(const std::vector<ledger::Change>& changes) override {
    for (const auto& c : changes) {
      if (c.kind == ledger::ChangeKind::kMitigation) {
        auto m = core::MitigationFromJson(c.payload);
        ASSERT_TRUE(m.ok());
        ASSERT_TRUE(index_->Apply(*m).ok());
      }
      index_->set_seq(c.seq);
    }
  }
  index::Index* index_;
};

class SafeguardsProperty : public testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/sgp_" + core::RandomHex(6);
    auto set = policy::LoadPolicySet(kYaml, 1);
    ASSERT_TRUE(set.ok()) << set.status();
    set_ = *set;
    Open();
  }
  void TearDown() override {
    Close();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    auto store = ledger::OpenSqliteStore({.path = dir_});
    ASSERT_TRUE(store.ok()) << store.status();
    index_ = std::make_unique<index::Index>();
    auto seq = (*store)->ScanLive([&](const core::Mitigation& m) { return index_->Apply(m); });
    ASSERT_TRUE(seq.ok());
    index_->set_seq(*seq);
    SafeguardOptions o;
    o.pending_ttl = absl::Hours(6);
    o.immunity = absl::Hours(3);
    safeguards_ = std::make_unique<Safeguards>(o, nullptr);
    ASSERT_TRUE(safeguards_->Load(**store, clock_.Now(), Safeguards::Delivery::kLocal).ok());
    applier_ = std::make_unique<Applier>(index_.get());
    auto l = ledger::Ledger::Open(*std::move(store), ledger::LedgerOptions{}, &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
    ledger_->AddListener(applier_.get());
    ledger_->AddListener(safeguards_.get());
  }
  void Close() { ledger_.reset(); }

  std::vector<core::Mitigation> All(std::optional<core::MitigationState> state = std::nullopt) {
    ledger::MitigationQuery q;
    q.state = state;
    q.limit = 10000;
    auto page = ledger_->store().ListMitigations(q);
    EXPECT_TRUE(page.ok());
    return page->mitigations;
  }

  // The replay: the last state of every mitigation in the log, active and unexpired.
  void ExpectIndexEqualsReplay() {
    std::map<std::string, core::Mitigation> last;
    int64_t after = 0;
    while (true) {
      auto page = ledger_->store().ReadChanges(after, 10000);
      ASSERT_TRUE(page.ok());
      if (page->empty()) break;
      for (const auto& c : *page) {
        after = c.seq;
        if (c.kind != ledger::ChangeKind::kMitigation) continue;
        auto m = core::MitigationFromJson(c.payload);
        ASSERT_TRUE(m.ok());
        last[m->id] = *m;
      }
    }
    EXPECT_EQ(index_->seq(), after);
    const absl::Time now = clock_.Now();
    std::map<std::string, std::set<std::string>> want;  // entity -> active ids
    std::map<std::pair<std::string, std::string>, int> per_action;
    size_t active = 0;
    for (const auto& [id, m] : last) {
      if (m.state == core::MitigationState::kActive) {
        ++active;
        if (m.expires_at > now) want[m.entity.str()].insert(id);
        // One active mitigation per entity and action: a revocation lifts it.
        const int n = ++per_action[std::make_pair(m.entity.str(), m.action)];
        EXPECT_EQ(n, 1) << m.entity.str() << " " << m.action;
      }
    }
    EXPECT_EQ(index_->size(), active);
    for (const std::string& e : entities_) {
      index::Hits hits;
      index_->Lookup(E(e), now, &hits);
      std::set<std::string> got;
      for (const auto& h : hits) {
        if (h.cidr_prefix < 0) got.insert(index::DecodeId(h.id));
      }
      EXPECT_EQ(got, want[e]) << e;
    }
  }

  bool ModelProtected(const std::string& e) const {
    if (protected_.count(e)) return true;
    auto ent = E(e);
    if (ent.is_cidr()) {
      auto net = core::ParseNetwork(ent.id());
      for (const std::string& p : protected_) {
        auto pe = E(p);
        if (pe.is_ip() && net->Contains(*core::ParseIp(pe.id()))) return true;
      }
    }
    return false;
  }

  core::FakeClock clock_;
  std::string dir_;
  std::shared_ptr<const policy::PolicySet> set_;
  std::unique_ptr<index::Index> index_;
  std::unique_ptr<Safeguards> safeguards_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<ledger::Ledger> ledger_;
  std::set<std::string> protected_;
  std::vector<std::string> entities_ = {
      "user:u0", "user:u1", "user:u2",     "user:u3",     "user:u4",          "user:u5",
      "user:u6", "user:u7", "ip:10.0.0.1", "ip:10.0.0.2", "cidr:10.0.0.0/30", "cidr:10.0.1.0/24"};
};

TEST_P(SafeguardsProperty, IndexEqualsReplayOfLedger) {
  std::mt19937 rng(GetParam());
  auto pick = [&](auto& v) -> auto& { return v[rng() % v.size()]; };
  std::vector<std::string> reviewers = {"k_r1", "k_r2", "k_r3"};
  int held_checked = 0, n_detection = 0;
  for (int step = 0; step < 400; ++step) {
    int op = rng() % 100;
    if (op < 45) {  // a detection through the safeguards
      std::string entity = pick(entities_);
      const bool p1 = rng() % 2;
      engine::Proposal p;
      p.policy = p1 ? "p1" : "p2";
      p.policy_version = 1;
      p.entity = E(entity);
      p.action = p1 ? "block" : "suspend";
      p.ttl = p1 ? absl::Hours(2) : absl::Hours(24);
      p.reason = "test";
      DetectionWork w;
      w.detection.id = absl::StrCat("d", n_detection++);
      w.detection.source = rng() % 3 ? "s1" : "s2";
      w.detection.type = "t";
      w.detection.entity = p.entity;
      w.detection.observed_at = clock_.Now();
      w.json = "{}";
      w.proposals = {p};
      const bool was_protected = ModelProtected(entity);
      auto out = std::make_shared<std::vector<DetectionOutcome>>();
      std::vector<DetectionWork> work;
      work.push_back(std::move(w));
      ASSERT_TRUE(
          ledger_
              ->SubmitAndWait(ApplyDetections(std::move(work), set_->catalog_ptr(), "k_det", out,
                                              SafeguardContext{safeguards_.get(), set_}))
              .ok());
      if (was_protected) {
        EXPECT_NE((*out)[0].reply.find("\"state\":\"pending_approval\""), std::string::npos)
            << entity << " " << (*out)[0].reply;
        ++held_checked;
      }
    } else if (op < 52) {  // protect or unprotect
      std::string e = pick(entities_);
      if (E(e).is_cidr()) continue;
      bool add = !protected_.count(e);
      auto m = [this, e, add](ledger::Txn& txn, absl::Time) -> absl::Status {
        ledger::Change c;
        c.kind = ledger::ChangeKind::kList;
        c.subject = "vips";
        c.payload =
            absl::StrCat("{\"list\":\"vips\",\"", add ? "add" : "remove", "\":[\"", e, "\"]}");
        auto s = txn.Append(std::move(c), nullptr);
        if (s.ok() && add) safeguards_->NoteProtectedAdds("vips", {e});
        return s.status();
      };
      ASSERT_TRUE(ledger_->SubmitAndWait(m).ok());
      if (add) {
        protected_.insert(e);
      } else {
        protected_.erase(e);
      }
    } else if (op < 67) {  // a review decision
      auto pending = All(core::MitigationState::kPendingApproval);
      if (pending.empty()) continue;
      const core::Mitigation& m = pick(pending);
      auto facts = LoadReviewFacts(ledger_->store(), m);
      ASSERT_TRUE(facts.ok());
      auto out = std::make_shared<ReviewOutcome>();
      const bool expired = m.created_at + absl::Hours(6) <= clock_.Now();
      auto done =
          ledger_->SubmitAndWait(DecideReview(m.id, rng() % 4 != 0, "n", pick(reviewers), *facts,
                                              set_->catalog_ptr(), absl::Hours(6), out));
      if (expired) {  // not yet swept, but never decided
        EXPECT_EQ(done.status().code(), absl::StatusCode::kFailedPrecondition) << done.status();
      } else if (!done.ok()) {
        EXPECT_EQ(done.status().code(), absl::StatusCode::kAlreadyExists) << done.status();
      }
    } else if (op < 75) {  // a manual revoke
      auto active = All(core::MitigationState::kActive);
      if (active.empty()) continue;
      auto out = std::make_shared<core::Mitigation>();
      ASSERT_TRUE(ledger_
                      ->SubmitAndWait(
                          RevokeMitigation(pick(active).id, "manual", "k_r1", out, absl::Hours(6)))
                      .ok());
    } else if (op < 78) {  // a rollback
      RollbackFilter f;
      f.source = rng() % 2 ? "s1" : "s2";
      auto ids = FindRollbackTargets(ledger_->store(), f, clock_.Now(), absl::Hours(6));
      ASSERT_TRUE(ids.ok());
      RollbackRequest r;
      r.id = core::NewId("rb_", clock_.Now());
      r.filter = f;
      r.reason = "oops";
      r.requested_by = "k_admin";
      auto out = std::make_shared<RollbackRequest>();
      ASSERT_TRUE(ledger_->SubmitAndWait(Rollback(r, *ids, out, absl::Hours(6))).ok());
      EXPECT_EQ(out->revoked, static_cast<int64_t>(ids->size()));
    } else if (op < 81) {  // a breaker reset
      auto out = std::make_shared<safeguards::BreakerStatus>();
      ASSERT_TRUE(
          ledger_->SubmitAndWait(safeguards_->ResetBreaker(set_, "s1-rate", "k_admin", out)).ok());
      EXPECT_FALSE(out->open);
    } else if (op < 95) {  // time passes: expiries and pending expiry
      clock_.Advance(absl::Minutes(1 + rng() % 240));
      auto due = ledger_->store().ListDue(clock_.Now(), 10000);
      ASSERT_TRUE(due.ok());
      std::vector<std::string> ids, pending;
      for (const auto& m : *due) ids.push_back(m.id);
      ASSERT_TRUE(ledger_->SubmitAndWait(ApplyDue(ids, std::make_shared<int>())).ok());
      for (const auto& m : All(core::MitigationState::kPendingApproval)) pending.push_back(m.id);
      ASSERT_TRUE(
          ledger_->SubmitAndWait(ExpirePending(pending, absl::Hours(6), std::make_shared<int>()))
              .ok());
    } else {  // restart
      Close();
      Open();
    }
    ExpectIndexEqualsReplay();
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(held_checked, 0);
  // (Protection applies to decisions made while protected: a mitigation that was active
  // before its entity was protected stays until it expires or a person revokes it.)
}

// A person's revoke and a policy's next hit on the same entity in one commit batch (one
// transaction): immunity was noted only once the batch committed, so the hit, screened
// after the revoke, re-blocked the entity (a hunt: 1-5 of 60 tries through the API). The
// API notes it in the transaction (api Context::NotingHumanDecisions, which calls this).
class SafeguardsOneTransaction : public SafeguardsProperty {};

TEST_P(SafeguardsOneTransaction, ARevokeHoldsTheNextHitInItsOwnTransaction) {
  auto hit = [&](const std::string& id) {
    engine::Proposal p;
    p.policy = "p1";
    p.policy_version = 1;
    p.entity = E("user:u0");
    p.action = "block";
    p.ttl = absl::Hours(2);
    p.reason = "test";
    DetectionWork w;
    w.detection.id = id;
    w.detection.source = "s2";
    w.detection.type = "t";
    w.detection.entity = p.entity;
    w.detection.observed_at = clock_.Now();
    w.json = "{}";
    w.proposals = {p};
    std::vector<DetectionWork> work;
    work.push_back(std::move(w));
    auto out = std::make_shared<std::vector<DetectionOutcome>>();
    return std::make_pair(ApplyDetections(std::move(work), set_->catalog_ptr(), "k_det", out,
                                          SafeguardContext{safeguards_.get(), set_}),
                          out);
  };
  auto [first, first_out] = hit("d0");
  ASSERT_TRUE(ledger_->SubmitAndWait(std::move(first)).ok());
  auto active = All(core::MitigationState::kActive);
  ASSERT_EQ(active.size(), 1u);
  for (const bool noted : {false, true}) {
    if (noted) {                       // the next round: a fresh mitigation to revoke
      clock_.Advance(absl::Hours(4));  // past the first round's immunity
      auto [again, again_out] = hit("d-again");
      ASSERT_TRUE(ledger_->SubmitAndWait(std::move(again)).ok());
      active = All(core::MitigationState::kActive);
      ASSERT_EQ(active.size(), 1u);
    }
    auto revoked = std::make_shared<core::Mitigation>();
    auto revoke = RevokeMitigation(active[0].id, "false positive", "k_r1", revoked, absl::Hours(6));
    auto [next, next_out] = hit(noted ? "d2" : "d1");
    auto both = [&, revoke = std::move(revoke), next = std::move(next)](
                    ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
      QUELL_RETURN_IF_ERROR(revoke(txn, now));
      if (noted) safeguards_->NoteHumanDecisionNow(*revoked, now);
      return next(txn, now);
    };
    ASSERT_TRUE(ledger_->SubmitAndWait(std::move(both)).ok());
    const std::string& reply = (*next_out)[0].reply;
    if (noted) {
      EXPECT_NE(reply.find("\"state\":\"pending_approval\""), std::string::npos) << reply;
      EXPECT_NE(reply.find("immunity until"), std::string::npos) << reply;
    } else {  // what the commit listener alone gave: not held
      EXPECT_NE(reply.find("\"state\":\"active\""), std::string::npos) << reply;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, SafeguardsProperty, testing::Values(1, 2, 3, 4, 5));
INSTANTIATE_TEST_SUITE_P(Once, SafeguardsOneTransaction, testing::Values(1));

}  // namespace
}  // namespace quell::workflow
