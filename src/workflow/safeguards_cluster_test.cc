// Breaker windows counted across nodes (issue 8): two Safeguards, each the view of one
// "node", follow the same committed changes (as every node follows the PostgreSQL feed)
// while the decisions are split between them. The breaker must open at its limit counted
// over both nodes' decisions, each counted once.
//
// Node A hears the changes as the commit thread hands them over (mitigation attached);
// node B as a feed delivers them, read back from the store (payload only).
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

constexpr char kYaml[] = R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 2h}
breakers:
  - {name: s1-rate, source: s1, limit: 6, window: 1h}
policies:
  - {id: p1, on: detection, when: 'true', action: block}
)";

// kYaml's action and policy with `breakers` (YAML list items, each a line; "" for none)
// as version `version`: the sets a test publishes later.
std::shared_ptr<const policy::PolicySet> SetWith(std::string_view breakers, int64_t version) {
  std::string yaml = "actions:\n  - {name: block, verdict: deny, severity: high, ttl: 2h}\n";
  if (!breakers.empty()) (yaml += "breakers:\n").append(breakers);
  yaml += "policies:\n  - {id: p1, on: detection, when: 'true', action: block}\n";
  auto set = policy::LoadPolicySet(yaml, version);
  EXPECT_TRUE(set.ok()) << set.status();
  return set.ok() ? *set : nullptr;
}

// Forwards every committed change without the attached mitigation, as a change read
// back from the store (another node's feed) arrives; while lagging, holds them back
// until Flush.
class AsReadFromStore final : public ledger::ChangeListener {
 public:
  explicit AsReadFromStore(ledger::ChangeListener* next) : next_(next) {}
  void OnCommitted(const std::vector<ledger::Change>& changes) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const ledger::Change& c : changes) {
      held_.push_back(c);
      held_.back().mitigation.reset();
    }
    if (!lagging_) Deliver();
  }
  void Lag() {
    std::lock_guard<std::mutex> lock(mu_);
    lagging_ = true;
  }
  void Flush() {
    std::lock_guard<std::mutex> lock(mu_);
    lagging_ = false;
    Deliver();
  }

 private:
  void Deliver() {
    next_->OnCommitted(held_);
    held_.clear();
  }
  ledger::ChangeListener* next_;
  std::mutex mu_;
  bool lagging_ = false;
  std::vector<ledger::Change> held_;
};

class SafeguardsCluster : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir() + "/sgc_" + core::RandomHex(6);
    auto set = policy::LoadPolicySet(kYaml, 1);
    ASSERT_TRUE(set.ok()) << set.status();
    set_ = *set;
    auto store = ledger::OpenSqliteStore({.path = dir_});
    ASSERT_TRUE(store.ok()) << store.status();
    a_ = std::make_unique<Safeguards>(SafeguardOptions{}, nullptr);
    b_ = std::make_unique<Safeguards>(SafeguardOptions{}, nullptr);
    ASSERT_TRUE(a_->Load(**store, clock_.Now(), Safeguards::Delivery::kFeed).ok());
    ASSERT_TRUE(b_->Load(**store, clock_.Now(), Safeguards::Delivery::kFeed).ok());
    b_feed_ = std::make_unique<AsReadFromStore>(b_.get());
    auto l = ledger::Ledger::Open(*std::move(store), ledger::LedgerOptions{}, &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
    ledger_->AddListener(a_.get());
    ledger_->AddListener(b_feed_.get());
  }
  void TearDown() override {
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }

  struct Decided {
    std::string state;
    std::string reply;
  };
  // One detection of `source` on `entity`, decided by `node` (its safeguards screen it).
  Decided Decide(Safeguards* node, std::string_view entity, std::string source = "s1",
                 bool shadow = false, absl::Duration delay = absl::ZeroDuration()) {
    engine::Proposal p;
    p.policy = "p1";
    p.policy_version = 1;
    p.entity = *core::Entity::Parse(entity);
    p.action = "block";
    p.ttl = absl::Hours(2);
    p.reason = "test";
    p.shadow = shadow;
    p.delay = delay;
    DetectionWork w;
    w.detection.id = absl::StrCat("d", ++detections_);
    w.detection.source = std::move(source);
    w.detection.type = "t";
    w.detection.entity = p.entity;
    w.detection.observed_at = clock_.Now();
    w.json = "{}";
    w.proposals = {p};
    std::vector<DetectionWork> work;
    work.push_back(std::move(w));
    auto out = std::make_shared<std::vector<DetectionOutcome>>();
    auto done = ledger_->SubmitAndWait(ApplyDetections(std::move(work), set_->catalog_ptr(),
                                                       "k_det", out, SafeguardContext{node, set_}));
    EXPECT_TRUE(done.ok()) << done.status();
    if (!done.ok() || out->size() != 1 || (*out)[0].decisions.size() != 1) return {};
    return {std::string(core::StateName((*out)[0].decisions[0].state)), (*out)[0].reply};
  }

  safeguards::BreakerStatus Breaker(Safeguards* node) {
    auto list = node->Breakers(*set_, clock_.Now());
    EXPECT_EQ(list.size(), 1u);
    return list.empty() ? safeguards::BreakerStatus{} : list[0];
  }

  int BreakerChanges() {
    auto page = ledger_->store().ReadChangesOfKind(ledger::ChangeKind::kBreaker, 0, 1000);
    EXPECT_TRUE(page.ok());
    return page.ok() ? static_cast<int>(page->size()) : -1;
  }

  std::string dir_;
  core::FakeClock clock_{absl::FromUnixSeconds(1800000000)};
  std::shared_ptr<const policy::PolicySet> set_;
  std::unique_ptr<Safeguards> a_, b_;
  std::unique_ptr<AsReadFromStore> b_feed_;
  std::unique_ptr<ledger::Ledger> ledger_;
  int detections_ = 0;
};

// A decision on an entity whose mitigation of the action is past its expiry (its
// `expired` change not written yet) creates a new one: it counts in the breakers. It was
// screened as an extension of the old one and never counted.
TEST_F(SafeguardsCluster, ACreationAfterAnUnsweptExpiryCounts) {
  EXPECT_EQ(Decide(a_.get(), "user:again").state, "active");
  clock_.Advance(absl::Hours(2) + absl::Seconds(1));  // past the 2h ttl; no scheduler here
  EXPECT_EQ(Breaker(a_.get()).count, 0);              // and out of the 1h window
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(Decide(a_.get(), absl::StrCat("user:n", i)).state, "active") << i;
  }
  // The seventh creation in the window opens the breaker and is held, as any would be
  // (screened as an extension, it went through active and was counted only afterwards).
  EXPECT_EQ(Decide(a_.get(), "user:again").state, "pending_approval");
  EXPECT_TRUE(Breaker(a_.get()).open);
}

TEST_F(SafeguardsCluster, TheLimitAppliesToBothNodesDecisionsInAll) {
  // Six creations in all pass, three by each node; both count all six, each once.
  for (int i = 0; i < 6; ++i) {
    Safeguards* node = i % 2 ? b_.get() : a_.get();
    EXPECT_EQ(Decide(node, absl::StrCat("user:u", i)).state, "active") << i;
    EXPECT_EQ(Breaker(a_.get()).count, i + 1) << i;
    EXPECT_EQ(Breaker(b_.get()).count, i + 1) << i;
    // Shadow decisions and other sources' are not in its count.
    Decide(node, absl::StrCat("user:s", i), "s1", /*shadow=*/true);
    Decide(node, absl::StrCat("user:o", i), "s2");
  }
  EXPECT_EQ(Breaker(a_.get()).count, 6);
  EXPECT_EQ(Breaker(b_.get()).count, 6);
  EXPECT_FALSE(Breaker(a_.get()).open);
  EXPECT_FALSE(Breaker(b_.get()).open);
  // The seventh, on either node, opens it there; the other node follows the change.
  Decided seventh = Decide(b_.get(), "user:u6");
  EXPECT_EQ(seventh.state, "pending_approval");
  EXPECT_NE(seventh.reply.find("breaker s1-rate is open"), std::string::npos) << seventh.reply;
  EXPECT_TRUE(Breaker(a_.get()).open);
  EXPECT_TRUE(Breaker(b_.get()).open);
  EXPECT_EQ(BreakerChanges(), 1);
  EXPECT_EQ(Decide(a_.get(), "user:u7").state, "pending_approval");
  EXPECT_EQ(Decide(b_.get(), "user:u8").state, "pending_approval");
  EXPECT_EQ(Decide(a_.get(), "user:o9", "s2").state, "active");  // out of scope
  // A counted B's creations (three of s1, three of s2 out of scope) as remote, none of
  // its own; B's held ones are no creations.
  EXPECT_EQ(a_->metrics().remote_decisions.load(), 6);
  EXPECT_EQ(b_->metrics().remote_decisions.load(), 7);
  EXPECT_EQ(BreakerChanges(), 1);
}

TEST_F(SafeguardsCluster, ScheduledCreationsCountExtensionsDoNotAndAnOpenBreakerHoldsThem) {
  // Repeated hits on one entity extend its live mitigation: one creation, counted once.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Decide(i % 2 ? b_.get() : a_.get(), "user:x").state, "active") << i;
  }
  EXPECT_EQ(Breaker(a_.get()).count, 1);
  EXPECT_EQ(Breaker(b_.get()).count, 1);
  // Delayed enforcement: scheduled creations count (and a repeat extends them).
  EXPECT_EQ(Decide(b_.get(), "user:later", "s1", false, absl::Hours(1)).state, "scheduled");
  EXPECT_EQ(Decide(a_.get(), "user:later", "s1", false, absl::Hours(1)).state, "scheduled");
  EXPECT_EQ(Breaker(a_.get()).count, 2);
  EXPECT_EQ(Breaker(b_.get()).count, 2);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Decide(i % 2 ? a_.get() : b_.get(), absl::StrCat("user:n", i)).state, "active");
  }
  EXPECT_EQ(Breaker(a_.get()).count, 6);
  EXPECT_EQ(Decide(a_.get(), "user:n4").state, "pending_approval");
  // Open: a hit on a live mitigation is held too, on both nodes.
  EXPECT_EQ(Decide(b_.get(), "user:x").state, "pending_approval");
  EXPECT_EQ(Decide(a_.get(), "user:x").state, "pending_approval");
}

TEST_F(SafeguardsCluster, ANodeThatNeverScreenedCountsWhatTheOtherDecided) {
  // B has no policy set yet (nothing asked it): it keeps A's decisions until it has one.
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(Decide(a_.get(), absl::StrCat("user:u", i)).state, "active");
  EXPECT_EQ(Decide(b_.get(), "user:u6").state, "pending_approval");
  EXPECT_TRUE(Breaker(a_.get()).open);
  EXPECT_EQ(BreakerChanges(), 1);
}

// A node started afresh (a restart, or an import resumed after Ctrl-C: both build their
// safeguards anew) counts the decisions the ledger holds within the window: its breaker
// opens at the limit counted over them. It started empty, and let a whole limit more pass.
TEST_F(SafeguardsCluster, ARestartedNodeCountsTheWindowFromTheLedger) {
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Decide(a_.get(), absl::StrCat("user:u", i)).state, "active");
  }
  clock_.Advance(absl::Minutes(30));  // still within the 1h window
  Safeguards restarted(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      restarted.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get())
          .ok());
  EXPECT_EQ(Decide(&restarted, "user:u4").state, "active");
  EXPECT_EQ(Decide(&restarted, "user:u5").state, "active");
  EXPECT_EQ(Decide(&restarted, "user:u6").state, "pending_approval");
  EXPECT_TRUE(Breaker(&restarted).open);
  // Open, it keeps (and shows) the count it opened at across another restart.
  Safeguards again(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      again.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get()).ok());
  EXPECT_TRUE(Breaker(&again).open);
  EXPECT_EQ(Breaker(&again).count, 6);
  // Past the window it is still open (until a person resets it) and shows the count it
  // opened at, the ledger's, not what is left of its window (ARestartKeepsAWindowLonger...
  // checks that a restart counts no decision older than the window).
  clock_.Advance(absl::Hours(2));
  Safeguards later(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      later.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get()).ok());
  EXPECT_TRUE(Breaker(&later).open);
  EXPECT_EQ(Breaker(&later).count, 6);
}

// A reset wipes the breaker's counts; a restart afterwards must not count the decisions
// before the reset back in (the recount did, and the next decision reopened it).
TEST_F(SafeguardsCluster, ARestartAfterAResetCountsOnlyWhatCameAfterIt) {
  for (int i = 0; i < 7; ++i) Decide(a_.get(), absl::StrCat("user:u", i));
  ASSERT_TRUE(Breaker(a_.get()).open);
  clock_.Advance(absl::Minutes(1));
  auto out = std::make_shared<safeguards::BreakerStatus>();
  ASSERT_TRUE(ledger_->SubmitAndWait(a_->ResetBreaker(set_, "s1-rate", "k_admin", out)).ok());
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(Decide(a_.get(), "user:v0").state, "active");  // one after the reset
  // A later publish (the breaker not reshaped) keeps its counts: the reset is not
  // replayed then (it wiped them at every publish).
  const int64_t before = Breaker(a_.get()).count;
  EXPECT_GT(before, 0);
  auto set2 = policy::LoadPolicySet(kYaml, 2);
  ASSERT_TRUE(set2.ok()) << set2.status();
  auto after_publish = a_->Breakers(**set2, clock_.Now());
  ASSERT_EQ(after_publish.size(), 1u);
  EXPECT_EQ(after_publish[0].count, before);
  Safeguards restarted(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      restarted.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get())
          .ok());
  EXPECT_EQ(Breaker(&restarted).count, 1);
  for (int i = 1; i < 6; ++i) {
    EXPECT_EQ(Decide(&restarted, absl::StrCat("user:v", i)).state, "active") << i;
  }
  EXPECT_EQ(Decide(&restarted, "user:v6").state, "pending_approval");
}

TEST_F(SafeguardsCluster, AResetClosesItOnBothNodesAndTheyCountAfreshTogether) {
  for (int i = 0; i < 7; ++i) Decide(i % 2 ? b_.get() : a_.get(), absl::StrCat("user:u", i));
  ASSERT_TRUE(Breaker(b_.get()).open);
  auto out = std::make_shared<safeguards::BreakerStatus>();
  ASSERT_TRUE(ledger_->SubmitAndWait(a_->ResetBreaker(set_, "s1-rate", "k_admin", out)).ok());
  EXPECT_FALSE(Breaker(a_.get()).open);
  EXPECT_FALSE(Breaker(b_.get()).open);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(Decide(i % 2 ? a_.get() : b_.get(), absl::StrCat("user:v", i)).state, "active");
  }
  EXPECT_EQ(Decide(a_.get(), "user:v6").state, "pending_approval");
}

TEST_F(SafeguardsCluster, NearTheLimitANodeReadsWhatItsLaggingFeedHasNotDelivered) {
  EXPECT_EQ(Breaker(b_.get()).count, 0);
  b_feed_->Lag();  // B's feed stops: A's decisions reach B only through the store
  for (std::string_view e : {"user:a0", "user:a0", "user:a1", "user:a1"}) {
    EXPECT_EQ(Decide(a_.get(), e).state, "active") << e;  // the repeats extend
  }
  // Four changes B has not seen, two of them creations. Far from the limit (its count
  // + this one + 4 unseen <= 6) B reads nothing.
  EXPECT_EQ(Decide(b_.get(), "user:b0").state, "active");
  EXPECT_EQ(Decide(b_.get(), "user:b1").state, "active");
  EXPECT_EQ(Breaker(b_.get()).count, 2);
  // Near it (2 + 1 + 4 > 6) B reads them: A's two creations count, its own not again.
  EXPECT_EQ(Decide(b_.get(), "user:b2").state, "active");
  EXPECT_EQ(Breaker(b_.get()).count, 5);
  EXPECT_EQ(Breaker(a_.get()).count, 5);
  // The feed catches up: nothing it delivers now is counted a second time.
  b_feed_->Flush();
  EXPECT_EQ(Breaker(b_.get()).count, 5);
  EXPECT_EQ(Decide(b_.get(), "user:b3").state, "active");
  EXPECT_EQ(Decide(b_.get(), "user:b4").state, "pending_approval");
  EXPECT_EQ(Decide(a_.get(), "user:a2").state, "pending_approval");
  // Again with the feed lagging, now on the other side of a reset: six in all pass.
  auto out = std::make_shared<safeguards::BreakerStatus>();
  ASSERT_TRUE(ledger_->SubmitAndWait(a_->ResetBreaker(set_, "s1-rate", "k_admin", out)).ok());
  b_feed_->Lag();
  int active = 0;
  for (int i = 0; i < 12; ++i) {
    // A decides three for each of B's, and B never hears of them from its feed.
    Safeguards* node = i % 4 == 3 ? b_.get() : a_.get();
    active += Decide(node, absl::StrCat("user:c", i)).state == "active";
  }
  b_feed_->Flush();
  EXPECT_EQ(active, 6);
}

// A policy set published later that adds a breaker, or reshapes one (window, scope),
// counts the decisions already made in its window: they started empty, and the publish
// let a whole limit more through. Node A hears the decisions from its commit thread, B
// from its feed; both count them, and a reset before the publish still wipes what came
// before it.
TEST_F(SafeguardsCluster, ABreakerALaterSetAddsOrReshapesCountsTheRecentDecisions) {
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Decide(a_.get(), absl::StrCat("user:u", i)).state, "active");
    if (i < 2) {
      EXPECT_EQ(Decide(b_.get(), absl::StrCat("user:v", i), "s2").state, "active");
    }
  }
  EXPECT_EQ(Breaker(a_.get()).count, 3);  // s1's only
  clock_.Advance(absl::Minutes(5));
  auto set2 = SetWith(
      "  - {name: s1-rate, source: s2, limit: 6, window: 1h}\n"
      "  - {name: all-rate, limit: 6, window: 30m}\n",
      2);
  ASSERT_NE(set2, nullptr);
  set_ = set2;
  for (Safeguards* node : {a_.get(), b_.get()}) {
    std::map<std::string, int64_t> counts;
    for (const auto& b : node->Breakers(*set_, clock_.Now())) counts[b.spec.name] = b.count;
    // s1-rate now counts source s2: its two, not s1's three.
    EXPECT_EQ(counts, (std::map<std::string, int64_t>{{"all-rate", 5}, {"s1-rate", 2}}));
  }
  EXPECT_EQ(Decide(b_.get(), "user:w0", "s3").state, "active");  // the 6th in 30 minutes
  EXPECT_EQ(Decide(a_.get(), "user:w1", "s3").state, "pending_approval");
  // Reset, then reshaped again: it counts only what came after the reset.
  auto out = std::make_shared<safeguards::BreakerStatus>();
  ASSERT_TRUE(ledger_->SubmitAndWait(a_->ResetBreaker(set_, "all-rate", "k_admin", out)).ok());
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(Decide(a_.get(), "user:w2", "s3").state, "active");
  auto set3 = SetWith("  - {name: all-rate, limit: 7, window: 1h}\n", 3);
  ASSERT_NE(set3, nullptr);
  set_ = set3;
  EXPECT_EQ(Breaker(a_.get()).count, 1);
  EXPECT_EQ(Breaker(b_.get()).count, 1);
}

// The first set with breakers counts the decisions made before, under a set without
// any: this node's own too (they were never counted, the other node's were).
TEST_F(SafeguardsCluster, TheFirstSetWithBreakersCountsTheDecisionsMadeWithoutThem) {
  auto none = SetWith("", 1);
  ASSERT_NE(none, nullptr);
  auto with = set_;
  set_ = none;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Decide(a_.get(), absl::StrCat("user:u", i)).state, "active");
  }
  set_ = with;
  EXPECT_EQ(Breaker(a_.get()).count, 4);
  EXPECT_EQ(Breaker(b_.get()).count, 4);
  EXPECT_EQ(Decide(a_.get(), "user:u4").state, "active");
  EXPECT_EQ(Decide(b_.get(), "user:u5").state, "active");
  EXPECT_EQ(Decide(a_.get(), "user:u6").state, "pending_approval");
}

// What ABreakerALaterSetAdds... builds on, at its edges: a decision of this node whose
// change its lagging feed has not brought back yet counts in a breaker a set published
// meanwhile adds; a breaker the ledger has open comes back open when a later set
// declares it again; and a restart keeps a window longer than a day whole.
TEST_F(SafeguardsCluster, ANewBreakerCountsDecisionsInFlightAndKeepsTheLedgersOpenState) {
  b_feed_->Lag();  // B's own decisions do not come back to it
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Decide(b_.get(), absl::StrCat("user:u", i)).state, "active");
  }
  auto with_all = SetWith(
      "  - {name: s1-rate, source: s1, limit: 6, window: 1h}\n"
      "  - {name: all-rate, limit: 100, window: 1h}\n",
      2);
  ASSERT_NE(with_all, nullptr);
  auto count = [&](Safeguards* node, const policy::PolicySet& set, std::string_view name) {
    for (const auto& b : node->Breakers(set, clock_.Now())) {
      if (b.spec.name == name) return b.open ? -b.count - 1 : b.count;  // open: negative
    }
    return int64_t{-1000};
  };
  EXPECT_EQ(count(b_.get(), *with_all, "all-rate"), 3);
  b_feed_->Flush();
  EXPECT_EQ(count(b_.get(), *with_all, "all-rate"), 3);  // not again when they come back
  // s1-rate opens; a set without it, then one with it again: it is open (the ledger says
  // so), not a closed breaker counting afresh.
  for (int i = 3; i < 7; ++i) Decide(a_.get(), absl::StrCat("user:u", i));
  ASSERT_TRUE(Breaker(a_.get()).open);
  auto without = SetWith("  - {name: all-rate, limit: 100, window: 1h}\n", 3);
  ASSERT_NE(without, nullptr);
  EXPECT_EQ(count(a_.get(), *without, "s1-rate"), -1000);
  auto again = policy::LoadPolicySet(kYaml, 4);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_LT(count(a_.get(), **again, "s1-rate"), 0);  // open
  EXPECT_LT(count(b_.get(), **again, "s1-rate"), 0);
}

TEST_F(SafeguardsCluster, ARestartKeepsAWindowLongerThanADayWhole) {
  auto two_days = SetWith("  - {name: s1-rate, source: s1, limit: 6, window: 48h}\n", 1);
  ASSERT_NE(two_days, nullptr);
  set_ = two_days;
  Decide(a_.get(), "user:u0");
  Decide(a_.get(), "user:u1");
  clock_.Advance(absl::Hours(30));
  Decide(a_.get(), "user:u2");
  Decide(a_.get(), "user:u3");
  EXPECT_EQ(Breaker(a_.get()).count, 4);
  Safeguards restarted(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      restarted.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get())
          .ok());
  EXPECT_EQ(Breaker(&restarted).count, 4);
  // 55 hours after the first two (past the window and its last bucket): those two are not
  // counted again.
  clock_.Advance(absl::Hours(25));
  Safeguards later(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      later.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get()).ok());
  EXPECT_EQ(Breaker(&later).count, 2);
}

// An open breaker shows the count it opened at, the ledger's: a restart counted the
// decisions before its last reset back into its window (80 over a limit of 50 in a
// hunt), and a reshape of its window showed 0.
TEST_F(SafeguardsCluster, AnOpenBreakerShowsTheCountItOpenedAt) {
  for (int i = 0; i < 7; ++i) Decide(a_.get(), absl::StrCat("user:u", i));
  ASSERT_TRUE(Breaker(a_.get()).open);
  auto out = std::make_shared<safeguards::BreakerStatus>();
  ASSERT_TRUE(ledger_->SubmitAndWait(a_->ResetBreaker(set_, "s1-rate", "k_admin", out)).ok());
  clock_.Advance(absl::Minutes(1));
  for (int i = 0; i < 7; ++i) Decide(a_.get(), absl::StrCat("user:v", i));
  ASSERT_TRUE(Breaker(a_.get()).open);
  EXPECT_EQ(Breaker(a_.get()).count, 6);
  Safeguards restarted(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(
      restarted.Load(ledger_->store(), clock_.Now(), Safeguards::Delivery::kLocal, set_.get())
          .ok());
  EXPECT_TRUE(Breaker(&restarted).open);
  EXPECT_EQ(Breaker(&restarted).count, 6);  // was 12: the 6 before the reset as well
  auto wider = SetWith("  - {name: s1-rate, source: s1, limit: 6, window: 2h}\n", 2);
  ASSERT_NE(wider, nullptr);
  set_ = wider;
  EXPECT_TRUE(Breaker(&restarted).open);
  EXPECT_EQ(Breaker(&restarted).count, 6);  // was 0
}

}  // namespace
}  // namespace quell::workflow
