// The event path without HTTP or the ledger: record each event in its counters (one
// batched Record per 1,000 events, in process) and evaluate the `on: <type>` policies of
// examples/policies/music.yaml with count()/distinct() reading those counters — what
// POST /v1/events does per event before any detection is applied. Events mix play (2
// counters), login, login_failed and playlist_add (1 each): 5 counters in all.
//
//   ninja -C /tmp/build events_bench && /tmp/build/src/api/events_bench
#include <benchmark/benchmark.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "api/internal/counter_holder.h"
#include "api/internal/live_environment.h"
#include "engine/engine.h"

namespace quell::api::internal {
namespace {

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

struct Ev {
  engine::Event event;
  std::string ip, track, playlist;
};

std::vector<Ev> MakeEvents(int n, absl::Time at) {
  std::vector<Ev> out(n);
  for (int i = 0; i < n; ++i) {
    Ev& e = out[i];
    int kind = i % 10;
    e.event.type = kind < 6   ? "play"
                   : kind < 8 ? "login"
                   : kind < 9 ? "login_failed"
                              : "playlist_add";
    e.event.entity = *core::Entity::Parse(absl::StrCat("user:u", (i * 7919) % 100000));
    e.event.at = at;
    e.ip = absl::StrCat("ip:10.", (i / 65536) % 256, ".", (i / 256) % 256, ".", i % 256 % 200);
    e.track = absl::StrCat("track:t", (i * 31) % 50000);
    e.playlist = absl::StrCat("playlist:p", i % 1000);
    e.event.attrs_json = absl::StrCat("{\"ip\":\"", e.ip, "\",\"track\":\"", e.track,
                                      "\",\"playlist\":\"", e.playlist, "\",\"ms_played\":40000}");
  }
  return out;
}

const std::string* Field(const counters::FieldRef& f, const Ev& e) {
  if (f.kind == counters::FieldRef::Kind::kEntity) return &e.event.entity.str();
  if (f.attr == "ip") return &e.ip;
  if (f.attr == "track") return &e.track;
  if (f.attr == "playlist") return &e.playlist;
  return nullptr;
}

void BM_EventPath(benchmark::State& state) {
  auto set = MusicSet();
  auto store = *CounterHolder::Build(CounterHolder::SpecsOf(*set), CounterOptions{});
  const counters::CounterSet& cs = store->counters();
  const absl::Time now = absl::Now();
  constexpr int kBatch = 1000;
  std::vector<Ev> events = MakeEvents(200'000, now);
  std::vector<counters::Observation> obs;
  std::vector<counters::RecordOutcome> outcomes;
  size_t next = 0;
  int64_t proposals = 0;
  for (auto _ : state) {
    obs.clear();
    for (int k = 0; k < kBatch; ++k) {
      const Ev& e = events[(next + k) % events.size()];
      for (int c : cs.ForEvent(e.event.type)) {
        const std::string* key = Field(cs.key_field(c), e);
        const std::string* value =
            cs.spec(c).is_distinct() ? Field(cs.distinct_field(c), e) : nullptr;
        obs.push_back({c, *key, value ? std::string_view(*value) : std::string_view(), e.event.at});
      }
    }
    outcomes.resize(obs.size());
    auto rec = store->Record(obs, now, absl::MakeSpan(outcomes));
    if (!rec.ok()) state.SkipWithError("record failed");
    LiveEnvironment env(nullptr, nullptr, now);
    env.set_counters(store.get());
    for (int k = 0; k < kBatch; ++k) {
      const Ev& e = events[(next + k) % events.size()];
      engine::Evaluation ev = engine::EvaluateEvent(*set, e.event, env, now);
      proposals += static_cast<int64_t>(ev.proposals.size());
    }
    next += kBatch;
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["proposals"] = static_cast<double>(proposals);
  state.counters["keys"] = static_cast<double>(store->Stats().keys);
}
BENCHMARK(BM_EventPath)->Unit(benchmark::kMillisecond);

// Record alone (the counters' share of the path).
void BM_RecordOnly(benchmark::State& state) {
  auto set = MusicSet();
  auto store = *CounterHolder::Build(CounterHolder::SpecsOf(*set), CounterOptions{});
  const counters::CounterSet& cs = store->counters();
  const absl::Time now = absl::Now();
  constexpr int kBatch = 1000;
  std::vector<Ev> events = MakeEvents(200'000, now);
  std::vector<counters::Observation> obs;
  size_t next = 0;
  for (auto _ : state) {
    obs.clear();
    for (int k = 0; k < kBatch; ++k) {
      const Ev& e = events[(next + k) % events.size()];
      for (int c : cs.ForEvent(e.event.type)) {
        const std::string* value =
            cs.spec(c).is_distinct() ? Field(cs.distinct_field(c), e) : nullptr;
        obs.push_back({c, *Field(cs.key_field(c), e),
                       value ? std::string_view(*value) : std::string_view(), e.event.at});
      }
    }
    auto rec = store->Record(obs, now);
    benchmark::DoNotOptimize(rec);
    next += kBatch;
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_RecordOnly)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace quell::api::internal

BENCHMARK_MAIN();
