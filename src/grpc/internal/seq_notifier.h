// Wakes threads waiting for the ledger's durable seq to pass a seq (Watch streams, which
// hold a thread each). A kDurable ledger listener: OnCommitted publishes the last seq and wakes
// every waiter, who re-check their own condition.
//
// Thread-safety: thread-safe.
#ifndef QUELL_GRPC_INTERNAL_SEQ_NOTIFIER_H_
#define QUELL_GRPC_INTERNAL_SEQ_NOTIFIER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "absl/time/time.h"
#include "ledger/ledger.h"

namespace quell::grpc_api::internal {

class SeqNotifier final : public ledger::ChangeListener {
 public:
  explicit SeqNotifier(int64_t last_seq) : last_seq_(last_seq) {}

  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  //! Blocks until a change with seq > `after` is durable (true), or `until` passes,
  //! or `stop()` turns true (false). `stop` is polled every `slice`: it is for cancels
  //! and shutdown, which do not notify.
  bool WaitPast(int64_t after, absl::Time until, const std::function<bool()>& stop,
                absl::Duration slice = absl::Milliseconds(50));

  //! Wakes every waiter now (they re-check `stop`).
  void WakeAll();

  int64_t last_seq() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t last_seq_;  // guarded by mu_
};

}  // namespace quell::grpc_api::internal

#endif  // QUELL_GRPC_INTERNAL_SEQ_NOTIFIER_H_
