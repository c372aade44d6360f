// The safeguards' background sweep: expires pending approvals older than
// SafeguardOptions::pending_ttl (as ledger changes, never activating them) and purges
// idempotency records past their retention.
//
// Thread-safety: Start/Stop/RunOnce are thread-safe; one background thread does the work.
#ifndef QUELL_WORKFLOW_SWEEPER_H_
#define QUELL_WORKFLOW_SWEEPER_H_

#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/time.h"
#include "ledger/ledger.h"
#include "workflow/safeguards.h"

namespace quell::workflow {

class SafeguardSweeper {
 public:
  // Borrows all three; they must outlive the sweeper.
  SafeguardSweeper(ledger::Ledger* ledger, core::Clock* clock, Safeguards* safeguards);
  ~SafeguardSweeper();
  void Start();
  void Stop();
  //! One sweep now; returns how many pending approvals expired.
  absl::StatusOr<int> RunOnce();

 private:
  ledger::Ledger* ledger_;
  core::Clock* clock_;
  Safeguards* safeguards_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_SWEEPER_H_
