// The expiry scheduler: makes time-driven transitions happen without any request.
// Expiry is itself a ledger change (active -> expired, scheduled -> active), so every
// view (index, feed, timeline) learns of it in seq order.
//
// Thread-safety: Start/Stop/RunOnce are thread-safe; one background thread does the work.
#ifndef QUELL_WORKFLOW_EXPIRY_H_
#define QUELL_WORKFLOW_EXPIRY_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/time.h"
#include "ledger/ledger.h"
#include "workflow/mitigations.h"

namespace quell::workflow {

class ExpiryScheduler {
 public:
  // Borrows `ledger` and `clock`; both must outlive the scheduler.
  // `max_sleep` bounds how long it waits between looks at the store. `why_held` (may
  // be null): holds a policy's scheduled decision at its start if its entity became
  // protected or immune meanwhile (ApplyDue).
  ExpiryScheduler(ledger::Ledger* ledger, core::Clock* clock,
                  absl::Duration max_sleep = absl::Seconds(1), WhyHeldFn why_held = nullptr);
  ~ExpiryScheduler();

  void Start();
  void Stop();
  //! Applies every transition due now; returns how many happened.
  absl::StatusOr<int> RunOnce();

 private:
  void Loop();

  ledger::Ledger* ledger_;
  core::Clock* clock_;
  absl::Duration max_sleep_;
  WhyHeldFn why_held_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_EXPIRY_H_
