#include "ledger/ledger.h"

#include <algorithm>
#include <deque>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "obs/metrics.h"

namespace quell::ledger {
namespace {

// The Txn a mutation sees: forwards to the batch's transaction, records the changes the
// mutation appends (so the ledger can hand them to its Completion), and keeps the
// mutation from finishing the shared transaction.
class RecordingTxn final : public Txn {
 public:
  RecordingTxn(Txn& inner, std::vector<Change>* sink) : inner_(inner), sink_(sink) {}

  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return inner_.GetMitigation(id);
  }
  absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                         std::string_view action) override {
    return inner_.FindLive(entity, action);
  }
  absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                  std::string_view key) override {
    return inner_.GetIdempotency(scope, key);
  }
  absl::Status PutIdempotency(const IdempotencyRecord& record) override {
    return inner_.PutIdempotency(record);
  }
  absl::StatusOr<Change> Append(Change change, const core::Mitigation* mitigation) override {
    auto r = inner_.Append(std::move(change), mitigation);
    if (r.ok()) Record(*r, mitigation);
    return r;
  }
  int64_t NextSeq() const override { return inner_.NextSeq(); }
  absl::StatusOr<std::optional<Change>> AppendMitigationIfAt(Change change,
                                                             const core::Mitigation& mitigation,
                                                             int64_t expected_seq) override {
    auto r = inner_.AppendMitigationIfAt(std::move(change), mitigation, expected_seq);
    if (r.ok() && r->has_value()) Record(**r, &mitigation);
    return r;
  }
  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                              std::string_view id) override {
    return inner_.GetDetection(source, id);
  }
  absl::Status PutDetection(const StoredDetection& d) override { return inner_.PutDetection(d); }
  absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
      const std::vector<DetectionKey>& keys) override {
    return inner_.GetDetectionReplies(keys);
  }
  absl::Status PutDetections(const std::vector<StoredDetection>& ds) override {
    return inner_.PutDetections(ds);
  }
  absl::StatusOr<std::vector<bool>> PutNewDetections(
      const std::vector<StoredDetection>& ds) override {
    return inner_.PutNewDetections(ds);
  }
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    return inner_.CountMitigations(entity, policy, action, since, exclude_shadow);
  }
  absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(const core::Entity& entity,
                                                                  absl::Time since) override {
    return inner_.EntityMitigations(entity, since);
  }
  absl::StatusOr<int64_t> NextPolicyVersion() override { return inner_.NextPolicyVersion(); }
  absl::StatusOr<bool> ListHas(std::string_view name, const core::Entity& entity) override {
    return inner_.ListHas(name, entity);
  }
  // A mutation may nest its own savepoints; the recorded changes follow them.
  absl::Status Savepoint() override {
    QUELL_RETURN_IF_ERROR(inner_.Savepoint());
    marks_.push_back(sink_->size());
    return absl::OkStatus();
  }
  absl::Status RollbackToSavepoint() override {
    if (marks_.empty()) return absl::FailedPreconditionError("no savepoint of this mutation");
    QUELL_RETURN_IF_ERROR(inner_.RollbackToSavepoint());
    sink_->resize(marks_.back());
    marks_.pop_back();
    return absl::OkStatus();
  }
  absl::Status ReleaseSavepoint() override {
    if (marks_.empty()) return absl::FailedPreconditionError("no savepoint of this mutation");
    QUELL_RETURN_IF_ERROR(inner_.ReleaseSavepoint());
    marks_.pop_back();
    return absl::OkStatus();
  }
  absl::Status Commit() override {
    misused_ = true;
    return absl::FailedPreconditionError("a mutation must not commit; the ledger does");
  }
  void Rollback() override { misused_ = true; }

  // True if the mutation tried to finish the transaction or left savepoints open.
  bool misused() const { return misused_ || !marks_.empty(); }
  size_t open_marks() const { return marks_.size(); }

 private:
  // Keeps a copy for the listeners, with the mitigation attached so that they need not
  // parse the payload the store has just serialised from it.
  void Record(const Change& c, const core::Mitigation* mitigation) {
    Change& recorded = sink_->emplace_back(c);
    if (mitigation != nullptr)
      recorded.mitigation = std::make_shared<const core::Mitigation>(*mitigation);
  }

  Txn& inner_;
  std::vector<Change>* sink_;
  std::vector<size_t> marks_;
  bool misused_ = false;
};

}  // namespace

class Ledger::Impl {
 public:
  Impl(Store* store, const LedgerOptions& options, core::Clock* clock, int64_t last_seq,
       obs::Histogram* commit_seconds, obs::Histogram* batch_size)
      : store_(store),
        options_(options),
        clock_(clock),
        commit_seconds_(commit_seconds),
        batch_size_(batch_size),
        last_seq_(last_seq),
        delivered_seq_(last_seq) {
    finisher_ = std::thread([this] {
      core::NameThisThread("quell-finish");
      FinishLoop();
    });
    thread_ = std::thread([this] {
      core::NameThisThread("quell-commit");
      Run();
    });
  }

  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      wake_.Signal();
      delivered_.SignalAll();
    }
    thread_.join();
    finisher_.join();  // the commit thread's exit tells it to finish and stop
  }

  void Submit(Mutation mutation, Completion done, obs::SpanContext trace_parent) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_ && static_cast<int>(queue_.size()) < options_.max_queue) {
        queue_.push_back({std::move(mutation), std::move(done), std::move(trace_parent)});
        wake_.Signal();
        return;
      }
    }
    done(absl::UnavailableError("ledger queue is full or the ledger is stopping"), {});
  }

  void AddListener(ChangeListener* listener, ListenerTiming timing) {
    absl::MutexLock lock(&mu_);
    (timing == ListenerTiming::kCommitted ? committed_listeners_ : durable_listeners_)
        .push_back(listener);
  }

  int64_t last_seq() const { return last_seq_.load(std::memory_order_acquire); }

  bool external_delivery() const { return options_.external_delivery; }

  int64_t delivered_seq() const {
    if (!options_.external_delivery) return last_seq();
    absl::MutexLock lock(&mu_);
    return delivered_seq_;
  }

  void Deliver(const std::vector<Change>& changes) {
    if (!options_.external_delivery || changes.empty()) return;
    std::vector<ChangeListener*> listeners;
    int64_t delivered;
    {
      absl::MutexLock lock(&mu_);
      listeners = committed_listeners_;  // every listener: the changes are durable
      listeners.insert(listeners.end(), durable_listeners_.begin(), durable_listeners_.end());
      delivered = delivered_seq_;
    }
    // Only this thread moves delivered_seq_, so the copy stays exact while unlocked.
    std::vector<Change> fresh;
    for (const Change& c : changes) {
      if (c.seq > delivered) fresh.push_back(c);
    }
    if (fresh.empty()) return;
    // The watermark first: a listener woken by these changes may read up to it.
    const int64_t last = fresh.back().seq;
    RaiseLastSeq(last);
    for (ChangeListener* l : listeners) l->OnCommitted(fresh);
    absl::MutexLock lock(&mu_);
    delivered_seq_ = last;
    delivered_.SignalAll();
  }

  Stats stats() const {
    absl::MutexLock lock(&stats_mu_);
    return stats_;
  }

 private:
  struct Item {
    Mutation mutation;
    Completion done;
    obs::SpanContext trace_parent;  // invalid: not traced
  };
  struct Outcome {
    absl::Status status;
    std::vector<Change> changes;
  };

  // A batch whose transaction has run: committed (visible, not yet known durable) or
  // failed, waiting for the finisher. `changes`: the committed changes in seq order, moved
  // out of the outcomes for the listeners (a change's payload is most of its size, and
  // copying every one was a few percent of the commit thread) and back for completions.
  struct Executed {
    std::vector<Item> items;
    std::vector<Outcome> outcomes;
    std::vector<Change> changes;
    absl::Status batch_error;
    absl::Time started;
    absl::Time applied;  // the transaction committed and the kCommitted listeners ran
  };

  // Executed batches waiting for the finisher at most: past it the commit thread waits,
  // so that the queue bound (max_queue) still bounds what is in flight.
  static constexpr size_t kMaxExecuted = 2;

  // The commit thread runs transactions back to back: each committed batch goes to the
  // kCommitted listeners at once, then to the finisher thread, which syncs the store (one
  // SyncCommitted for every batch waiting), tells the kDurable listeners and completes
  // the batches, in commit order.
  void Run() {
    std::vector<Item> batch;
    std::vector<ChangeListener*> committed_listeners;
    while (true) {
      batch.clear();
      {
        absl::MutexLock lock(&mu_);
        while (queue_.empty() && !stopping_) wake_.Wait(&mu_);
        if (queue_.empty()) break;  // stopping, and drained
        // Everything that queued up while the previous commit was running: group commit.
        while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        committed_listeners = committed_listeners_;
      }
      Executed e = Execute(std::move(batch));
      if (!e.changes.empty() && !options_.external_delivery) {
        // Before the next batch runs: its mutations may depend on what these listeners
        // keep (the safeguards' immunity and protected lists, the index).
        for (ChangeListener* l : committed_listeners) l->OnCommitted(e.changes);
      }
      e.applied = absl::Now();
      absl::MutexLock lock(&finish_mu_);
      while (executed_.size() >= kMaxExecuted) finish_room_.Wait(&finish_mu_);
      executed_.push_back(std::move(e));
      finish_wake_.Signal();
    }
    absl::MutexLock lock(&finish_mu_);
    commits_done_ = true;
    finish_wake_.Signal();
  }

  void FinishLoop() {
    std::deque<Executed> ready;
    while (true) {
      {
        absl::MutexLock lock(&finish_mu_);
        while (executed_.empty() && !commits_done_) finish_wake_.Wait(&finish_mu_);
        if (executed_.empty()) return;  // the commit thread stopped, everything finished
        ready.swap(executed_);
        finish_room_.Signal();
      }
      // One sync covers every transaction committed before it started.
      bool any_committed = false;
      for (const Executed& e : ready) any_committed |= e.batch_error.ok();
      const absl::Status synced = any_committed ? store_->SyncCommitted() : absl::OkStatus();
      for (Executed& e : ready) Finish(e, synced);
      ready.clear();
    }
  }

  Executed Execute(std::vector<Item> batch) {
    Executed e;
    e.started = absl::Now();
    e.items = std::move(batch);
    const absl::Time now = clock_->Now();
    std::vector<Item>& items = e.items;
    e.outcomes.resize(items.size());
    e.batch_error = [&]() -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Txn> txn, store_->Begin(now));
      for (size_t i = 0; i < items.size(); ++i) {
        QUELL_RETURN_IF_ERROR(txn->Savepoint());
        RecordingTxn rec(*txn, &e.outcomes[i].changes);
        absl::Status st = items[i].mutation(rec, now);
        if (st.ok() && rec.misused()) {
          st = absl::FailedPreconditionError(
              "mutation finished the transaction or left a savepoint open");
        }
        // Unwind savepoints the mutation left open, then its own.
        for (size_t k = rec.open_marks(); k > 0; --k) {
          QUELL_RETURN_IF_ERROR(txn->RollbackToSavepoint());
        }
        if (st.ok()) {
          QUELL_RETURN_IF_ERROR(txn->ReleaseSavepoint());
        } else {
          QUELL_RETURN_IF_ERROR(txn->RollbackToSavepoint());
          e.outcomes[i].status = std::move(st);
          e.outcomes[i].changes.clear();
        }
      }
      return txn->CommitVisible();
    }();
    if (e.batch_error.ok()) {
      size_t total = 0;
      for (const Outcome& o : e.outcomes) total += o.changes.size();
      e.changes.reserve(total);
      for (Outcome& o : e.outcomes) {
        std::move(o.changes.begin(), o.changes.end(), std::back_inserter(e.changes));
      }
    }
    return e;
  }

  // After the sync that covers the batch (`synced`, its status): tells the kDurable
  // listeners and completes each mutation.
  void Finish(Executed& e, const absl::Status& synced) {
    if (e.batch_error.ok() && !synced.ok()) {
      // The transaction committed (it is visible, and the listeners must follow the
      // store), but it may not survive a crash of the machine: its submitters are told.
      for (Outcome& o : e.outcomes) {
        if (o.status.ok()) o.status = synced;
      }
    }
    const absl::Time durable = absl::Now();
    const absl::Duration took = durable - e.started;
    std::vector<Item>& batch = e.items;
    std::vector<Outcome>& outcomes = e.outcomes;
    const absl::Status& batch_error = e.batch_error;

    std::vector<Change>& committed = e.changes;
    int64_t failed = 0;
    if (!batch_error.ok()) {
      // Nothing of the batch is durable: every mutation that had succeeded gets the
      // batch's error; those that failed on their own keep their own.
      for (Outcome& o : outcomes) {
        if (o.status.ok()) o.status = batch_error;
        o.changes.clear();
      }
      failed = static_cast<int64_t>(batch.size());
    } else {
      for (const Outcome& o : outcomes) {
        if (!o.status.ok()) ++failed;
      }
      // The durable watermark: readers that pass changes on (feeds) stop at it. Not past
      // a failed sync: those changes may be lost (and the store takes no more writes).
      if (!committed.empty() && synced.ok()) RaiseLastSeq(committed.back().seq);
    }
    {
      absl::MutexLock lock(&stats_mu_);
      if (batch_error.ok()) {
        ++stats_.commits;
      } else {
        ++stats_.failed_commits;
      }
      stats_.mutations += static_cast<int64_t>(batch.size());
      stats_.failed_mutations += failed;
      stats_.changes += static_cast<int64_t>(committed.size());
      stats_.last_commit_seconds = absl::ToDoubleSeconds(took);
      stats_.total_commit_seconds += absl::ToDoubleSeconds(took);
      stats_.last_batch_size = static_cast<int64_t>(batch.size());
      stats_.max_batch_size = std::max(stats_.max_batch_size, stats_.last_batch_size);
    }
    if (commit_seconds_ != nullptr) commit_seconds_->Observe(absl::ToDoubleSeconds(took));
    if (batch_size_ != nullptr) batch_size_->Observe(static_cast<double>(batch.size()));
    if (!committed.empty() && !options_.external_delivery) {
      if (synced.ok()) {
        std::vector<ChangeListener*> listeners;
        {
          absl::MutexLock lock(&mu_);
          listeners = durable_listeners_;
        }
        for (ChangeListener* l : listeners) l->OnCommitted(committed);
      }
    } else if (!committed.empty() && !WaitDelivered(committed.back().seq)) {
      absl::MutexLock lock(&stats_mu_);
      ++stats_.delivery_timeouts;
    }
    if (!committed.empty()) {
      auto next = committed.begin();
      for (Outcome& o : outcomes) {
        const auto n = static_cast<std::ptrdiff_t>(o.changes.size());
        std::move(next, next + n, o.changes.begin());
        next += n;
      }
    }
    if (options_.tracer != nullptr) TraceBatch(batch, outcomes, e.started, e.applied, durable);
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].done(std::move(outcomes[i].status), std::move(outcomes[i].changes));
    }
  }

  // With external_delivery the feed may have moved it past this batch already. Wakes
  // WaitDurable.
  void RaiseLastSeq(int64_t seq) {
    int64_t seen = last_seq_.load(std::memory_order_acquire);
    while (seen < seq && !last_seq_.compare_exchange_weak(seen, seq, std::memory_order_acq_rel)) {
    }
    absl::MutexLock lock(&mu_);
    durable_.SignalAll();
  }

 public:
  absl::Status WaitDurable(int64_t seq, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    while (last_seq() < seq && !stopping_) {
      if (durable_.WaitWithDeadline(&mu_, deadline)) break;
    }
    if (last_seq() >= seq) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("seq ", seq, " is not durable yet (durable: ", last_seq(), ")"));
  }

 private:
  // external_delivery: waits until the feed delivered `seq` (true), or delivery_wait
  // passed or the ledger is stopping (false: the write is durable all the same, and the
  // feed applies it when it catches up).
  bool WaitDelivered(int64_t seq) {
    const absl::Time deadline = absl::Now() + options_.delivery_wait;
    absl::MutexLock lock(&mu_);
    while (delivered_seq_ < seq && !stopping_) {
      if (delivered_.WaitWithDeadline(&mu_, deadline)) break;
    }
    return delivered_seq_ >= seq;
  }

  // Records each traced mutation's spans: "ledger.commit" from the batch's begin until it
  // committed and its views (kCommitted listeners) were told, and, when it appended
  // changes that committed, "index.apply" from then until durable (the sync and the
  // kDurable listeners). Runs before the completions, so the spans exist before the reply.
  void TraceBatch(const std::vector<Item>& batch, const std::vector<Outcome>& outcomes,
                  absl::Time begun, absl::Time committed, absl::Time applied) {
    for (size_t i = 0; i < batch.size(); ++i) {
      const obs::SpanContext& parent = batch[i].trace_parent;
      if (!parent.sampled()) continue;
      obs::Span commit = options_.tracer->StartSpanAt("ledger.commit", parent, begun);
      if (!commit.recording()) continue;
      const std::vector<Change>& changes = outcomes[i].changes;
      commit.SetAttribute("quell.ledger.batch_mutations", static_cast<int64_t>(batch.size()));
      commit.SetAttribute("quell.ledger.changes", static_cast<int64_t>(changes.size()));
      if (!changes.empty()) commit.SetAttribute("quell.ledger.seq", changes.back().seq);
      if (!outcomes[i].status.ok()) {
        const absl::string_view message = outcomes[i].status.message();
        commit.SetStatus(obs::SpanStatus::kError, std::string_view(message.data(), message.size()));
      } else if (!changes.empty()) {
        obs::Span apply = commit.StartChildAt("index.apply", committed);
        apply.SetAttribute("quell.ledger.changes", static_cast<int64_t>(changes.size()));
        apply.EndAt(applied);
      }
      commit.EndAt(committed);
    }
  }

  Store* const store_;
  const LedgerOptions options_;
  core::Clock* const clock_;
  obs::Histogram* const commit_seconds_;  // may be null
  obs::Histogram* const batch_size_;      // may be null
  std::atomic<int64_t> last_seq_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  absl::CondVar delivered_;                     // external_delivery: delivered_seq_ moved
  int64_t delivered_seq_ ABSL_GUARDED_BY(mu_);  // external_delivery: last seq delivered
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar durable_;  // last_seq_ rose
  std::vector<ChangeListener*> committed_listeners_ ABSL_GUARDED_BY(mu_);
  std::vector<ChangeListener*> durable_listeners_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex stats_mu_;
  Stats stats_ ABSL_GUARDED_BY(stats_mu_);

  absl::Mutex finish_mu_;
  absl::CondVar finish_wake_;
  absl::CondVar finish_room_;  // executed_ fell below kMaxExecuted
  std::deque<Executed> executed_ ABSL_GUARDED_BY(finish_mu_);
  bool commits_done_ ABSL_GUARDED_BY(finish_mu_) = false;

  // Last: they start after everything above is constructed.
  std::thread finisher_;  // syncs, runs listeners and completions
  std::thread thread_;    // the commit thread
};

absl::StatusOr<std::unique_ptr<Ledger>> Ledger::Open(std::unique_ptr<Store> store,
                                                     const LedgerOptions& options,
                                                     core::Clock* clock) {
  if (store == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError("ledger needs a store and a clock");
  }
  if (options.max_batch < 1 || options.max_queue < 1) {
    return absl::InvalidArgumentError("ledger max_batch and max_queue must be >= 1");
  }
  QUELL_ASSIGN_OR_RETURN(int64_t last_seq, store->LastSeq());
  obs::Histogram* commit_seconds = nullptr;
  obs::Histogram* batch_size = nullptr;
  if (options.metrics != nullptr) {
    QUELL_ASSIGN_OR_RETURN(
        commit_seconds,
        options.metrics->AddHistogram("quell_ledger_commit_duration_seconds",
                                      "Duration of each group commit (begin to durable commit).",
                                      obs::DefaultLatencyBuckets()));
    QUELL_ASSIGN_OR_RETURN(batch_size, options.metrics->AddHistogram(
                                           "quell_ledger_batch_size", "Mutations per group commit.",
                                           obs::ExponentialBuckets(1, 2, 13)));
  }
  return std::unique_ptr<Ledger>(
      new Ledger(std::move(store), options, clock, last_seq, commit_seconds, batch_size));
}

Ledger::Ledger(std::unique_ptr<Store> store, const LedgerOptions& options, core::Clock* clock,
               int64_t last_seq, obs::Histogram* commit_seconds, obs::Histogram* batch_size)
    : store_(std::move(store)),
      impl_(std::make_unique<Impl>(store_.get(), options, clock, last_seq, commit_seconds,
                                   batch_size)) {}

Ledger::~Ledger() { impl_.reset(); }  // drain and join before the store goes

void Ledger::Submit(Mutation mutation, Completion done) {
  impl_->Submit(std::move(mutation), std::move(done), obs::SpanContext());
}

void Ledger::Submit(Mutation mutation, Completion done, obs::SpanContext trace_parent) {
  impl_->Submit(std::move(mutation), std::move(done), std::move(trace_parent));
}

absl::StatusOr<std::vector<Change>> Ledger::SubmitAndWait(Mutation mutation) {
  struct Waiter {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
    std::vector<Change> changes ABSL_GUARDED_BY(mu);
  };
  auto w = std::make_shared<Waiter>();
  impl_->Submit(
      std::move(mutation),
      [w](absl::Status st, std::vector<Change> changes) {
        absl::MutexLock lock(&w->mu);
        w->status = std::move(st);
        w->changes = std::move(changes);
        w->done = true;
      },
      obs::SpanContext());
  absl::MutexLock lock(&w->mu);
  w->mu.Await(absl::Condition(&w->done));
  if (!w->status.ok()) return w->status;
  return std::move(w->changes);
}

void Ledger::AddListener(ChangeListener* listener, ListenerTiming timing) {
  impl_->AddListener(listener, timing);
}

void Ledger::Deliver(const std::vector<Change>& changes) { impl_->Deliver(changes); }

int64_t Ledger::delivered_seq() const { return impl_->delivered_seq(); }

bool Ledger::external_delivery() const { return impl_->external_delivery(); }

int64_t Ledger::last_seq() const { return impl_->last_seq(); }

Ledger::Stats Ledger::stats() const { return impl_->stats(); }

absl::StatusOr<std::vector<Change>> ReadDurableChanges(Ledger& ledger, int64_t after, int limit) {
  // A store whose commits are durable when visible (PostgreSQL) needs no clamp, and its
  // feeds do not wait for this node's follower to deliver other nodes' changes.
  if (!ledger.store().DefersSync()) return ledger.store().ReadChanges(after, limit);
  const int64_t durable = ledger.last_seq();
  if (after >= durable || limit <= 0) return std::vector<Change>();
  // (after, durable] holds durable - after changes (seqs have no gaps); a read past a
  // missing row could return more, which are dropped.
  QUELL_ASSIGN_OR_RETURN(std::vector<Change> changes,
                         ledger.store().ReadChanges(
                             after, static_cast<int>(std::min<int64_t>(limit, durable - after))));
  while (!changes.empty() && changes.back().seq > durable) changes.pop_back();
  return changes;
}

absl::Status CheckCursor(Ledger& ledger, int64_t after, std::string_view field) {
  if (after == 0) return absl::OkStatus();
  QUELL_ASSIGN_OR_RETURN(int64_t last, ledger.store().LastSeq());
  if (after <= last) return absl::OkStatus();
  return absl::OutOfRangeError(absl::StrCat(AV(field), "=", after,
                                            " is past the ledger's last change (", last,
                                            "): this cursor is not from this ledger (restored "
                                            "from a backup?); reload a snapshot"));
}

absl::Status WaitDurable(Ledger& ledger, int64_t seq, absl::Duration timeout) {
  if (!ledger.store().DefersSync()) return absl::OkStatus();
  return ledger.impl_->WaitDurable(seq, timeout);
}

}  // namespace quell::ledger
