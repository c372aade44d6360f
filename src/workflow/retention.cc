#include "workflow/retention.h"

#include <cstdio>

#include "core/status.h"
#include "core/threads.h"

namespace quell::workflow {

DetectionRetention::DetectionRetention(ledger::Store* store, core::Clock* clock,
                                       absl::Duration retention, absl::Duration interval)
    : store_(store), clock_(clock), retention_(retention), interval_(interval) {
  QUELL_CHECK(retention_ > absl::ZeroDuration());
}

DetectionRetention::~DetectionRetention() { Stop(); }

void DetectionRetention::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    core::NameThisThread("quell-retention");
    Loop();
  });
}

void DetectionRetention::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<int64_t> DetectionRetention::RunOnce() {
  QUELL_ASSIGN_OR_RETURN(int64_t n, store_->PurgeDetections(clock_->Now() - retention_));
  purged_total_.fetch_add(n);
  return n;
}

void DetectionRetention::Loop() {
  while (true) {
    auto done = RunOnce();
    if (!done.ok()) {
      // Retried at the next interval; nothing is lost by waiting.
      std::fprintf(stderr, "detection retention: %s\n", done.status().ToString().c_str());
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, absl::ToChronoMilliseconds(interval_), [this] { return stop_; })) {
      return;
    }
  }
}

}  // namespace quell::workflow
