// Detection retention: stored detections (ledger::StoredDetection, kept for idempotency,
// timelines and backtests) are purged once they were received longer ago than the
// configured retention (`detections: {retention: 30d}`, default 30 days).
//
// Consequence for idempotency: a detection whose stored copy was purged is no longer
// recognised as a duplicate; a replay of it after the retention is accepted and decided
// again. Backtests see only what is still stored.
//
// Purges run in the store's own small transactions (Store::PurgeDetections), so the commit
// thread is never held up for long; the first runs at Start(), then every `interval`.
//
// Thread-safety: Start/Stop/RunOnce are thread-safe; one background thread does the work.
// Ownership: borrows the store and the clock, which must outlive the job.
#ifndef QUELL_WORKFLOW_RETENTION_H_
#define QUELL_WORKFLOW_RETENTION_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/time.h"
#include "ledger/store.h"

namespace quell::workflow {

inline constexpr absl::Duration kDefaultDetectionRetention = absl::Hours(24 * 30);

class DetectionRetention {
 public:
  // `retention` must be > 0.
  DetectionRetention(ledger::Store* store, core::Clock* clock, absl::Duration retention,
                     absl::Duration interval = absl::Minutes(5));
  ~DetectionRetention();
  DetectionRetention(const DetectionRetention&) = delete;
  DetectionRetention& operator=(const DetectionRetention&) = delete;

  void Start();
  void Stop();
  //! Purges the detections received before clock->Now() - retention; returns how many.
  absl::StatusOr<int64_t> RunOnce();
  //! Detections purged since construction.
  int64_t purged_total() const { return purged_total_.load(); }

 private:
  void Loop();

  ledger::Store* store_;
  core::Clock* clock_;
  absl::Duration retention_;
  absl::Duration interval_;
  std::atomic<int64_t> purged_total_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_RETENTION_H_
