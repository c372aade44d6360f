// Rollback (SPEC POST /v1/rollbacks): revoke every live mitigation (pending, scheduled,
// active) an automatic source caused, by policy, source, action, import batch and
// creation window — "undo everything bot model v3 caused yesterday 14:00-18:00". The
// real run revokes every match in ONE ledger transaction (each revocation is a change on
// its entity's timeline naming the rollback); running it again matches nothing more, so
// it is idempotent. Revoked mitigations of a policy leave the entity immune to it.
//
// Thread-safety: thread-safe functions; the mutation runs on the commit thread.
#ifndef QUELL_WORKFLOW_ROLLBACK_H_
#define QUELL_WORKFLOW_ROLLBACK_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/mitigation.h"
#include "ledger/ledger.h"

namespace quell::workflow {

struct RollbackFilter {
  std::string policy, source, action, batch;  // "" = any
  std::optional<absl::Time> since, until;     // created_at in [since, until)
  bool empty() const {
    return policy.empty() && source.empty() && action.empty() && batch.empty() && !since && !until;
  }
};
bool Matches(const RollbackFilter& f, const core::Mitigation& m);

//! Ids of the live mitigations matching `f`, from one consistent read of the store.
absl::StatusOr<std::vector<std::string>> FindRollbackTargets(ledger::Store& store,
                                                             const RollbackFilter& f);

struct RollbackResult {
  int64_t matched = 0;
  int64_t revoked = 0;
};
//! Revokes each listed mitigation that is still live and still matches `f` (it re-reads
//! them in the transaction), state_reason "rollback <rollback_id>: <reason>".
ledger::Mutation Rollback(std::vector<std::string> ids, RollbackFilter f, std::string reason,
                          std::string actor, std::string rollback_id,
                          std::shared_ptr<RollbackResult> out);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_ROLLBACK_H_
