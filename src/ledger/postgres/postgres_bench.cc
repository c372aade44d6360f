// Durable mitigations per second through the Ledger (group commit) on the PostgreSQL
// store, against a throwaway local cluster with PostgreSQL's durable defaults (fsync on,
// synchronous_commit on).
//
//   ledger_postgres_bench [--benchmark_filter=...]
//
// BM_PgLedgerDurable/<submitters>/<max_batch>: as ledger_bench's BM_LedgerDurable (each
// submitter submits one mutation and waits for it). items_per_second is acknowledged
// mitigations/s; batch = mean mutations per commit; commit_ms = mean Begin..Commit.
// BM_PgTxnAppend: one mutation under the ledger's savepoint, 1000 per transaction.
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "benchmark/benchmark.h"
#include "core/ids.h"
#include "core/status.h"
#include "ledger/ledger.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::ledger {
namespace {

pg_internal::TestCluster* bench_cluster = nullptr;

// The durable cluster of this process, started on first use, stopped and removed at exit.
absl::StatusOr<std::string> BenchDatabase() {
  static absl::Status started = [] {
    auto c = pg_internal::TestCluster::Start(/*durable=*/true);
    if (!c.ok()) return c.status();
    bench_cluster = *c;
    std::atexit([] { delete bench_cluster; });
    return absl::OkStatus();
  }();
  if (!started.ok()) return started;
  return bench_cluster->NewDatabase();
}

absl::Status CreateOne(Txn& txn, absl::Time now, const std::string& entity) {
  core::Mitigation m;
  m.id = core::NewId("m_", now);
  QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(entity));
  m.action = "exclude_royalties";
  m.created_at = m.updated_at = m.starts_at = now;
  m.expires_at = now + absl::Hours(24 * 90);
  m.reason = "artificial_streaming score 0.97";
  m.source = "bot-model";
  m.policy = "bot-model-high";
  m.policy_version = 3;
  m.actor = "k_detector";
  m.detections = {"d_0001"};
  m.seq = txn.NextSeq();
  Change c;
  c.kind = ChangeKind::kMitigation;
  c.actor = m.actor;
  return txn.Append(std::move(c), &m).status();
}

void BM_PgLedgerDurable(benchmark::State& state) {
  const int submitters = static_cast<int>(state.range(0));
  const int max_batch = static_cast<int>(state.range(1));
  auto url = BenchDatabase();
  if (!url.ok()) {
    state.SkipWithError(std::string(url.status().message()).c_str());
    return;
  }
  auto store = OpenPostgresStore({.url = *url});
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return;
  }
  auto ledger = Ledger::Open(*std::move(store), {.max_batch = max_batch}, core::RealClock::Get());
  if (!ledger.ok()) {
    state.SkipWithError(std::string(ledger.status().message()).c_str());
    return;
  }
  constexpr int kPerSubmitter = 200;
  std::atomic<int64_t> failures{0};
  int64_t round = 0;
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int t = 0; t < submitters; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerSubmitter; ++i) {
          std::string entity = absl::StrCat("user:r", round, "-t", t, "-", i);
          absl::Notification done;
          (*ledger)->Submit(
              [entity](Txn& txn, absl::Time now) { return CreateOne(txn, now, entity); },
              [&](absl::Status st, std::vector<Change>) {
                if (!st.ok()) failures.fetch_add(1);
                done.Notify();
              });
          done.WaitForNotification();
        }
      });
    }
    for (auto& th : threads) th.join();
    ++round;
  }
  Ledger::Stats s = (*ledger)->stats();
  state.SetItemsProcessed(state.iterations() * submitters * kPerSubmitter);
  state.counters["batch"] = s.commits ? static_cast<double>(s.mutations) / s.commits : 0;
  state.counters["commit_ms"] = s.commits ? 1000 * s.total_commit_seconds / s.commits : 0;
  state.counters["failures"] = static_cast<double>(failures.load());
}
BENCHMARK(BM_PgLedgerDurable)
    ->ArgNames({"submitters", "max_batch"})
    ->Args({32, 4096})
    ->Args({1, 4096})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

void BM_PgTxnAppend(benchmark::State& state) {
  auto url = BenchDatabase();
  if (!url.ok()) {
    state.SkipWithError(std::string(url.status().message()).c_str());
    return;
  }
  auto store = OpenPostgresStore({.url = *url});
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return;
  }
  int64_t n = 0;
  std::unique_ptr<Txn> txn;
  const absl::Time now = absl::Now();
  for (auto _ : state) {
    if (!txn) txn = *(*store)->Begin(now);
    absl::Status st = txn->Savepoint();
    if (st.ok()) st = CreateOne(*txn, now, absl::StrCat("user:a", n));
    if (st.ok()) st = txn->ReleaseSavepoint();
    if (st.ok() && ++n % 1000 == 0) {
      st = txn->Commit();
      txn.reset();
    }
    if (!st.ok()) {
      state.SkipWithError(std::string(st.message()).c_str());
      break;
    }
  }
  if (txn) (void)txn->Commit();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PgTxnAppend)->UseRealTime();

}  // namespace
}  // namespace quell::ledger

BENCHMARK_MAIN();
