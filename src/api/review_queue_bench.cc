// Start-up cost of the review-queue gauges: ReviewQueueTracker::Load reads the review
// changes (rollback requests and appeals are only in the log) and the pending approvals.
//
//   review_queue_bench [--benchmark_filter=...]   (data under $QUELL_BENCH_DIR or the temp dir)
//
// BM_ReviewQueueLoad/<changes>: a SQLite ledger of `changes` mitigation changes (1% of
// them pending approval) plus 100 open appeals and 10 pending rollback requests, built
// once; each iteration loads a fresh tracker from it. items_per_second = log changes per
// second of Load (the log it has to search), not items read.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/server_metrics.h"
#include "benchmark/benchmark.h"
#include "core/ids.h"
#include "core/status.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/appeals.h"
#include "workflow/mitigations.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::api {
namespace {

// Mitigation `i` of the log: 1% of them pending approval.
absl::Status AppendSample(ledger::Txn& txn, absl::Time now, int64_t i) {
  core::Mitigation m;
  m.id = core::NewId("m_", now);
  QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(absl::StrCat("user:u", i)));
  m.action = "exclude_royalties";
  m.state = i % 100 == 0 ? core::MitigationState::kPendingApproval : core::MitigationState::kActive;
  m.created_at = m.starts_at = now;
  m.expires_at = now + absl::Hours(24 * 90);
  m.reason = "artificial_streaming score 0.97";
  m.source = "bot-model";
  m.policy = "bot-model-high";
  m.detections = {"d_0001"};
  return workflow::AppendMitigationChange(txn, m, "k_detector", now).status();
}

absl::Status Fill(ledger::Ledger& ledger, int64_t changes) {
  constexpr int64_t kPerTxn = 10000;
  for (int64_t done = 0; done < changes; done += kPerTxn) {
    const int64_t end = std::min(changes, done + kPerTxn);
    QUELL_RETURN_IF_ERROR(
        ledger
            .SubmitAndWait([done, end](ledger::Txn& txn, absl::Time now) -> absl::Status {
              for (int64_t i = done; i < end; ++i) QUELL_RETURN_IF_ERROR(AppendSample(txn, now, i));
              return absl::OkStatus();
            })
            .status());
  }
  // 100 appeals against active ones (every 100th mitigation after the first pending one).
  auto active =
      ledger.store().ListMitigations({.state = core::MitigationState::kActive, .limit = 100});
  if (!active.ok()) return active.status();
  std::vector<std::string> appealable;
  for (const core::Mitigation& m : active->mitigations) appealable.push_back(m.id);
  for (const std::string& id : appealable) {
    auto out = std::make_shared<workflow::Appeal>();
    QUELL_RETURN_IF_ERROR(
        ledger
            .SubmitAndWait(workflow::FileAppeal(id, "not me", "k_user", out,
                                                workflow::SafeguardOptions{}.pending_ttl))
            .status());
  }
  workflow::RollbackRequests rollbacks;
  for (int i = 0; i < 10; ++i) {
    workflow::RollbackRequest r;
    r.id = absl::StrCat("rb_", i);
    r.filter.source = "bot-model";
    r.requested_by = "k_admin";
    auto out = std::make_shared<workflow::RollbackRequest>();
    QUELL_RETURN_IF_ERROR(ledger.SubmitAndWait(rollbacks.Request(r, out)).status());
  }
  return absl::OkStatus();
}

void BM_ReviewQueueLoad(benchmark::State& state) {
  const int64_t changes = state.range(0);
  const char* env = std::getenv("QUELL_BENCH_DIR");
  const std::filesystem::path dir = std::filesystem::path(env ? env : "/tmp") /
                                    absl::StrCat("quell-review-queue-bench-", getpid());
  std::filesystem::remove_all(dir);
  {
    auto store = ledger::OpenSqliteStore({.path = dir.string(), .synchronous_full = false});
    if (!store.ok()) return state.SkipWithError(std::string(store.status().message()).c_str());
    auto ledger = ledger::Ledger::Open(*std::move(store), {}, core::RealClock::Get());
    if (!ledger.ok()) return state.SkipWithError(std::string(ledger.status().message()).c_str());
    if (auto st = Fill(**ledger, changes); !st.ok())
      return state.SkipWithError(std::string(st.message()).c_str());
    int64_t depth = 0;
    for (auto _ : state) {
      ReviewQueueTracker t({.pending_ttl = absl::Hours(24)});
      if (auto st = t.Load((*ledger)->store()); !st.ok())
        return state.SkipWithError(std::string(st.message()).c_str());
      depth = t.Depth(ReviewKind::kMitigation) + t.Depth(ReviewKind::kRollback) +
              t.Depth(ReviewKind::kAppeal);
    }
    // 1% pending + 100 appeals + 10 rollback requests: a wrong count shows here.
    state.counters["open"] = static_cast<double>(depth);
    state.SetItemsProcessed(state.iterations() * changes);
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_ReviewQueueLoad)->Arg(100000)->Arg(1000000)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace quell::api

BENCHMARK_MAIN();
