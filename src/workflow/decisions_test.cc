// ApplyDetections with entity reads done ahead (ReadsAhead + Store::PrefetchEntities, as a
// direct import runs): the reads are used, and the decisions are those made without them.
#include "workflow/decisions.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/time.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/expr.h"
#include "policy/policy_set.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

constexpr char kYaml[] = R"(
actions:
  - {name: block, verdict: deny, severity: medium, ttl: 2h}
  - {name: suspend, verdict: deny, severity: medium, ttl: 1d}
policies:
  - id: p1
    on: detection
    when: 'true'
    action: block
    escalate: [{after: 2, action: suspend}]
    escalate_window: 1d
)";

// A detection `id` of `entity` (source s1, score 0.9) seen at `now`; with `set`, the
// proposals its policies make in an empty environment, final (decided as they are).
DetectionWork Work(std::string id, std::string_view entity, absl::Time now,
                   const policy::PolicySet* set = nullptr) {
  DetectionWork w;
  w.detection.id = std::move(id);
  w.detection.source = "s1";
  w.detection.type = "t";
  w.detection.entity = *core::Entity::Parse(entity);
  w.detection.score = 0.9;
  w.detection.observed_at = now;
  if (set != nullptr) {
    policy::EmptyEnvironment env;
    w.proposals = engine::Evaluate(*set, w.detection, env, now).proposals;
    w.proposals_final = true;
  }
  w.json = absl::StrCat("{\"id\":\"", w.detection.id, "\"}");
  return w;
}

// A policy set and a ledger on a new SQLite store, in a directory removed with it.
struct Scratch {
  std::string dir = testing::TempDir() + "/decisions_" + core::RandomHex(6);
  core::FakeClock clock;
  std::shared_ptr<const policy::PolicySet> set;
  std::unique_ptr<ledger::Ledger> ledger;
  ~Scratch() {
    ledger.reset();
    std::filesystem::remove_all(dir);
  }
};
void Open(std::string_view yaml, Scratch* s) {
  auto set = policy::LoadPolicySet(yaml, 1);
  ASSERT_TRUE(set.ok()) << set.status();
  s->set = *std::move(set);
  auto store = ledger::OpenSqliteStore({.path = s->dir});
  ASSERT_TRUE(store.ok()) << store.status();
  auto ledger = ledger::Ledger::Open(*std::move(store), {}, &s->clock);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  s->ledger = *std::move(ledger);
}

struct Decided {
  std::vector<std::string> actions;  // per detection, in order: the decided action
  int64_t taken = 0;                 // reads done ahead that the Txns used
};

// Four rounds of one detection per user (3 users), one batch per round, a minute apart:
// the third hit on a user escalates to suspend. With `ahead`, each batch's entities are
// read before it is submitted, as quell import --data does.
void Decide(bool ahead, Decided* out) {
  const std::string dir = testing::TempDir() + "/decisions_" + core::RandomHex(6);
  auto set = policy::LoadPolicySet(kYaml, 1);
  ASSERT_TRUE(set.ok()) << set.status();
  // Without the entity cache (as the direct import runs): every read reaches the store.
  auto store = ledger::OpenSqliteStore({.path = dir, .entity_cache_bytes = 0});
  ASSERT_TRUE(store.ok()) << store.status();
  ledger::Store* raw = store->get();
  core::FakeClock clock;
  auto ledger = ledger::Ledger::Open(*std::move(store), {}, &clock);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  for (int round = 0; round < 4; ++round) {
    clock.Advance(absl::Minutes(1));
    const absl::Time now = clock.Now();
    std::vector<DetectionWork> work;
    for (int u = 0; u < 3; ++u) {
      work.push_back(
          Work(absl::StrCat("d", round, "-", u), absl::StrCat("user:u", u), now, set->get()));
    }
    if (ahead) raw->PrefetchEntities(ReadsAhead(work, now));
    auto outcomes = std::make_shared<std::vector<DetectionOutcome>>();
    auto done = (*ledger)->SubmitAndWait(
        ApplyDetections(std::move(work), (*set)->catalog_ptr(), "k_test", outcomes));
    ASSERT_TRUE(done.ok()) << done.status();
    for (const DetectionOutcome& o : *outcomes) {
      out->actions.push_back(o.decisions.empty() ? "-" : o.decisions[0].action);
    }
  }
  auto taken = ledger::SqlitePrefetchTakenForTest(*raw);
  ASSERT_TRUE(taken.ok()) << taken.status();
  out->taken = *taken;
  ledger->reset();
  std::filesystem::remove_all(dir);
}

TEST(ApplyDetections, EntityReadsDoneAheadAreUsedAndDecideAsTheTxnsOwn) {
  Decided plain, ahead;
  ASSERT_NO_FATAL_FAILURE(Decide(false, &plain));
  ASSERT_NO_FATAL_FAILURE(Decide(true, &ahead));
  const std::vector<std::string> expected = {"block",   "block",   "block",    // first hits
                                             "block",   "block",   "block",    // second: extended
                                             "suspend", "suspend", "suspend",  // third: escalated
                                             "suspend", "suspend", "suspend"};
  EXPECT_EQ(plain.actions, expected);
  EXPECT_EQ(ahead.actions, expected);
  EXPECT_EQ(plain.taken, 0);
  // Rounds 2-4 read entities that have mitigations (round 1's are known to have none).
  EXPECT_EQ(ahead.taken, 9);
}

// A block (2 h) takes two hits, then expires and its `expired` change is written; a third
// hit within the escalation window (1 d) is the third of the policy's: suspend. The hit
// recorded on the block counted only while the block was live, so this was a block.
TEST(ApplyDetections, HitsOnAnEnforcedMitigationThatExpiredStillCount) {
  Scratch t;
  ASSERT_NO_FATAL_FAILURE(Open(kYaml, &t));
  auto hit = [&](int n) {
    std::vector<DetectionWork> work;
    work.push_back(Work(absl::StrCat("d", n), "user:u", t.clock.Now(), t.set.get()));
    auto outcomes = std::make_shared<std::vector<DetectionOutcome>>();
    EXPECT_TRUE(t.ledger
                    ->SubmitAndWait(
                        ApplyDetections(std::move(work), t.set->catalog_ptr(), "k_test", outcomes))
                    .ok());
    return outcomes->at(0).decisions.at(0).action;
  };
  EXPECT_EQ(hit(1), "block");
  t.clock.Advance(absl::Minutes(1));
  EXPECT_EQ(hit(2), "block");  // recorded on the first, extended
  ledger::MitigationQuery q;
  q.entity = *core::Entity::Parse("user:u");
  auto page = t.ledger->store().ListMitigations(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->mitigations.size(), 1u);
  const std::string id = page->mitigations[0].id;
  t.clock.Advance(absl::Hours(3));
  auto expired = std::make_shared<int>();
  ASSERT_TRUE(t.ledger->SubmitAndWait(ApplyDue({id}, expired)).ok());
  ASSERT_EQ(*expired, 1);
  EXPECT_EQ(hit(3), "suspend");
}

// A list of networks, as `known_vpn_ranges` holds them, and a detection per address.
constexpr char kListYaml[] = R"(
actions:
  - {name: flag, verdict: allow, severity: low, ttl: 2h}
lists:
  - {name: vpn}
policies:
  - {id: via-vpn, on: detection, when: 'in_list("vpn", entity)', action: flag}
)";

ledger::Mutation AddToList(std::string payload) {
  return [payload = std::move(payload)](ledger::Txn& txn, absl::Time) -> absl::Status {
    ledger::Change c;
    c.kind = ledger::ChangeKind::kList;
    c.actor = "test";
    c.payload = payload;
    return txn.Append(std::move(c), nullptr).status();
  };
}

// SPEC: a cidr: id matches every ip: inside it. The commit-time evaluation (what a direct
// import, and the server for a detection whose decision reads the ledger, run) read an
// address inside a listed network as unlisted.
TEST(EvaluateInTxn, AnAddressInsideAListedNetworkIsOnTheList) {
  Scratch t;
  ASSERT_NO_FATAL_FAILURE(Open(kListYaml, &t));
  ASSERT_TRUE(t.ledger
                  ->SubmitAndWait(AddToList(
                      R"({"list":"vpn","add":["cidr:203.0.113.0/24","cidr:2001:db8::/32"]})"))
                  .ok());
  std::vector<DetectionWork> work;
  for (const char* entity : {"ip:203.0.113.9", "ip:203.0.114.9", "ip:2001:db8::7",
                             "cidr:203.0.113.128/25", "cidr:203.0.0.0/16"}) {
    work.push_back(Work(absl::StrCat("d", work.size()), entity, t.clock.Now()));
  }
  auto outcomes = std::make_shared<std::vector<DetectionOutcome>>();
  auto done = t.ledger->SubmitAndWait(ApplyDetections(
      std::move(work), t.set->catalog_ptr(), "k_test", outcomes, {}, EvaluateInTxn(t.set)));
  ASSERT_TRUE(done.ok()) << done.status();
  std::vector<size_t> decided;
  for (const DetectionOutcome& o : *outcomes) decided.push_back(o.decisions.size());
  EXPECT_EQ(decided, (std::vector<size_t>{1, 0, 1, 1, 0}));
}

// The live evaluation's view of the lists (Safeguards::ListHas): as loaded from the store,
// as committed changes move it, and with a network noted before its change commits.
TEST(SafeguardsListHas, AnAddressInsideAListedNetworkIsOnTheList) {
  const std::string dir = testing::TempDir() + "/decisions_" + core::RandomHex(6);
  auto store = ledger::OpenSqliteStore({.path = dir});
  ASSERT_TRUE(store.ok()) << store.status();
  core::FakeClock clock;
  auto E = [](std::string_view s) { return *core::Entity::Parse(s); };
  {
    auto txn = (*store)->Begin(clock.Now());
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(
        AddToList(R"({"list":"vpn","add":["cidr:10.0.0.0/8","ip:192.0.2.1"]})")(**txn, clock.Now())
            .ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  Safeguards sg(SafeguardOptions{}, nullptr);
  ASSERT_TRUE(sg.Load(**store, clock.Now(), Safeguards::Delivery::kLocal).ok());
  EXPECT_TRUE(sg.ListHas("vpn", E("ip:10.9.8.7")));
  EXPECT_TRUE(sg.ListHas("vpn", E("ip:192.0.2.1")));
  EXPECT_TRUE(sg.ListHas("vpn", E("cidr:10.9.0.0/16")));
  EXPECT_FALSE(sg.ListHas("vpn", E("ip:11.0.0.1")));
  EXPECT_FALSE(sg.ListHas("vpn", E("ip:::a09:807")));  // 10.9.8.7's bits, but IPv6
  EXPECT_FALSE(sg.ListHas("vpn", E("cidr:0.0.0.0/0")));
  EXPECT_FALSE(sg.ListHas("vpn", E("cidr:192.0.2.0/24")));
  EXPECT_FALSE(sg.ListHas("other", E("ip:10.9.8.7")));

  auto ledger = ledger::Ledger::Open(*std::move(store), {}, &clock);
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  (*ledger)->AddListener(&sg);
  ASSERT_TRUE(
      (*ledger)
          ->SubmitAndWait(AddToList(
              R"({"list":"vpn","add":["cidr:2001:db8::/32"],"remove":["cidr:10.0.0.0/8"]})"))
          .ok());
  EXPECT_FALSE(sg.ListHas("vpn", E("ip:10.9.8.7")));
  EXPECT_TRUE(sg.ListHas("vpn", E("ip:2001:db8::1")));
  sg.NoteProtectedAdds("vpn", {"cidr:172.16.0.0/12"});
  EXPECT_TRUE(sg.ListHas("vpn", E("ip:172.20.0.1")));
  ledger->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace quell::workflow
