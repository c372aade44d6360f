// The mutations that change mitigations: create (manual or from a policy decision),
// revoke, and the time-driven transitions (scheduled -> active, active -> expired).
// Each returns a ledger::Mutation to Submit; the mutation re-reads what it needs inside
// the transaction, so concurrent requests are decided in ledger order.
//
// Thread-safety: the factories are thread-safe; the returned mutations run on the
// ledger's commit thread and write their result into the shared `out` object, which
// the caller reads only after the Completion ran.
#ifndef QUELL_WORKFLOW_MITIGATIONS_H_
#define QUELL_WORKFLOW_MITIGATIONS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/action.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "ledger/ledger.h"

namespace quell::workflow {

struct CreateRequest {
  core::Entity entity;
  std::string action;
  std::optional<absl::Duration> ttl;  // default: the action's
  std::string reason;
  std::string source = "manual";
  std::string policy;
  int64_t policy_version = 0;
  std::string actor;
  std::string batch;
  std::vector<std::string> detections;
  core::MitigationState state = core::MitigationState::kActive;
  std::optional<absl::Time> starts_at;  // for kScheduled
  // SafeguardOptions::pending_ttl, for a kPendingApproval request: a pending approval
  // created that long ago can no longer be approved (ReviewMitigation, ExpirePending), so
  // the request is not folded into it: it is expired and a new one waits in Reviews.
  std::optional<absl::Duration> pending_ttl;
};

struct CreateResult {
  core::Mitigation mitigation;
  // False when an existing live mitigation of the same entity and action absorbed the
  // request (its expiry extended if the new one was later): no duplicate is stacked.
  bool created = false;
  // core::MitigationToJson(mitigation) as the ledger change recorded it, when this request
  // appended one ("" when it changed nothing): replies reuse it instead of formatting again.
  std::string json;
};

//! The state_reason of a pending approval expired after `pending_ttl` (the sweeper's, and
//! CreateOrExtend's for one it finds over).
std::string PendingExpiredReason(absl::Duration pending_ttl);

//! Creates a mitigation, or extends the live one of the same entity and action (the later
//! expiry wins). kInvalidArgument for an unknown action.
ledger::Mutation CreateMitigation(CreateRequest request,
                                  std::shared_ptr<const core::ActionCatalog> catalog,
                                  std::shared_ptr<CreateResult> out);

//! The same, inside a caller's transaction (for mutations that create several).
absl::StatusOr<CreateResult> CreateOrExtend(ledger::Txn& txn, const CreateRequest& request,
                                            const core::ActionCatalog& catalog, absl::Time now);

//! Revokes a live mitigation. kNotFound if there is no such id; kFailedPrecondition if it
//! is no longer live (already expired, revoked...).
//! A pending approval past `pending_ttl` (SafeguardOptions) is no longer live either.
ledger::Mutation RevokeMitigation(std::string id, std::string reason, std::string actor,
                                  std::shared_ptr<core::Mitigation> out,
                                  absl::Duration pending_ttl);

//! Why a policy's decision on `m` would be held for a person now: a protected list holds
//! its entity, or a person made the entity immune to m's policy and action. nullopt
//! otherwise. Called on the ledger's commit thread.
using WhyHeldFn =
    std::function<std::optional<std::string>(const core::Mitigation& m, absl::Time now)>;

//! Moves each listed mitigation whose time has come at the commit time: scheduled ->
//! active at starts_at, active -> expired at expires_at. Others are left alone (a revoke
//! may have won the race). Writes the count of transitions to *out.
//! A policy's scheduled decision that no person approved starts as pending_approval
//! instead when `why_held` (may be null) says its entity became protected or immune
//! meanwhile: a protected entity, or one a person cleared, is never mitigated without a
//! person, whenever the decision was made.
ledger::Mutation ApplyDue(std::vector<std::string> ids, std::shared_ptr<int> out,
                          WhyHeldFn why_held = nullptr);

//! Makes `m` (pending_approval or scheduled, its state_reason set by the caller) active
//! from now, or, when a mitigation of the same entity and action is already active, lets
//! that one absorb it: extended to m's expiry if later, m's detections added, and m ends
//! expired, "merged into <id>". An entity has one active mitigation per action, so that
//! one revocation lifts it (a second active copy used to survive a revoke). Appends the
//! changes. Returns the id of the one in force (m's own, or the absorbing one's).
absl::StatusOr<std::string> Activate(ledger::Txn& txn, core::Mitigation& m, std::string_view actor,
                                     absl::Time now);

//! After a person undid `absorber` (revoked it, granted an appeal against it; its new state
//! already appended): the decisions Activate merged into it, written `expired`, "merged
//! into <its id>", were enforced only as part of it, so they are undone with it: written
//! `revoked` by `actor`, and neither escalation nor prior() counts them as prior offences
//! any more. Reads the entity's decisions: call it only for an absorber that was active
//! (only an active one absorbs); a rollback, which may revoke 100,000 at once, settles
//! them itself, and looks only where HasMergedCreation (rollback.cc).
absl::Status UndoMerged(ledger::Txn& txn, const core::Mitigation& absorber, std::string_view actor,
                        absl::Time now);

//! Whether `absorber` records the creation of a policy decision merged into it (a merged
//! manual one, created without detections, leaves no such record).
bool HasMergedCreation(const core::Mitigation& absorber);

//! Whether `m` is a decision Activate merged into the mitigation `absorber_id`: written
//! `expired` with a state_reason that names that id (UndoMerged's test, for one decision).
bool WasMergedInto(const core::Mitigation& m, std::string_view absorber_id);

//! Appends the ledger change for `m` (sets m.seq, m.updated_at, m.actor) in `txn`.
absl::StatusOr<ledger::Change> AppendMitigationChange(ledger::Txn& txn, core::Mitigation& m,
                                                      std::string_view actor, absl::Time now);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_MITIGATIONS_H_
