// The active policy set, shared by every request thread as an immutable snapshot
// (STYLE rule 5). It follows the ledger: when a kPolicySet change commits, the set is
// compiled and swapped in, so every thread sees the new version from the next request on
// and every decision records the version it was made with.
//
// Thread-safety: Current() is thread-safe and never waits for a publish; OnCommitted
// runs on the ledger's commit thread.
#ifndef QUELL_API_INTERNAL_POLICY_HOLDER_H_
#define QUELL_API_INTERNAL_POLICY_HOLDER_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "core/action.h"
#include "ledger/ledger.h"
#include "policy/policy_set.h"

namespace quell::api::internal {

class PolicyHolder final : public ledger::ChangeListener {
 public:
  // `fallback_catalog`: the actions in force while no policy set was ever published.
  explicit PolicyHolder(std::shared_ptr<const core::ActionCatalog> fallback_catalog);

  //! Loads the latest published set from the store (none: an empty set, version 0, with
  //! the fallback catalog).
  absl::Status Load(ledger::Store& store);

  std::shared_ptr<const policy::PolicySet> Current() const;
  //! The action catalog of the current set.
  std::shared_ptr<const core::ActionCatalog> Catalog() const;

  void OnCommitted(const std::vector<ledger::Change>& changes) override;

 private:
  void Set(std::shared_ptr<const policy::PolicySet> set);

  std::shared_ptr<const core::ActionCatalog> fallback_catalog_;
  // Swapped whole on publish; readers load it without a lock another thread can hold.
  std::atomic<std::shared_ptr<const policy::PolicySet>> current_;
};

//! An empty set (no policies) of `version` with `catalog`, as YAML text.
std::string EmptyPolicySetYaml(const core::ActionCatalog& catalog);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_POLICY_HOLDER_H_
