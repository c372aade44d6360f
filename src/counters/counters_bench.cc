// Counters benchmarks. Prints the figures the issue asks for:
//   - in-process Record() throughput, one thread, through 5 counters (7 windows);
//   - Redis backend events/s with pipelining, and in the same run `redis-benchmark -t incr
//     -P <same commands per round trip> -c 1` against the same redis-server, with the ratio;
//   - HyperLogLog relative error on 1M distinct values (in-process sketch and Redis).
// Starts its own redis-server (tests/integration/redis_server.h) on a free port.
//
//   counters_bench [--benchmark_filter=...] [--benchmark_min_time=...]
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "core/strings.h"
#include "counters/in_process_store.h"
#include "counters/internal/hll.h"
#include "counters/redis_store.h"
#include "tests/integration/redis_server.h"

namespace quell::counters {
namespace {

using absl::Hours;
using absl::Minutes;

// Five counters over play events, seven windows in all.
std::vector<CounterSpec> FiveCounters() {
  return {
      {"plays", "play", "entity", "", {Minutes(1), Hours(1), Hours(24)}},
      {"plays_per_track", "play", "attrs.track", "", {Hours(1)}},
      {"plays_per_device", "play", "attrs.device", "", {Minutes(1)}},
      {"tracks_per_ip", "play", "attrs.ip", "attrs.track", {Hours(1)}},
      {"users_per_device", "play", "attrs.device", "entity", {Hours(1)}},
  };
}

struct Event {
  std::string user, track, device, ip;
};

// 1M play events over 200k users, 50k tracks, 150k devices and 100k IPs ("large"), or
// populations 20 times smaller ("hot").
std::vector<Event> MakeEvents(uint64_t shrink) {
  std::vector<Event> v;
  std::mt19937_64 rng(42);
  for (int i = 0; i < 1 << 20; ++i) {
    v.push_back({absl::StrCat("user:", rng() % (200000 / shrink)),
                 absl::StrCat("track:", rng() % (50000 / shrink)),
                 absl::StrCat("device:", rng() % (150000 / shrink)),
                 absl::StrCat("ip:10.0.", rng() % (100000 / shrink))});
  }
  return v;
}
const std::vector<Event>* current_events = nullptr;
const std::vector<Event>& Events() { return *current_events; }
const std::vector<Event>& Population(int64_t which) {
  static const auto* large = new std::vector<Event>(MakeEvents(1));
  static const auto* hot = new std::vector<Event>(MakeEvents(20));
  current_events = which == 0 ? large : hot;
  return *current_events;
}

// The 5 observations of each event in [begin, begin + n), each event at `at`.
void Observe(size_t begin, size_t n, absl::Time at, std::vector<Observation>& out) {
  const auto& events = Events();
  out.clear();
  for (size_t i = begin; i < begin + n; ++i) {
    const Event& e = events[i & (events.size() - 1)];
    out.push_back({0, e.user, "", at});
    out.push_back({1, e.track, "", at});
    out.push_back({2, e.device, "", at});
    out.push_back({3, e.ip, e.track, at});
    out.push_back({4, e.device, e.user, at});
  }
}

void BM_InProcessRecord5Counters(benchmark::State& state) {
  const size_t batch_events = static_cast<size_t>(state.range(0));
  Population(state.range(1));
  auto store = *InProcessCounterStore::Create(FiveCounters(), {});
  absl::Time now = absl::FromUnixSeconds(1767225600);
  std::vector<Observation> batch;
  size_t next = 0;
  // Warm up: one pass over the events, so the run measures the steady state.
  for (; next < Events().size(); next += 1000) {
    Observe(next, 1000, now, batch);
    (void)store->Record(batch, now);
    now += absl::Milliseconds(1);
  }
  for (auto _ : state) {
    Observe(next, batch_events, now, batch);
    auto r = store->Record(batch, now);
    benchmark::DoNotOptimize(r);
    next += batch_events;
    now += absl::Microseconds(batch_events);  // 1M events per simulated second
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch_events));
  state.counters["events/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * batch_events), benchmark::Counter::kIsRate);
  state.counters["keys"] = static_cast<double>(store->Stats().keys);
}
BENCHMARK(BM_InProcessRecord5Counters)
    ->ArgNames({"batch", "hot"})
    ->Args({1, 0})
    ->Args({1000, 0})
    ->Args({1000, 1})
    ->Unit(benchmark::kMicrosecond);

void BM_InProcessReads(benchmark::State& state) {
  const bool distinct = state.range(0) == 1;
  Population(0);
  auto store = *InProcessCounterStore::Create(FiveCounters(), {});
  absl::Time now = absl::FromUnixSeconds(1767225600);
  std::vector<Observation> batch;
  for (size_t i = 0; i < 200000; i += 1000) {
    Observe(i, 1000, now, batch);
    (void)store->Record(batch, now);
    now += absl::Seconds(1);
  }
  const auto& events = Events();
  size_t i = 0;
  for (auto _ : state) {
    const Event& e = events[i++ % 200000];
    auto v = distinct ? store->Distinct("tracks_per_ip", e.ip, Hours(1), now)
                      : store->Count("plays", e.user, Hours(1), now);
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(distinct ? "distinct(tracks_per_ip, 1h)" : "count(plays, 1h)");
}
BENCHMARK(BM_InProcessReads)->Arg(0)->Arg(1);

testing::RedisServerForTest* redis = nullptr;
constexpr size_t kRedisBatch = 100;  // events per Record(): one round trip
double redis_events_per_s = 0;
double redis_commands_per_s = 0;
double redis_commands_per_round_trip = 0;

void BM_RedisRecord5Counters(benchmark::State& state) {
  RedisOptions options;
  options.port = redis->port();
  options.connections = 1;
  options.io_timeout = absl::Seconds(5);
  Population(0);
  auto store = *RedisCounterStore::Create(FiveCounters(), options);
  const absl::Time now = absl::Now();
  std::vector<Observation> batch;
  size_t next = 0;
  for (auto _ : state) {
    Observe(next, kRedisBatch, now, batch);
    auto r = store->Record(batch, now);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      break;
    }
    next += kRedisBatch;
  }
  const double events = static_cast<double>(state.iterations() * kRedisBatch);
  const auto commands = static_cast<double>(store->Stats().commands);
  state.SetItemsProcessed(static_cast<int64_t>(events));
  state.counters["events/s"] = benchmark::Counter(events, benchmark::Counter::kIsRate);
  state.counters["commands/s"] =
      benchmark::Counter(static_cast<double>(commands), benchmark::Counter::kIsRate);
  state.counters["cmds/round trip"] =
      static_cast<double>(commands) / static_cast<double>(state.iterations());
  redis_commands_per_round_trip = commands / static_cast<double>(state.iterations());
}
BENCHMARK(BM_RedisRecord5Counters)->Unit(benchmark::kMillisecond)->UseRealTime();

// Relative error of the HyperLogLog on 1M distinct values, over 5 independent value sets.
void BM_HllError1M(benchmark::State& state) {
  double worst = 0, sum = 0;
  for (auto _ : state) {
    worst = sum = 0;
    for (int set = 0; set < 5; ++set) {
      internal::Hll h;
      for (int i = 0; i < 1000000; ++i) {
        h.Add(internal::HashValue(absl::StrCat("set", set, ":track:", i)));
      }
      const double err = std::abs(static_cast<double>(h.Estimate()) - 1e6) / 1e6;
      worst = std::max(worst, err);
      sum += err;
    }
  }
  state.counters["mean_err_%"] = sum / 5 * 100;
  state.counters["max_err_%"] = worst * 100;
}
BENCHMARK(BM_HllError1M)->Iterations(1)->Unit(benchmark::kMillisecond);

// The same through the Redis backend (Redis's own HyperLogLog), one key in one bucket.
void BM_RedisHllError1M(benchmark::State& state) {
  RedisOptions options;
  options.port = redis->port();
  options.io_timeout = absl::Seconds(5);
  options.key_prefix = "hll:";
  auto store = *RedisCounterStore::Create(FiveCounters(), options);
  const absl::Time now = absl::Now();
  double err = 0;
  for (auto _ : state) {
    std::vector<std::string> values;
    std::vector<Observation> batch;
    for (int i = 0; i < 1000000; i += 10000) {
      values.clear();
      batch.clear();
      for (int j = i; j < i + 10000; ++j) values.push_back(absl::StrCat("track:", j));
      for (const auto& v : values) batch.push_back({3, "ip:1.2.3.4", v, now});
      if (!store->Record(batch, now).ok()) state.SkipWithError("redis record failed");
    }
    auto d = store->Distinct("tracks_per_ip", "ip:1.2.3.4", Hours(1), now);
    err = d.ok() ? std::abs(static_cast<double>(*d) - 1e6) / 1e6 : -1;
  }
  state.counters["err_%"] = err * 100;
}
BENCHMARK(BM_RedisHllError1M)->Iterations(1)->Unit(benchmark::kMillisecond);

// Runs redis-benchmark INCR with pipeline depth `pipeline`, one client; requests/s or -1.
double RedisBenchmarkIncr(int port, int pipeline) {
  const std::string tool = testing::FindRedisTool("redis-benchmark");
  if (tool.empty()) return -1;
  const std::string cmd = absl::StrCat(tool, " -h 127.0.0.1 -p ", port, " -t incr -P ", pipeline,
                                       " -c 1 -n 2000000 -q 2>&1");
  std::printf("reference: %s\n", cmd.c_str());
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  pclose(p);
  // The final line reads "INCR: 1234567.89 requests per second..." (after \r progress).
  size_t at = out.rfind("INCR: ");
  if (at == std::string::npos) return -1;
  return std::strtod(out.c_str() + at + 6, nullptr);
}

// Reads the Redis figures from the run's reporter output.
class Reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.benchmark_name().find("BM_RedisRecord5Counters") == 0 && !r.error_occurred) {
        redis_events_per_s = r.counters.at("events/s");
        redis_commands_per_s = r.counters.at("commands/s");
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace
}  // namespace quell::counters

int main(int argc, char** argv) {
  using namespace quell::counters;
  benchmark::Initialize(&argc, argv);
  quell::testing::RedisServerForTest server;
  absl::Status s = server.Start();
  if (!s.ok()) {
    std::fprintf(stderr, "counters_bench: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  redis = &server;
  Reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  if (redis_events_per_s > 0) {
    const int pipeline = static_cast<int>(std::lround(redis_commands_per_round_trip));
    const double reference = RedisBenchmarkIncr(server.port(), pipeline);
    std::printf(
        "redis backend: %.0f events/s through 5 counters (%.0f commands/s, %d commands per "
        "round trip)\n",
        redis_events_per_s, redis_commands_per_s, pipeline);
    if (reference > 0) {
      std::printf(
          "redis-benchmark INCR -P %d -c 1: %.0f requests/s; ratio quell/reference = %.2f\n",
          pipeline, reference, redis_commands_per_s / reference);
    } else {
      std::printf("redis-benchmark: not run (not installed or no output)\n");
    }
  }
  benchmark::Shutdown();
  return 0;
}
