// Durable mitigations per second through the Ledger (group commit) on the SQLite store.
//
//   ledger_bench [--benchmark_filter=...]     (data under $QUELL_BENCH_DIR or the temp dir)
//
// BM_LedgerDurable/<submitters>/<max_batch>/<sync_full>: `submitters` threads each submit
// one mutation (one change + one mitigation upsert) and wait for its completion before the
// next, as HTTP clients do. items_per_second is acknowledged (durable) mitigations/s;
// batch = mean mutations per commit; commit_ms = mean Begin..Commit time.
// BM_Fsync: one 4 KiB write + fdatasync on the same file system, the floor of a commit.
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "benchmark/benchmark.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::ledger {
namespace {

std::filesystem::path BenchDir(std::string_view name) {
  const char* env = std::getenv("QUELL_BENCH_DIR");
  std::filesystem::path base = env ? env : std::filesystem::temp_directory_path();
  auto dir = base / absl::StrCat("quell-ledger-bench-", getpid(), "-", AV(name));
  std::filesystem::remove_all(dir);
  return dir;
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
  QUELL_ASSIGN_OR_RETURN(Change done, txn.Append(std::move(c), &m));
  (void)done;
  return absl::OkStatus();
}

void BM_LedgerDurable(benchmark::State& state) {
  const int submitters = static_cast<int>(state.range(0));
  const int max_batch = static_cast<int>(state.range(1));
  const bool sync_full = state.range(2) != 0;
  auto dir = BenchDir(absl::StrCat(submitters, "-", max_batch, "-", sync_full));
  auto store = OpenSqliteStore({.path = dir.string(), .synchronous_full = sync_full});
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
    threads.reserve(submitters);
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
  ledger->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_LedgerDurable)
    ->ArgNames({"submitters", "max_batch", "sync_full"})
    ->Args({32, 4096, 1})
    ->Args({32, 1, 1})
    ->Args({1, 4096, 1})
    ->Args({32, 4096, 0})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

// CPU cost of one mutation at the store level (no fsync: synchronous NORMAL, one big
// transaction per 1000 mutations, each under its own savepoint as the ledger does).
void BM_TxnAppend(benchmark::State& state) {
  auto dir = BenchDir("append");
  auto store = OpenSqliteStore({.path = dir.string(), .synchronous_full = false});
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
  store->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_TxnAppend);
// Fixed iteration counts for instruction counting, which is repeatable on a loaded machine:
//   valgrind --tool=callgrind ledger_bench --benchmark_filter=TxnAppend/iterations:N
// for N = 2000 and 12000; (Ir(12000) - Ir(2000)) / 10000 is the cost of one mutation.
BENCHMARK(BM_TxnAppend)->Iterations(2000);
BENCHMARK(BM_TxnAppend)->Iterations(12000);

// CPU cost of storing one detection as POST /v1/detections does: the idempotency probe
// (GetDetection) and the insert, under the ledger's per-mutation savepoint; 1000 per
// transaction (synchronous NORMAL).
void BM_TxnDetection(benchmark::State& state) {
  auto dir = BenchDir("detection");
  auto store = OpenSqliteStore({.path = dir.string(), .synchronous_full = false});
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return;
  }
  int64_t n = 0;
  std::unique_ptr<Txn> txn;
  const absl::Time now = absl::Now();
  StoredDetection d;
  d.source = "bot-model";
  d.type = "artificial_streaming";
  d.score = 0.97;
  d.received_at = now;
  d.reply = R"({"status":"accepted","decisions":[]})";
  for (auto _ : state) {
    if (!txn) txn = *(*store)->Begin(now);
    d.id = absl::StrCat("d_", n);
    d.entity = absl::StrCat("user:a", n % 100000);
    d.observed_at = now - absl::Seconds(n % 3600);
    d.json = absl::StrCat(R"({"id":")", d.id, R"(","source":"bot-model","type":)",
                          R"("artificial_streaming","entity":")", d.entity,
                          R"(","score":0.97,"observed_at":"2026-01-01T00:00:00Z"})");
    absl::Status st = txn->Savepoint();
    if (st.ok()) {
      auto seen = txn->GetDetection(d.source, d.id);
      st = !seen.ok() ? seen.status() : txn->PutDetection(d);
    }
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
  store->reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_TxnDetection);
BENCHMARK(BM_TxnDetection)->Iterations(2000);
BENCHMARK(BM_TxnDetection)->Iterations(12000);

void BM_Fsync(benchmark::State& state) {
  auto dir = BenchDir("fsync");
  std::filesystem::create_directories(dir);
  std::string file = (dir / "probe").string();
  int fd = open(file.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  if (fd < 0) {
    state.SkipWithError("open failed");
    return;
  }
  std::string block(4096, 'x');
  for (auto _ : state) {
    if (write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
        fdatasync(fd) != 0) {
      state.SkipWithError("write/fdatasync failed");
      break;
    }
  }
  close(fd);
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_Fsync)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace quell::ledger

BENCHMARK_MAIN();
