// In-process lookup throughput of the index at N active mitigations (default 10M; set
// QUELL_INDEX_BENCH_N to change). Queries cycle through 2^20 prepared entities, far more
// than the caches hold, so every lookup touches cold index memory. items_per_second is per
// CPU second of the lookup thread (one core), so a busy shared machine does not hide it;
// the Time column shows wall time too.
//
//   index_bench --benchmark_filter=... (Release build)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "index/bench_util.h"
#include "index/index.h"

namespace quell::index {
namespace {

constexpr size_t kQueries = size_t{1} << 20;

struct Fixture {
  absl::Time now = absl::Now();
  Index index;
  std::vector<core::Mitigation> sample;      // applied mitigations, for the writer thread
  std::vector<core::Entity> hit_queries;     // all present
  std::vector<core::Entity> miss90_queries;  // 10% present, 90% absent
};

Fixture& GetFixture() {
  static Fixture* f = [] {
    auto* fx = new Fixture;
    const char* env = std::getenv("QUELL_INDEX_BENCH_N");
    const size_t n = env != nullptr ? std::strtoull(env, nullptr, 10) : 10'000'000;
    std::fprintf(stderr, "loading %zu mitigations...\n", n);
    bench::Generator gen(1);
    const size_t stride = std::max<size_t>(1, n / kQueries);
    for (size_t i = 0; i < n; ++i) {
      core::Mitigation m = gen.Active(fx->now, absl::Hours(24));
      if (i % stride == 0 && fx->sample.size() < kQueries) fx->sample.push_back(m);
      if (!fx->index.Apply(m).ok()) std::abort();
    }
    std::mt19937_64 rng(2);
    for (size_t i = 0; i < kQueries; ++i) {
      fx->hit_queries.push_back(fx->sample[rng() % fx->sample.size()].entity);
    }
    bench::Generator miss_gen(3);
    for (size_t i = 0; i < kQueries; ++i) {
      if (rng() % 10 == 0) {
        fx->miss90_queries.push_back(fx->sample[rng() % fx->sample.size()].entity);
      } else {
        fx->miss90_queries.push_back(*core::Entity::Parse(miss_gen.EntityText()));
      }
    }
    std::fprintf(stderr, "loaded: %zu mitigations, %.1f bytes/mitigation (MemoryBytes)\n",
                 fx->index.size(), static_cast<double>(fx->index.MemoryBytes()) / fx->index.size());
    return fx;
  }();
  return *f;
}

void RunLookups(benchmark::State& state, const std::vector<core::Entity>& queries) {
  Fixture& f = GetFixture();
  Hits hits;
  size_t i = 0;
  size_t found = 0;
  for (auto _ : state) {
    hits.clear();
    f.index.Lookup(queries[i], f.now, &hits);
    found += hits.size();
    benchmark::DoNotOptimize(hits.data());
    i = (i + 1) & (kQueries - 1);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["hits_per_lookup"] =
      static_cast<double>(found) / static_cast<double>(state.iterations());
}

// LookupBatch over groups of 16 queries; one item = one entity looked up.
void RunBatches(benchmark::State& state, const std::vector<core::Entity>& queries) {
  Fixture& f = GetFixture();
  constexpr size_t kBatch = 16;
  Hits hits[kBatch];
  size_t i = 0;
  size_t found = 0;
  for (auto _ : state) {
    for (Hits& h : hits) h.clear();
    f.index.LookupBatch(std::span<const core::Entity>(&queries[i], kBatch), f.now, hits);
    for (Hits& h : hits) found += h.size();
    benchmark::DoNotOptimize(hits[0].data());
    i = (i + kBatch) & (kQueries - 1);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["hits_per_lookup"] =
      static_cast<double>(found) / static_cast<double>(state.iterations() * kBatch);
}

void BM_LookupBatchHit(benchmark::State& state) { RunBatches(state, GetFixture().hit_queries); }
void BM_LookupBatchMiss90(benchmark::State& state) {
  RunBatches(state, GetFixture().miss90_queries);
}

void BM_LookupHit(benchmark::State& state) { RunLookups(state, GetFixture().hit_queries); }
void BM_LookupMiss90(benchmark::State& state) { RunLookups(state, GetFixture().miss90_queries); }

// The same lookups while another thread applies changes as fast as it can: in-place expiry
// updates of existing mitigations, plus inserts and removals of new ones.
void RunWithWriter(benchmark::State& state, const std::vector<core::Entity>& queries, bool batch) {
  Fixture& f = GetFixture();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0};
  std::thread writer([&] {
    bench::Generator gen(4);
    std::vector<core::Mitigation> added;
    uint64_t n = 0;
    size_t k = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      core::Mitigation m = f.sample[k];
      k = (k + 1) % f.sample.size();
      m.expires_at = f.now + absl::Hours(24) + absl::Seconds(static_cast<int64_t>(n % 1000));
      if (!f.index.Apply(m).ok()) std::abort();
      ++n;
      if (n % 4 == 0) {
        added.push_back(gen.Active(f.now, absl::Hours(1)));
        if (!f.index.Apply(added.back()).ok()) std::abort();
        ++n;
        if (added.size() > 10000) {
          core::Mitigation& old = added[added.size() - 10001];
          old.state = core::MitigationState::kRevoked;
          if (!f.index.Apply(old).ok()) std::abort();
          ++n;
        }
      }
    }
    for (core::Mitigation& m : added) {
      if (m.state != core::MitigationState::kActive) continue;
      m.state = core::MitigationState::kRevoked;
      if (!f.index.Apply(m).ok()) std::abort();
    }
    writes.store(n);
  });
  const auto start = std::chrono::steady_clock::now();
  if (batch) {
    RunBatches(state, queries);
  } else {
    RunLookups(state, queries);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop.store(true);
  writer.join();
  state.counters["writer_applies_per_s"] = static_cast<double>(writes.load()) / secs;
}

void BM_LookupHitWithWriter(benchmark::State& state) {
  RunWithWriter(state, GetFixture().hit_queries, false);
}
void BM_LookupMiss90WithWriter(benchmark::State& state) {
  RunWithWriter(state, GetFixture().miss90_queries, false);
}
void BM_LookupBatchMiss90WithWriter(benchmark::State& state) {
  RunWithWriter(state, GetFixture().miss90_queries, true);
}

BENCHMARK(BM_LookupHit)->MinTime(2.0);
BENCHMARK(BM_LookupMiss90)->MinTime(2.0);
BENCHMARK(BM_LookupBatchHit)->MinTime(2.0);
BENCHMARK(BM_LookupBatchMiss90)->MinTime(2.0);
BENCHMARK(BM_LookupHitWithWriter)->MinTime(2.0);
BENCHMARK(BM_LookupMiss90WithWriter)->MinTime(2.0);
BENCHMARK(BM_LookupBatchMiss90WithWriter)->MinTime(2.0);

}  // namespace
}  // namespace quell::index

BENCHMARK_MAIN();
