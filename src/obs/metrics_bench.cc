// Cost of metric updates on the hot path, single-threaded and with two
// threads hammering the same metric. A plain shared relaxed atomic runs in the
// same binary as the baseline the striped Counter is meant to beat under
// contention.
//
//   metrics_bench --benchmark_filter=. --benchmark_repetitions=3
#include <atomic>
#include <cmath>
#include <string>

#include "benchmark/benchmark.h"
#include "obs/metrics.h"

namespace quell::obs {
namespace {

Registry& SharedRegistry() {
  static Registry* r = new Registry();  // benchmark fixture only
  return *r;
}

Counter* SharedCounter() {
  static Counter* c = *SharedRegistry().AddCounter("bench_counter_total", "bench");
  return c;
}

Histogram* SharedHistogram() {
  static Histogram* h =
      *SharedRegistry().AddHistogram("bench_seconds", "bench", DefaultLatencyBuckets());
  return h;
}

Gauge* SharedGauge() {
  static Gauge* g = *SharedRegistry().AddGauge("bench_gauge", "bench");
  return g;
}

void BM_CounterIncrement(benchmark::State& state) {
  Counter* c = SharedCounter();
  for (auto _ : state) c->Increment();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CounterIncrement)->Threads(1)->Threads(2)->UseRealTime();

// Baseline: one shared atomic, no striping.
std::atomic<uint64_t> g_plain{0};
void BM_PlainAtomicIncrement(benchmark::State& state) {
  for (auto _ : state) g_plain.fetch_add(1, std::memory_order_relaxed);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PlainAtomicIncrement)->Threads(1)->Threads(2)->UseRealTime();

void BM_HistogramObserve(benchmark::State& state) {
  Histogram* h = SharedHistogram();
  double v = 0.00007;
  for (auto _ : state) {
    h->Observe(v);
    v = v < 20 ? v * 1.7 : 0.00007;  // walk every bucket
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramObserve)->Threads(1)->Threads(2)->UseRealTime();

void BM_GaugeAdd(benchmark::State& state) {
  Gauge* g = SharedGauge();
  for (auto _ : state) g->Add(1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GaugeAdd)->Threads(1)->Threads(2)->UseRealTime();

// What an uncached WithLabels costs (callers should cache instead).
void BM_WithLabelsLookup(benchmark::State& state) {
  Registry r;
  CounterFamily* f = *r.AddCounterFamily("lookup_total", "bench", {"route", "code"});
  for (int i = 0; i < 50; ++i) f->WithLabels({"GET /v1/route" + std::to_string(i), "200"});
  for (auto _ : state) f->WithLabels({"GET /v1/route7", "200"})->Increment();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WithLabelsLookup);

// A scrape of a realistic registry: 20 routes x 5 codes of counters and
// latency histograms.
void BM_Render(benchmark::State& state) {
  Registry r;
  CounterFamily* requests =
      *r.AddCounterFamily("quell_http_requests_total", "h", {"route", "code"});
  HistogramFamily* latency = *r.AddHistogramFamily("quell_http_request_duration_seconds", "h",
                                                   {"route", "code"}, DefaultLatencyBuckets());
  for (int route = 0; route < 20; ++route) {
    for (const char* code : {"200", "400", "401", "404", "500"}) {
      const std::string name = "GET /v1/route" + std::to_string(route);
      requests->WithLabels({name, code})->Increment(route);
      latency->WithLabels({name, code})->Observe(0.001 * route);
    }
  }
  std::size_t bytes = 0;
  for (auto _ : state) {
    std::string text = r.Render();
    bytes = text.size();
    benchmark::DoNotOptimize(text);
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Render)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace quell::obs

BENCHMARK_MAIN();
