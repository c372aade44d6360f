// Reading an entity's whole timeline, and journals: a view kept from the ledger (breaker
// states, rollback requests) files its changes under one pseudo-entity such as
// "quell:breakers", so that loading it at start is one timeline read.
// Thread-safety: as the Store's reads.
#ifndef QUELL_LEDGER_JOURNAL_H_
#define QUELL_LEDGER_JOURNAL_H_

#include <functional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/entity.h"
#include "ledger/change.h"
#include "ledger/store.h"

namespace quell::ledger {

//! Calls `fn` with every change about `entity`, oldest first, reading a page at a time
//! (however long the timeline); stops when `fn` returns false.
absl::Status ForEachEntityChange(Store& store, const core::Entity& entity,
                                 const std::function<bool(const Change&)>& fn);

//! Every change of `kind` filed under the entity `journal`, in seq order.
absl::StatusOr<std::vector<Change>> ReadJournal(Store& store, std::string_view journal,
                                                ChangeKind kind);

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_JOURNAL_H_
