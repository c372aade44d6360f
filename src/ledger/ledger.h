// The ledger: the single writer in front of a Store. Every state change in Quell is a
// Mutation submitted here. One commit thread takes all pending mutations, runs them in
// submission order inside ONE transaction (group commit), commits once, tells the
// listeners (the index applier, change-feed waiters) about the committed changes in seq
// order, and only then completes each submitter's callback: an acknowledged write is
// durable and already visible to `check`. The commit is pipelined with the store's sync
// (Txn::CommitVisible, Store::SyncCommitted): the commit thread tells the kCommitted
// listeners (views the next mutations depend on: index, safeguards, policies) at once and
// hands the batch to a finisher thread, which syncs the store (one sync for every batch
// waiting), tells the kDurable listeners (whatever passes changes on outside the process:
// feeds, watch streams, webhooks) and completes the batch, while the commit thread
// already runs the next one. So store reads and kCommitted views may show a batch a few
// milliseconds before it is durable (lost only if the machine, not the process, crashes
// then); last_seq() is the durable watermark that change feeds stop at.
//
// Thread-safety: Submit/SubmitAndWait/AddListener are thread-safe. Mutations and
// kCommitted listeners run on the commit thread; kDurable listeners and completions on
// the finisher thread, one call at a time, concurrently with mutations. With
// LedgerOptions::external_delivery every listener runs on the thread that calls Deliver
// (the change feed's) instead.
#ifndef QUELL_LEDGER_LEDGER_H_
#define QUELL_LEDGER_LEDGER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/time.h"
#include "ledger/store.h"
#include "obs/trace.h"

namespace quell::obs {
class Histogram;
class Registry;
}  // namespace quell::obs

namespace quell::ledger {

// Runs on the commit thread inside the batch's transaction. It may read through `txn`,
// then Append changes (and nest its own Savepoint/Release pairs). It must not Commit or
// Rollback `txn`, nor leave a savepoint open: the ledger fails such a mutation with
// kFailedPrecondition. If it returns an error, everything it wrote is rolled back (a
// savepoint surrounds each mutation) and only its own submitter sees the error; the rest
// of the batch commits. `now` is the commit cycle's clock reading.
using Mutation = absl::AnyInvocable<absl::Status(Txn& txn, absl::Time now)>;

// Completion: the mutation's status (or the commit's error) and the changes it appended,
// with their seq. Called once, on the finisher thread; must not block. If the store
// committed the changes but could not make them durable (a failed fsync: kDataLoss), the
// status is that error and the changes are given all the same (they are visible).
using Completion = absl::AnyInvocable<void(absl::Status status, std::vector<Change> changes)>;

// Sees every committed change, in seq order, before any Completion of its batch runs:
// see ListenerTiming for when and on which thread.
class ChangeListener {
 public:
  virtual ~ChangeListener() = default;
  virtual void OnCommitted(const std::vector<Change>& changes) = 0;
};

// When a listener hears of a batch (without external_delivery).
enum class ListenerTiming {
  // On the commit thread, as soon as the batch committed and before the next batch runs,
  // possibly before it is durable: for views later mutations read.
  kCommitted,
  // On the finisher thread, once the batch is durable: for whatever passes changes on
  // outside the process.
  kDurable,
};

struct LedgerOptions {
  int max_batch = 4096;    // mutations per transaction at most
  int max_queue = 100000;  // pending mutations past which Submit fails kUnavailable
  // Several nodes write one store (PostgreSQL): listeners must hear of every node's
  // changes, so the ledger does not call them; whoever follows the store's change
  // feed calls Deliver() with every committed change, in seq order. After a commit the
  // finisher thread waits until Deliver has passed the batch's last seq (at most
  // `delivery_wait`) before completing the batch, so an acknowledged write is visible on
  // this node as it is with local delivery, and no change reaches a listener twice.
  bool external_delivery = false;
  absl::Duration delivery_wait = absl::Seconds(5);
  // Borrowed, may be null; must outlive the ledger. `metrics` gets
  // quell_ledger_commit_duration_seconds and quell_ledger_batch_size (histograms, one
  // observation per group commit). `tracer` records, for each submission traced by its
  // caller (Submit's trace_parent), a "ledger.commit" span (the batch's transaction) and
  // its child "index.apply" (the listeners, or with external_delivery the wait for the
  // feed to apply the batch), with the ledger's timings.
  obs::Registry* metrics = nullptr;
  obs::Tracer* tracer = nullptr;
};

class Ledger {
 public:
  // Takes the store; starts the commit and finisher threads. `clock` is borrowed and must outlive
  // it.
  static absl::StatusOr<std::unique_ptr<Ledger>> Open(std::unique_ptr<Store> store,
                                                      const LedgerOptions& options,
                                                      core::Clock* clock);
  // Drains queued mutations, finishes every batch, stops both threads.
  ~Ledger();

  //! Queues `mutation`; `done` runs once it is committed (or failed). If the queue is
  //! full (or the ledger is being destroyed), `done` runs at once, on the caller's
  //! thread, with kUnavailable (callers map it to 503 + Retry-After). A batch whose
  //! transaction cannot begin or commit completes every mutation with that error.
  void Submit(Mutation mutation, Completion done);
  //! The same, traced: when `trace_parent` is sampled (and the ledger has a tracer) the
  //! ledger records this mutation's commit and apply spans as its children.
  void Submit(Mutation mutation, Completion done, obs::SpanContext trace_parent);
  //! Submit and block until done. Not for event-loop threads, nor the ledger's threads
  //! (a mutation, listener or completion calling it would deadlock).
  absl::StatusOr<std::vector<Change>> SubmitAndWait(Mutation mutation);

  //! Registers a listener (borrowed; must outlive the ledger). Register before writes.
  void AddListener(ChangeListener* listener, ListenerTiming timing = ListenerTiming::kCommitted);

  //! With external_delivery: hands `changes` (committed, in seq order) to every listener,
  //! skipping any with seq <= delivered_seq(), and releases the batches they complete.
  //! Called from one thread at a time (the change feed's). Without external_delivery it
  //! does nothing.
  void Deliver(const std::vector<Change>& changes);
  //! The seq of the last change listeners were told of (external_delivery), else last_seq().
  int64_t delivered_seq() const;
  //! LedgerOptions::external_delivery: listeners hear of changes from a feed, later.
  bool external_delivery() const;

  //! The highest seq committed through this ledger and durable (or found at Open, or
  //! delivered): what a reader that passes changes on may read up to.
  int64_t last_seq() const;
  Store& store() { return *store_; }

  // Counters for /metrics. Thread-safe reads.
  struct Stats {
    int64_t commits = 0;              // batches committed
    int64_t mutations = 0;            // mutations run (committed or not)
    int64_t failed_commits = 0;       // batches whose Begin/Commit failed
    int64_t failed_mutations = 0;     // mutations completed with an error
    int64_t changes = 0;              // changes committed
    double last_commit_seconds = 0;   // Begin..durable (synced) of the last batch
    double total_commit_seconds = 0;  // sum over all batches
    int64_t last_batch_size = 0;
    int64_t max_batch_size = 0;
    int64_t delivery_timeouts = 0;  // external_delivery: batches completed before delivered
  };
  Stats stats() const;

 private:
  Ledger(std::unique_ptr<Store> store, const LedgerOptions& options, core::Clock* clock,
         int64_t last_seq, obs::Histogram* commit_seconds, obs::Histogram* batch_size);
  friend absl::Status WaitDurable(Ledger& ledger, int64_t seq, absl::Duration timeout);
  class Impl;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Impl> impl_;
};

//! The changes after `after` up to the durable watermark (ledger.last_seq()), at most
//! `limit`: what a reader that passes changes on outside the process (feeds, watch
//! streams, webhooks) may hand out. Store::ReadChanges may also return visible changes
//! whose fsync is still in flight. Thread-safe.
absl::StatusOr<std::vector<Change>> ReadDurableChanges(Ledger& ledger, int64_t after, int limit);

//! kOutOfRange if `after` is past the store's last change: a cursor from another ledger
//! (a data directory restored from an older backup, a different cluster). A feed that
//! waited on such a cursor would skip every change up to it once they were written; its
//! reader must reload a snapshot instead. Reads the store (one query). Thread-safe.
//! `field` names the cursor in the message ("after", "after_seq").
absl::Status CheckCursor(Ledger& ledger, int64_t after, std::string_view field = "after");

//! Waits until `seq` is durable (ledger.last_seq() >= seq), at most `timeout`
//! (kUnavailable then): for a reader that hands out a cursor taken from a store scan
//! (snapshots), so that a client never continues after a seq a crash could reuse.
absl::Status WaitDurable(Ledger& ledger, int64_t seq, absl::Duration timeout);

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_LEDGER_H_
