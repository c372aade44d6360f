// Entity reads done ahead, off the commit thread. A decision reads its entity's
// mitigations (the escalation count, the safeguards, create-or-extend) on the commit
// thread, which runs the whole write path; for a bulk import on the embedded store that
// read was a seventh of the commit thread. The thread that prepares a batch knows, from
// the policies' proposals, which entities the batch will read: it reads them from a
// committed snapshot (Store::PrefetchEntities) and leaves the results here; the open
// Txn takes an entity's result instead of reading it, if nothing was written to the
// entity after the snapshot.
//
// Correctness rests on one check at Take: a result read at snapshot seq S is used only if
// every mitigation write with a seq above S is known, and none of them is to this entity.
// The commit thread notes each mitigation write (NoteWrite, before its row can be read
// back) with its seq; the notes are kept for the last kMaxWrites writes, and a result
// older than what the notes cover is refused. A write undone later (a rolled-back Txn or
// savepoint) stays noted: that only refuses a result that was still right. Changes that
// another process appended make the store call Distrust(head): no result read before
// that head is used.
//
// A store whose reads are never done ahead (a server) pays a flag test per write and per
// read: writes are logged only once a result has been put.
//
// Bounded: at most kMaxResults results wait (the oldest go first: an entity the commit
// thread answers otherwise, as one with no mitigation at all, is never taken), each of
// at most kMaxMitigations mitigations (an entity with more is read by the Txn itself, as
// the entity cache keeps none of those either).
//
// Thread-safety: Put is thread-safe (one mutex, shared with Take). NoteWrite, Distrust and
// Take are for the commit thread (whoever holds the store's one Txn) only.
#ifndef QUELL_LEDGER_INTERNAL_ENTITY_PREFETCH_H_
#define QUELL_LEDGER_INTERNAL_ENTITY_PREFETCH_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/mitigation.h"

namespace quell::ledger::internal {

class EntityPrefetch {
 public:
  static constexpr size_t kMaxResults = 8192;
  static constexpr size_t kMaxWrites = 65536;
  static constexpr size_t kMaxMitigations = 32;

  // What a read of one entity returned: its mitigations live or created at or after
  // `since`, in the store's state at `snapshot_seq` (the chain head the read saw).
  struct Result {
    int64_t snapshot_seq = 0;
    absl::Time since;
    std::vector<core::Mitigation> mitigations;
  };

  //! Leaves a result for `entity`, replacing any earlier one (dropped if it holds more
  //! than kMaxMitigations). Any thread.
  void Put(std::string entity, Result result);

  //! The commit thread wrote a mitigation of `entity` with `seq` (or is about to).
  void NoteWrite(std::string_view entity, int64_t seq);
  //! Another writer appended up to `head_seq`: results of earlier snapshots are refused.
  void Distrust(int64_t head_seq);
  //! The result left for `entity`, removed, if it covers `since` (its own is not later)
  //! and nothing was written to the entity after its snapshot; else nullopt (a result
  //! that fails the check is dropped).
  std::optional<Result> Take(std::string_view entity, absl::Time since);

  int64_t taken() const { return taken_; }
  int64_t refused() const { return refused_; }

 private:
  static uint64_t Hash(std::string_view entity);

  std::atomic<bool> used_{false};  // a result was ever put
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Result> results_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // Put order, for the bound

  // Commit thread only.
  absl::flat_hash_map<uint64_t, int64_t> last_write_;  // entity hash -> highest seq noted
  std::deque<std::pair<int64_t, uint64_t>> writes_;    // (seq, hash), in note order
  // Every write with a seq above this is in last_write_; a result must have seen it.
  // Nothing is trusted before the store's first Distrust (at its first Begin).
  int64_t trusted_from_ = INT64_MAX;
  int64_t taken_ = 0;
  int64_t refused_ = 0;
};

}  // namespace quell::ledger::internal

#endif  // QUELL_LEDGER_INTERNAL_ENTITY_PREFETCH_H_
