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
#include "core/time.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "obs/metrics.h"

namespace quell::api {

// What an open review is, as GET /v1/reviews and the appeals API name it (the `kind`
// label of the review-queue gauges):
//   kMitigation: a mitigation pending approval (GET /v1/reviews kind "mitigation");
//                open until decided or past created_at + pending_ttl.
//   kRollback:   a bulk rollback request pending approval (kind "rollback", id "rb_...");
//                open until decided or past requested_at + pending_ttl.
//   kAppeal:     an open appeal (POST /v1/appeals, id "ap_..."); open until granted or
//                denied (appeals do not expire).
enum class ReviewKind { kMitigation = 0, kRollback = 1, kAppeal = 2 };
inline constexpr ReviewKind kReviewKinds[] = {ReviewKind::kMitigation, ReviewKind::kRollback,
                                              ReviewKind::kAppeal};
//! "mitigation", "rollback", "appeal".
std::string_view ReviewKindName(ReviewKind kind);

struct ReviewQueueOptions {
  const core::Clock* clock = nullptr;  // nullptr = core::RealClock::Get()
  // SafeguardOptions::pending_ttl: pending approvals and rollback requests stop counting
  // once this old, even though nothing is written when a rollback request expires (and
  // the sweeper expires approvals only on its next pass).
  absl::Duration pending_ttl = absl::Hours(24 * 7);
};

// Depth and age of the oldest item of one kind of the open review queue.
struct ReviewQueueFigures {
  int64_t depth = 0;
  std::optional<absl::Time> oldest;  // when the oldest open item was requested
  absl::Duration oldest_age;         // its age at the tracker's clock (0 if none)
};

// The open review queue (pending approvals, pending rollback requests, open appeals) as
// seen through the ledger's change stream: depth and the age of the oldest item per
// kind, without a store query per scrape. Load it from the store, then register it as a
// ledger listener (on PostgreSQL the change feed delivers every node's changes to it).
// Items past their expiry are not counted, and dropped, when the figures are read.
//
// Thread-safety: OnCommitted runs on the ledger's listener (or change-feed) thread; Load
// before the listener is added; Figures/Depth/OldestSince from any thread. Ownership:
// owns its small maps (one entry per open item); borrows the clock, which must outlive it.
class ReviewQueueTracker final : public ledger::ChangeListener {
 public:
  explicit ReviewQueueTracker(ReviewQueueOptions options = {});

  //! Finds every open item: replays the review changes (rollback requests and appeals are
  //! only in the log; Store::ReadChangesOfKind, not the whole log) and lists the pending
  //! approvals. Changes up to the log head it saw are then ignored by OnCommitted (a
  //! change feed may start earlier and deliver them again).
  absl::Status Load(ledger::Store& store);
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  //! The open items of `kind` at the clock's now (expired ones are dropped).
  ReviewQueueFigures Figures(ReviewKind kind) const;
  int64_t Depth(ReviewKind kind) const { return Figures(kind).depth; }
  //! When the oldest open item of `kind` was requested; nullopt when there is none.
  std::optional<absl::Time> OldestSince(ReviewKind kind) const { return Figures(kind).oldest; }

 private:
  struct Item {
    absl::Time since;
    absl::Time expires = absl::InfiniteFuture();
  };
  void ApplyLocked(const ledger::Change& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OpenLocked(ReviewKind kind, const std::string& id, absl::Time since, bool expires)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const core::Clock* const clock_;
  const absl::Duration pending_ttl_;
  mutable absl::Mutex mu_;
  int64_t loaded_seq_ ABSL_GUARDED_BY(mu_) = 0;  // the log head when Load read it
  // Per kind (index = ReviewKind): id -> when requested, when it expires.
  mutable absl::flat_hash_map<std::string, Item> open_[3] ABSL_GUARDED_BY(mu_);
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
//! listener). `node` labels quell_feed_lag_* (see NodeName). `review_options` gives the
//! tracker its clock and the safeguards' pending_ttl (pass the one the API uses).
absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(
    obs::Registry& registry, std::string_view version, ledger::Ledger* ledger, index::Index* index,
    std::string_view node = {}, ReviewQueueOptions review_options = {});

}  // namespace quell::api

#endif  // QUELL_API_SERVER_METRICS_H_
