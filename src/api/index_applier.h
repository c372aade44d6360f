// Keeps the in-memory index a view of the ledger: applies every committed mitigation
// change in seq order, and loads the live set from the store at start.
//
// Thread-safety: OnCommitted runs on the ledger's commit thread (the index's only
// writer); Load must run before the ledger accepts writes.
#ifndef QUELL_API_INDEX_APPLIER_H_
#define QUELL_API_INDEX_APPLIER_H_

#include "absl/status/status.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "ledger/store.h"

namespace quell::api {

class IndexApplier final : public ledger::ChangeListener {
 public:
  explicit IndexApplier(index::Index* index) : index_(index) {}  // borrowed

  //! Rebuilds the index from the store's live mitigations.
  absl::Status Load(ledger::Store& store);
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

 private:
  index::Index* index_;
};

}  // namespace quell::api

#endif  // QUELL_API_INDEX_APPLIER_H_
