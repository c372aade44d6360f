#include "workflow/expiry.h"

#include <cstdio>

#include "core/status.h"
#include "core/threads.h"
#include "workflow/mitigations.h"

namespace quell::workflow {

ExpiryScheduler::ExpiryScheduler(ledger::Ledger* ledger, core::Clock* clock,
                                 absl::Duration max_sleep, WhyHeldFn why_held)
    : ledger_(ledger), clock_(clock), max_sleep_(max_sleep), why_held_(std::move(why_held)) {}

ExpiryScheduler::~ExpiryScheduler() { Stop(); }

void ExpiryScheduler::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    core::NameThisThread("quell-expiry");
    Loop();
  });
}

void ExpiryScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<int> ExpiryScheduler::RunOnce() {
  constexpr int kPage = 1000;
  int total = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(auto due, ledger_->store().ListDue(clock_->Now(), kPage));
    if (due.empty()) return total;
    std::vector<std::string> ids;
    ids.reserve(due.size());
    for (const auto& m : due) ids.push_back(m.id);
    auto count = std::make_shared<int>(0);
    QUELL_RETURN_IF_ERROR(
        ledger_->SubmitAndWait(ApplyDue(std::move(ids), count, why_held_)).status());
    total += *count;
    // A page where nothing moved means the clock the store compared with and the commit
    // clock disagree (a fake clock in tests); stop instead of spinning.
    if (*count == 0 || static_cast<int>(due.size()) < kPage) return total;
  }
}

void ExpiryScheduler::Loop() {
  while (true) {
    auto done = RunOnce();
    if (!done.ok()) {
      std::fprintf(stderr, "expiry: %s\n", done.status().ToString().c_str());
    }
    absl::Duration sleep = max_sleep_;
    if (auto next = ledger_->store().NextDue(); next.ok() && next->has_value()) {
      sleep = std::clamp(**next - clock_->Now(), absl::Milliseconds(5), max_sleep_);
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, absl::ToChronoMilliseconds(sleep), [this] { return stop_; })) return;
  }
}

}  // namespace quell::workflow
