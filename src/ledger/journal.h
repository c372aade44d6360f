// Journals: a view kept from the ledger (breaker states, rollback requests) files its
// changes under one pseudo-entity such as "quell:breakers", so that loading it at start
// is one timeline read. Thread-safety: as the Store's reads.
#ifndef QUELL_LEDGER_JOURNAL_H_
#define QUELL_LEDGER_JOURNAL_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ledger/change.h"
#include "ledger/store.h"

namespace quell::ledger {

//! Every change of `kind` filed under the entity `journal`, in seq order: the entity's
//! timeline when it fits one read, else a walk of the whole log (rare; start-up only).
absl::StatusOr<std::vector<Change>> ReadJournal(Store& store, std::string_view journal,
                                                ChangeKind kind);

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_JOURNAL_H_
