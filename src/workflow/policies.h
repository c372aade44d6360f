// Publishing a policy set: a ledger change (kPolicySet) with the next version number.
// Every node swaps to the new set when it applies that change (see api's PolicyHolder),
// so "publish" is atomic and ordered with every other state change.
//
// Thread-safety: the factory is thread-safe; the mutation runs on the commit thread.
#ifndef QUELL_WORKFLOW_POLICIES_H_
#define QUELL_WORKFLOW_POLICIES_H_

#include <memory>
#include <string>

#include "ledger/ledger.h"

namespace quell::workflow {

//! Stores `yaml` (already validated by the caller) as the next policy-set version.
//! `*version_out` gets the version assigned.
ledger::Mutation PublishPolicySet(std::string yaml, std::string actor,
                                  std::shared_ptr<int64_t> version_out);

//! The payload of a kPolicySet change: {"version": N, "yaml": "..."}.
std::string PolicySetPayload(int64_t version, std::string_view yaml);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_POLICIES_H_
