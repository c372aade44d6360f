// Once-only markers: a row of the idempotency table that a ledger transaction reads with
// its own writes, so that of two transactions doing the same one-time thing (filing an
// appeal, deciding one, deciding a rollback request) only the first passes — also when
// both run in one group commit, or on two nodes of one PostgreSQL (their transactions
// are serialised by the chain-head lock). Purged with the idempotency keys, long after
// what they guard is in the journal.
//
// Thread-safety: as the Txn (the commit thread).
#ifndef QUELL_WORKFLOW_MARKERS_H_
#define QUELL_WORKFLOW_MARKERS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ledger/store.h"

namespace quell::workflow {

//! Takes marker `key` of `scope` in `txn`: true if it was free, false if it was taken
//! already (committed, or earlier in this transaction).
absl::StatusOr<bool> ClaimMarker(ledger::Txn& txn, std::string_view scope, std::string key,
                                 absl::Time now);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_MARKERS_H_
