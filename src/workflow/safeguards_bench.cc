// Benchmarks of issue 5:
//  * BM_ApplyDetections/safeguards:{0,1}: detections/s through the decision mutation and
//    a real SQLite ledger, with and without the safeguards (same data: 1,000 protected
//    entries incl. addresses, a breaker that counts but never opens, immunity entries).
//    The bar: safeguards cost <= 10%.
//  * BM_Rollback: revoke 100,000 active mitigations in one rollback (find + one ledger
//    transaction) while a reader thread keeps doing `check` lookups on the index that
//    follows the ledger; reports the rollback time (find, transaction, listeners), the CPU
//    it used, and the lookups' p99 meanwhile. QUELL_BENCH_MARK=FILE: touch FILE and wait
//    2 s before the rollback (to attach `perf record -p` to the rollback alone).
//
//   ninja -C build safeguards_bench && build/src/workflow/safeguards_bench
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "index/index.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

constexpr char kYaml[] = R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 2h}
lists:
  - {name: vips, protected: true}
breakers:
  - {name: global-rate, limit: 100000000, window: 10m}
  - {name: source-rate, source: bench, limit: 100000000, window: 1h, relative: {factor: 5, baseline: 7d}}
policies:
  - {id: p1, on: detection, when: 'true', action: block, related: true}
)";

core::Entity E(const std::string& s) { return *core::Entity::Parse(s); }

// CPU seconds (user + system) this process used so far, all threads.
double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

class Applier final : public ledger::ChangeListener {
 public:
  explicit Applier(index::Index* index) : index_(index) {}
  void OnCommitted(const std::vector<ledger::Change>& changes) override {
    for (const auto& c : changes) {
      if (c.kind == ledger::ChangeKind::kMitigation)
        (void)index_->Apply(*core::MitigationFromJson(c.payload));
      index_->set_seq(c.seq);
    }
  }
  index::Index* index_;
};

struct Env {
  std::string dir = absl::StrCat("/tmp/sgbench_", core::RandomHex(6));
  core::FakeClock clock;
  std::shared_ptr<const policy::PolicySet> set = *policy::LoadPolicySet(kYaml, 1);
  index::Index index;
  Applier applier{&index};
  Safeguards safeguards{SafeguardOptions{}, nullptr};
  std::unique_ptr<ledger::Ledger> ledger;
  Env() {
    auto store = ledger::OpenSqliteStore({.path = dir});
    ledger = *ledger::Ledger::Open(*std::move(store), ledger::LedgerOptions{}, &clock);
    ledger->AddListener(&applier);
    ledger->AddListener(&safeguards);
    // 1,000 protected entries (half addresses, so CIDR coverage is checked for real).
    std::string add;
    for (int i = 0; i < 1000; ++i) {
      absl::StrAppend(&add, i ? "," : "",
                      i % 2 ? absl::StrCat("\"ip:10.", i / 250, ".", i % 250, ".1\"")
                            : absl::StrCat("\"user:vip", i, "\""));
    }
    std::string payload = absl::StrCat("{\"list\":\"vips\",\"add\":[", add, "]}");
    (void)ledger->SubmitAndWait([payload](ledger::Txn& txn, absl::Time) {
      ledger::Change c;
      c.kind = ledger::ChangeKind::kList;
      c.subject = "vips";
      c.payload = payload;
      return txn.Append(std::move(c), nullptr).status();
    });
  }
  ~Env() {
    ledger.reset();
    std::filesystem::remove_all(dir);
  }
  std::vector<DetectionWork> Batch(int64_t first, int n) {
    std::vector<DetectionWork> work;
    for (int64_t i = first; i < first + n; ++i) {
      DetectionWork w;
      w.detection.id = absl::StrCat("d", i);
      w.detection.source = "bench";
      w.detection.type = "bot";
      w.detection.entity = E(absl::StrCat("user:u", i));
      w.detection.observed_at = clock.Now();
      w.json = "{}";
      engine::Proposal p;
      p.policy = "p1";
      p.policy_version = 1;
      p.entity = w.detection.entity;
      p.action = "block";
      p.ttl = absl::Hours(2);
      p.reason = "bench";
      w.proposals = {p};
      work.push_back(std::move(w));
    }
    return work;
  }
};

void BM_ApplyDetections(benchmark::State& state) {
  const bool with = state.range(0) != 0;
  Env env;
  constexpr int kBatch = 1000;
  int64_t next = 0;
  for (auto _ : state) {
    auto out = std::make_shared<std::vector<DetectionOutcome>>();
    SafeguardContext sg;
    if (with) sg = {&env.safeguards, env.set};
    auto done = env.ledger->SubmitAndWait(
        ApplyDetections(env.Batch(next, kBatch), env.set->catalog_ptr(), "k", out, sg));
    if (!done.ok()) state.SkipWithError("apply failed");
    next += kBatch;
  }
  state.SetItemsProcessed(next);
}
BENCHMARK(BM_ApplyDetections)
    ->ArgName("safeguards")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(5)
    ->UseRealTime();

void BM_Rollback(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    Env env;
    for (int i = 0; i < n; i += 5000) {
      auto out = std::make_shared<std::vector<DetectionOutcome>>();
      (void)env.ledger->SubmitAndWait(
          ApplyDetections(env.Batch(i, std::min(5000, n - i)), env.set->catalog_ptr(), "k", out));
    }
    std::atomic<bool> stop{false};
    std::vector<double> lat_us;
    lat_us.reserve(1 << 22);
    std::thread reader([&] {
      index::Hits hits;
      int64_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        core::Entity e = E(absl::StrCat("user:u", (i++ * 7919) % n));
        auto t0 = std::chrono::steady_clock::now();
        hits.clear();
        env.index.Lookup(e, env.clock.Now(), &hits);
        auto t1 = std::chrono::steady_clock::now();
        lat_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        // A steady ~20k checks/s, not a spin loop that would take a core from the writer.
        if (i % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    if (const char* mark = std::getenv("QUELL_BENCH_MARK")) {
      // For profiling the rollback alone: `perf record -p` once this file exists.
      std::FILE* fp = std::fopen(mark, "w");
      if (fp != nullptr) std::fclose(fp);
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    state.ResumeTiming();
    const double cpu0 = ProcessCpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    RollbackFilter f;
    f.source = "bench";
    auto ids =
        FindRollbackTargets(env.ledger->store(), f, absl::Now(), SafeguardOptions{}.pending_ttl);
    double find_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    RollbackRequest request;
    request.id = "rb_bench";
    request.filter = f;
    request.reason = "bench";
    request.requested_by = "k_admin";
    auto result = std::make_shared<RollbackRequest>();
    auto done = env.ledger->SubmitAndWait(
        Rollback(std::move(request), std::move(*ids), result, SafeguardOptions{}.pending_ttl));
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // CPU the rollback used (the reader thread's share included): what it would take on
    // an idle machine, where the wall time above is inflated by other processes.
    const double cpu_s = ProcessCpuSeconds() - cpu0;
    // Begin..Commit of the rollback's batch; the rest after find is the listeners.
    const double txn_s = env.ledger->stats().last_commit_seconds;
    state.PauseTiming();
    stop = true;
    reader.join();
    if (!done.ok() || result->revoked != n || env.index.size() != 0)
      state.SkipWithError("rollback incomplete");
    std::sort(lat_us.begin(), lat_us.end());
    state.counters["rollback_s"] = secs;
    state.counters["find_s"] = find_s;
    state.counters["txn_s"] = txn_s;
    state.counters["cpu_s"] = cpu_s;
    state.counters["listeners_s"] = secs - find_s - txn_s;
    state.counters["revoked"] = static_cast<double>(result->revoked);
    state.counters["checks_during"] = static_cast<double>(lat_us.size());
    state.counters["check_p99_us"] = lat_us.empty() ? 0 : lat_us[lat_us.size() * 99 / 100];
    state.counters["check_max_us"] = lat_us.empty() ? 0 : lat_us.back();
    state.ResumeTiming();
  }
}
BENCHMARK(BM_Rollback)->Arg(100000)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

}  // namespace
}  // namespace quell::workflow

BENCHMARK_MAIN();
