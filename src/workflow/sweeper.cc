#include "workflow/sweeper.h"

#include <cstdio>

#include "core/status.h"
#include "core/threads.h"
#include "workflow/reviews.h"

namespace quell::workflow {

SafeguardSweeper::SafeguardSweeper(ledger::Ledger* ledger, core::Clock* clock,
                                   Safeguards* safeguards)
    : ledger_(ledger), clock_(clock), safeguards_(safeguards) {}

SafeguardSweeper::~SafeguardSweeper() { Stop(); }

void SafeguardSweeper::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    core::NameThisThread("quell-sweeper");
    while (true) {
      if (auto r = RunOnce(); !r.ok()) {
        std::fprintf(stderr, "safeguards sweep: %s\n", r.status().ToString().c_str());
      }
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, absl::ToChronoMilliseconds(safeguards_->options().sweep_interval),
                       [this] { return stop_; })) {
        return;
      }
    }
  });
}

void SafeguardSweeper::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<int> SafeguardSweeper::RunOnce() {
  const SafeguardOptions& o = safeguards_->options();
  const absl::Time now = clock_->Now();
  std::vector<std::string> due;
  QUELL_RETURN_IF_ERROR(ledger_->store()
                            .ScanLive([&](const core::Mitigation& m) {
                              if (m.state == core::MitigationState::kPendingApproval &&
                                  core::OverAt(m, o.pending_ttl) <= now) {
                                due.push_back(m.id);
                              }
                              return absl::OkStatus();
                            })
                            .status());
  int total = 0;
  constexpr size_t kChunk = 5000;
  for (size_t i = 0; i < due.size(); i += kChunk) {
    std::vector<std::string> chunk(due.begin() + i, due.begin() + std::min(due.size(), i + kChunk));
    auto n = std::make_shared<int>(0);
    QUELL_RETURN_IF_ERROR(
        ledger_->SubmitAndWait(ExpirePending(std::move(chunk), o.pending_ttl, n)).status());
    total += *n;
  }
  safeguards_->metrics().pending_expired.fetch_add(total, std::memory_order_relaxed);
  QUELL_RETURN_IF_ERROR(ledger_->store().PurgeIdempotency(now - o.idempotency_retention).status());
  return total;
}

}  // namespace quell::workflow
