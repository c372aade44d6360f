// Long-poll support for the change feed: requests waiting for a change after some seq.
// It listens to the ledger (kDurable); when a durable commit moves the last seq past a
// waiter's, or the
// waiter's deadline passes, the waiter's callback runs (once) on this object's thread.
//
// Thread-safety: thread-safe. Callbacks must not block (they post work elsewhere).
#ifndef QUELL_API_INTERNAL_CHANGE_WAITERS_H_
#define QUELL_API_INTERNAL_CHANGE_WAITERS_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "ledger/ledger.h"

namespace quell::api::internal {

class ChangeWaiters final : public ledger::ChangeListener {
 public:
  explicit ChangeWaiters(int64_t last_seq);
  ~ChangeWaiters() override;  // fires every pending waiter, joins

  //! Fires every pending waiter now, and every later one at once (shutdown: a long-poll
  //! answers with what it has instead of waiting out the server's grace). Idempotent.
  void Close();

  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  //! Runs `wake` once a change with seq > after is committed or at `deadline`,
  //! whichever comes first (at once if one already is).
  void Wait(int64_t after, absl::Time deadline, absl::AnyInvocable<void()> wake);

  int64_t last_seq() const { return last_seq_.load(std::memory_order_acquire); }

 private:
  void TimerLoop();

  struct Waiter {
    int64_t after;
    absl::AnyInvocable<void()> wake;
  };
  std::atomic<int64_t> last_seq_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<absl::Time, Waiter> waiters_;  // by deadline; guarded by mu_
  bool stop_ = false;                          // guarded by mu_
  std::thread timer_;
};

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_CHANGE_WAITERS_H_
