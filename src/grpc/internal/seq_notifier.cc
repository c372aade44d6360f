#include "grpc/internal/seq_notifier.h"

#include <algorithm>

namespace quell::grpc_api::internal {

void SeqNotifier::OnCommitted(const std::vector<ledger::Change>& changes) {
  if (changes.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_seq_ = std::max(last_seq_, changes.back().seq);
  }
  cv_.notify_all();
}

bool SeqNotifier::WaitPast(int64_t after, absl::Time until, const std::function<bool()>& stop,
                           absl::Duration slice) {
  std::unique_lock<std::mutex> lock(mu_);
  while (last_seq_ <= after) {
    if (stop()) return false;
    absl::Time now = absl::Now();
    if (now >= until) return false;
    cv_.wait_for(lock, absl::ToChronoMicroseconds(std::min(until - now, slice)));
  }
  return true;
}

void SeqNotifier::WakeAll() {
  { std::lock_guard<std::mutex> lock(mu_); }
  cv_.notify_all();
}

int64_t SeqNotifier::last_seq() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_seq_;
}

}  // namespace quell::grpc_api::internal
