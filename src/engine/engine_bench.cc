// Decision engine benchmark: realistic detections evaluated against
// examples/policies/music.yaml (25 policies, 21 on detections).
//
//   ninja -C BUILD engine_bench && BUILD/src/engine/engine_bench
//
// items_per_second is detections evaluated per second on one core, through the whole set
// (index lookup by detection.type, rollout hashing, lazy evidence parsing, Eval, and the
// proposals built for matches). The bar (issue 3): >= 5M/s. BM_Mix cycles through a
// stream of detection types in the proportions of a production day (mostly bot-model
// traffic, most detections below the enforcement thresholds); BM_NaiveLoop is the same
// stream without the type index, for comparison.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"

namespace quell::engine {
namespace {

// The cost profile of an in-memory store: a few comparisons per call.
class BenchEnvironment final : public policy::Environment {
 public:
  int64_t Count(std::string_view, std::string_view key, absl::Duration) override {
    return static_cast<int64_t>(key.size());
  }
  int64_t Distinct(std::string_view, std::string_view key, absl::Duration) override {
    return static_cast<int64_t>(key.size() / 2);
  }
  bool InList(std::string_view list, std::string_view entity) override {
    return list.size() == entity.size();
  }
  bool Active(std::string_view entity, std::string_view) override { return entity.empty(); }
  int64_t Prior(std::string_view, std::string_view, absl::Duration) override { return 1; }
};

std::shared_ptr<const policy::PolicySet> MusicSet() {
  std::ifstream in(std::string(QUELL_EXAMPLES_DIR) + "/music.yaml");
  std::stringstream text;
  text << in.rdbuf();
  auto set = policy::LoadPolicySet(text.str(), 1);
  if (!set.ok()) {
    std::fprintf(stderr, "%s\n", std::string(set.status().message()).c_str());
    std::abort();
  }
  return *set;
}

Detection Make(int i, std::string type, std::string source, double score, std::string evidence) {
  Detection d;
  d.id = absl::StrCat("det-", 100000 + i);
  d.source = std::move(source);
  d.type = std::move(type);
  d.entity = *core::Entity::Parse(absl::StrCat("user:", 0x8f3a2c + i * 7919));
  d.score = score;
  d.observed_at = absl::FromUnixSeconds(1772366400 + i);
  d.evidence_json = std::move(evidence);
  d.related = {*core::Entity::Parse(absl::StrCat("device:ab", i)),
               *core::Entity::Parse("ip:203.0.113.9")};
  return d;
}

// 64 detections: 60% artificial streaming (mostly low scores), then takeovers, farms,
// payments, charts, fake accounts and an unknown type.
std::vector<Detection> Stream() {
  std::vector<Detection> out;
  const std::string bot_ev = R"({"model":"bot-v3","streams_24h":4200,"country":"SE"})";
  for (int i = 0; i < 64; ++i) {
    int k = i % 20;
    double low = 0.3 + 0.01 * (i % 30);
    if (k < 12) {
      out.push_back(Make(i, "artificial_streaming", i % 5 == 0 ? "bot-model-v4" : "bot-model-v3",
                         k == 0 ? 0.95 : low, bot_ev));
    } else if (k < 14) {
      out.push_back(Make(i, "account_takeover", "ato-model", k == 12 ? 0.7 : low,
                         R"({"new_device":true,"country":"SE"})"));
    } else if (k == 14) {
      out.push_back(Make(i, "stream_farm", "farm-graph", low, R"({"asn":64500})"));
    } else if (k == 15) {
      out.push_back(Make(i, "payment_fraud", "payment-risk", low, "{}"));
    } else if (k == 16) {
      out.push_back(Make(i, "chart_manipulation", "chart-integrity", low, "{}"));
    } else if (k < 19) {
      out.push_back(Make(i, "fake_account", "signup-model", low, "{}"));
    } else {
      out.push_back(Make(i, "scraping", "scraper-model", low, "{}"));
    }
  }
  return out;
}

template <bool kIndexed>
void Run(benchmark::State& state) {
  auto set = MusicSet();
  std::vector<Detection> stream = Stream();
  BenchEnvironment env;
  const absl::Time now = absl::FromUnixSeconds(1772366400);
  size_t i = 0;
  int64_t proposals = 0, evaluated = 0;
  for (auto _ : state) {
    const Detection& d = stream[i++ & 63];
    Evaluation ev =
        kIndexed ? Evaluate(*set, d, env, now) : EvaluateWithoutIndexForTest(*set, d, env, now);
    proposals += static_cast<int64_t>(ev.proposals.size());
    evaluated += ev.policies_evaluated;
    benchmark::DoNotOptimize(ev);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["policies"] = static_cast<double>(set->policies().size());
  state.counters["evals_per_detection"] =
      static_cast<double>(evaluated) / static_cast<double>(state.iterations());
  state.counters["proposals_per_detection"] =
      static_cast<double>(proposals) / static_cast<double>(state.iterations());
}

void BM_Mix(benchmark::State& state) { Run<true>(state); }
BENCHMARK(BM_Mix);

void BM_NaiveLoop(benchmark::State& state) { Run<false>(state); }
BENCHMARK(BM_NaiveLoop);

// The worst case for the index: every detection is a high-score bot hit (evidence parsed,
// several policies evaluated, a proposal built each time).
void BM_AllBotHits(benchmark::State& state) {
  auto set = MusicSet();
  Detection d = Make(1, "artificial_streaming", "bot-model-v3", 0.95,
                     R"({"model":"bot-v3","streams_24h":4200,"country":"SE"})");
  BenchEnvironment env;
  const absl::Time now = absl::FromUnixSeconds(1772366400);
  for (auto _ : state) {
    Evaluation ev = Evaluate(*set, d, env, now);
    benchmark::DoNotOptimize(ev);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AllBotHits);

}  // namespace
}  // namespace quell::engine

BENCHMARK_MAIN();
