// Verification of the ledger's hash chain (`quell audit verify`).
//
// Thread-safety: VerifyChain uses only the Store's thread-safe reads; it may run while
// the ledger writes (it checks the changes committed up to when each page is read).
#ifndef QUELL_LEDGER_AUDIT_H_
#define QUELL_LEDGER_AUDIT_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "ledger/store.h"

namespace quell::ledger {

struct AuditReport {
  int64_t checked = 0;    // changes whose link verified
  int64_t last_seq = 0;   // seq of the last change that verified (0 if none)
  std::string last_hash;  // its hash: record it, and a later run that lacks it shows a cut
  bool ok() const { return !broken; }
  bool broken = false;
  int64_t broken_seq = 0;  // the first change that does not verify (if broken; may be <= 0)
  std::string reason;      // why it does not ("hash mismatch", "gap: expected seq 7"...)
};

struct AuditOptions {
  int page_size = 1000;
  // Called after each page with the report so far; return false to stop early.
  std::function<bool(const AuditReport&)> progress;
};

//! Walks every change in seq order and checks that seqs run 1, 2, 3... (no gap, no
//! repeat, nothing below 1), that each prev_hash is the previous change's hash (the
//! genesis hash for seq 1) and that each stored hash equals ChainHash of its fields. Then
//! what is served from outside the chain, each table as of its snapshot's head: the
//! mitigations table's live rows must be exactly those the changes leave live, each as of
//! its latest change, and its active rows' own id, entity, action and expiry columns
//! (what the server's index and the enforcement snapshot load) those of that change; the
//! list entries those the list changes leave (and each list's protected flag and kind,
//! unless a list change came after the entries' snapshot); every policy set row the YAML
//! and seq of the change that published it, the newest row the chain's newest. A table
//! still referring to a change cut from the tail shows the cut no link can. Stops at the
//! first disagreement; a progress callback that stops the walk skips the table checks. A
//! broken ledger is a normal result (report.ok() false); errors are for failed reads.
//! Memory: four hash maps of the live mitigations, and the list entries.
absl::StatusOr<AuditReport> VerifyChain(Store& store, const AuditOptions& options = {});

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_AUDIT_H_
