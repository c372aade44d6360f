// The gauges and counters that read state owned by other modules (index size, ledger
// progress, the review queue, the change-feed lag) at scrape time. Request metrics are
// recorded by the router itself; the ledger records its commit histograms.
//
// Thread-safety: the callbacks are thread-safe; keep the returned handles alive as long
// as the registry renders them (they unregister on destruction).
#ifndef QUELL_API_SERVER_METRICS_H_
#define QUELL_API_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "obs/metrics.h"

namespace quell::api {

// The open review queue (pending_approval mitigations) as seen through the ledger's
// change stream: depth and the age of the oldest item, without a store query per
// scrape. Load it from the store, then register it as a ledger listener.
//
// Thread-safety: OnCommitted runs on the ledger's listener thread; Load before writes;
// Depth/OldestSince from any thread. Ownership: owns its small map (one entry per open
// review).
class ReviewQueueTracker final : public ledger::ChangeListener {
 public:
  //! Adds every pending_approval mitigation in `store` (by created_at), paging through
  //! ListMitigations by state.
  absl::Status Load(ledger::Store& store);
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  int64_t Depth() const;
  //! When the oldest open review was requested; nullopt when the queue is empty.
  std::optional<absl::Time> OldestSince() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> open_ ABSL_GUARDED_BY(mu_);  // id -> since
};

//! True when a mitigation change's payload (core::MitigationToJson bytes) has the state
//! pending_approval. Reads only the top-level "state" field. Exposed for tests.
bool PayloadIsPendingApproval(std::string_view payload);

//! The name that labels this node's feed-lag gauges: `configured` when not empty, else
//! the host name, else "unknown".
std::string NodeName(std::string_view configured);

//! Registers build info and the ledger, index, review-queue and feed-lag metrics.
//! `ledger` and `index` are borrowed and must outlive the handles. The review-queue
//! tracker is created here, loaded from the ledger's store and added as a ledger
//! listener; the handles keep it alive (destroy them after the ledger, as with every
//! listener). `node` labels quell_feed_lag_* (see NodeName).
absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(obs::Registry& registry,
                                                                       std::string_view version,
                                                                       ledger::Ledger* ledger,
                                                                       index::Index* index,
                                                                       std::string_view node = {});

}  // namespace quell::api

#endif  // QUELL_API_SERVER_METRICS_H_
