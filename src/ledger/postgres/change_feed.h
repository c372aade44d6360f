// A node's tailer of the PostgreSQL ledger: delivers every committed change, of every
// node, exactly once and in seq order, to `apply`.
//
//   auto feed = PostgresChangeFeed::Start(store, {.url = url, .after = seq}, apply);
//
// One thread with its own connection: LISTEN quell_changes, then catch up with
// store->ReadChanges(applied, page) until a short page, then wait for a notification or
// `poll` (a lost notification costs at most that long), and catch up again. On a lost
// connection it reconnects (with back-off) and LISTENs before catching up, so nothing
// committed meanwhile is missed. Commits are serialised on the chain head row, so visible
// seqs are always 1..K: a seq other than applied + 1 is corruption, and the feed stops
// with kDataLoss rather than skip (see docs/cluster.md).
//
// Thread-safety: applied() and status() are thread-safe; `apply` runs on the feed's
// thread only. Ownership: borrows `store` (must outlive the feed); the destructor stops
// and joins the thread.
#ifndef QUELL_LEDGER_POSTGRES_CHANGE_FEED_H_
#define QUELL_LEDGER_POSTGRES_CHANGE_FEED_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ledger/change.h"
#include "ledger/store.h"

namespace quell::ledger {

struct ChangeFeedOptions {
  std::string url;                         // libpq connection string of the ledger
  int64_t after = 0;                       // the last seq already applied
  absl::Duration poll = absl::Seconds(1);  // re-check without a notification
  int page = 1000;                         // changes per catch-up read
};

class PostgresChangeFeed {
 public:
  using Apply = std::function<absl::Status(const Change&)>;
  //! Gets each page read (1..page changes, contiguous seqs, after applied()).
  using ApplyPage = std::function<absl::Status(const std::vector<Change>&)>;

  //! Starts the feed's thread. kInvalidArgument on bad options.
  static absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> Start(Store* store,
                                                                   ChangeFeedOptions options,
                                                                   Apply apply);
  //! The same, applying a page of changes at a time (one call per catch-up read).
  static absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> StartPaged(Store* store,
                                                                        ChangeFeedOptions options,
                                                                        ApplyPage apply);
  ~PostgresChangeFeed();
  PostgresChangeFeed(const PostgresChangeFeed&) = delete;
  PostgresChangeFeed& operator=(const PostgresChangeFeed&) = delete;

  //! The seq of the last change applied.
  int64_t applied() const { return applied_.load(); }
  //! OK, or the latest error (transient ones are retried; kDataLoss and apply's errors
  //! stop the feed).
  absl::Status status() const;
  //! Whether the feed stopped for good (see status()).
  bool stopped() const { return stopped_.load(); }

 private:
  PostgresChangeFeed(Store* store, ChangeFeedOptions options, ApplyPage apply, int wake_fd);
  void Run();
  void SetStatus(absl::Status s);

  Store* const store_;
  const ChangeFeedOptions options_;
  const ApplyPage apply_;
  const int wake_fd_;  // eventfd: the destructor wakes the thread
  std::atomic<bool> stop_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<int64_t> applied_;
  mutable absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_POSTGRES_CHANGE_FEED_H_
