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
      DetectionWork w;
      w.detection.id = absl::StrCat("d", round, "-", u);
      w.detection.source = "s1";
      w.detection.type = "t";
      w.detection.entity = *core::Entity::Parse(absl::StrCat("user:u", u));
      w.detection.score = 0.9;
      w.detection.observed_at = now;
      policy::EmptyEnvironment env;
      w.proposals = engine::Evaluate(**set, w.detection, env, now).proposals;
      w.proposals_final = true;
      w.json = absl::StrCat("{\"id\":\"", w.detection.id, "\"}");
      work.push_back(std::move(w));
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

}  // namespace
}  // namespace quell::workflow
