#include "api/internal/change_waiters.h"

#include <vector>

#include "core/threads.h"

namespace quell::api::internal {

ChangeWaiters::ChangeWaiters(int64_t last_seq) : last_seq_(last_seq) {
  timer_ = std::thread([this] {
    core::NameThisThread("quell-waiters");
    TimerLoop();
  });
}

ChangeWaiters::~ChangeWaiters() {
  Close();
  timer_.join();
}

void ChangeWaiters::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();  // the timer fires every waiter, and Wait fires later ones at once
}

void ChangeWaiters::OnCommitted(const std::vector<ledger::Change>& changes) {
  if (changes.empty()) return;
  int64_t seq = changes.back().seq;
  last_seq_.store(seq, std::memory_order_release);
  std::vector<absl::AnyInvocable<void()>> fire;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.after < seq) {
        fire.push_back(std::move(it->second.wake));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& f : fire) f();
}

void ChangeWaiters::Wait(int64_t after, absl::Time deadline, absl::AnyInvocable<void()> wake) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Checked under the lock: OnCommitted stores last_seq_ before taking it, so either we
    // see the new seq here or it sees our waiter.
    if (!stop_ && after >= last_seq_.load(std::memory_order_acquire)) {
      waiters_.emplace(deadline, Waiter{after, std::move(wake)});
      cv_.notify_all();
      return;
    }
  }
  wake();
}

void ChangeWaiters::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (stop_) {
      auto all = std::move(waiters_);
      lock.unlock();
      for (auto& [_, w] : all) w.wake();
      return;
    }
    if (waiters_.empty()) {
      cv_.wait(lock);
      continue;
    }
    absl::Time first = waiters_.begin()->first;
    absl::Time now = absl::Now();
    if (first > now) {
      cv_.wait_for(lock, absl::ToChronoMicroseconds(first - now));
      continue;
    }
    std::vector<absl::AnyInvocable<void()>> fire;
    while (!waiters_.empty() && waiters_.begin()->first <= now) {
      fire.push_back(std::move(waiters_.begin()->second.wake));
      waiters_.erase(waiters_.begin());
    }
    lock.unlock();
    for (auto& f : fire) f();
    lock.lock();
  }
}

}  // namespace quell::api::internal
