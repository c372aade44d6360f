// Benchmark of issue 8 (breakers across nodes): what following the other nodes'
// decisions costs a node. Every node's Safeguards reads every mitigation creation the
// feed delivers (payload only, as read from PostgreSQL) and counts it in its breakers.
//
//  * BM_FollowCreations/breakers:{0,1}: OnCommitted over pages of 1,000 other nodes'
//    creations, without breakers (the set has none: nothing is read) and with the two
//    counting breakers of safeguards_bench (a plain and a relative one). Reports
//    creations/s on one core; a cluster at 10,000 decisions/s feeds each node about
//    that many.
//
//   ninja -C build safeguards_cluster_bench && build/src/workflow/safeguards_cluster_bench
#include <benchmark/benchmark.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "ledger/change.h"
#include "policy/policy_set.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

constexpr char kWithBreakers[] = R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 2h}
breakers:
  - {name: global-rate, limit: 100000000, window: 10m}
  - {name: source-rate, source: bench, limit: 100000000, window: 1h, relative: {factor: 5, baseline: 7d}}
policies:
  - {id: p1, on: detection, when: 'true', action: block}
)";
constexpr char kWithout[] = R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 2h}
policies:
  - {id: p1, on: detection, when: 'true', action: block}
)";

// A page of creations as another node's feed delivers them: payload, no mitigation.
std::vector<ledger::Change> Page(int64_t first_seq, int n, absl::Time at) {
  std::vector<ledger::Change> page;
  page.reserve(n);
  for (int64_t i = first_seq; i < first_seq + n; ++i) {
    core::Mitigation m;
    m.id = absl::StrCat("m_", i);
    m.entity = *core::Entity::Parse(absl::StrCat("user:u", i));
    m.action = "block";
    m.created_at = m.updated_at = m.starts_at = at;
    m.expires_at = at + absl::Hours(2);
    m.reason = "bench: a reason of ordinary length, as policies write them";
    m.source = "bench";
    m.policy = "p1";
    m.policy_version = 1;
    m.actor = "k_detector";
    m.detections = {absl::StrCat("d", i)};
    m.seq = i;
    ledger::Change c;
    c.seq = i;
    c.at = at;
    c.kind = ledger::ChangeKind::kMitigation;
    c.subject = m.id;
    c.entity = m.entity.str();
    c.payload = core::MitigationToJson(m);
    page.push_back(std::move(c));
  }
  return page;
}

void BM_FollowCreations(benchmark::State& state) {
  const bool breakers = state.range(0) != 0;
  auto set = policy::LoadPolicySet(breakers ? kWithBreakers : kWithout, 1);
  if (!set.ok()) return state.SkipWithError("policy set");
  Safeguards sg(SafeguardOptions{}, nullptr);
  const absl::Time t0 = absl::FromUnixSeconds(1800000000);
  (void)sg.Breakers(**set, t0);  // configures the bank, as the first decision would
  constexpr int kPage = 1000;
  // The pages are made outside the timing, a few distinct ones reused with new seqs.
  std::vector<std::vector<ledger::Change>> pages;
  for (int p = 0; p < 16; ++p) pages.push_back(Page(1 + p * kPage, kPage, t0));
  int64_t seq = 1, done = 0;
  for (auto _ : state) {
    std::vector<ledger::Change>& page = pages[(done / kPage) % pages.size()];
    for (ledger::Change& c : page) c.seq = seq++;
    sg.OnCommitted(page);
    done += kPage;
  }
  state.SetItemsProcessed(done);
  state.counters["remote_counted"] = static_cast<double>(sg.metrics().remote_decisions.load());
}
BENCHMARK(BM_FollowCreations)->ArgName("breakers")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace quell::workflow

BENCHMARK_MAIN();
