// Rollback (SPEC POST /v1/rollbacks): revoke every live mitigation (pending, scheduled,
// active) an automatic source caused, by policy, source, action, import batch and
// creation window — "undo everything bot model v3 caused yesterday 14:00-18:00". A filter
// naming an import batch also takes back that batch's hits on live mitigations created
// otherwise: each expiry goes back to what the other hits asked for
// (core::ExpiryWithoutBatch), ended if that time is past, and the hits stop counting for
// escalation (core::TakeBackHit). The
// real run revokes every match in ONE ledger transaction (each revocation is a change on
// its entity's timeline naming the rollback); running it again matches nothing more, so
// it is idempotent. Revoked mitigations of a policy leave the entity immune to it.
//
// Approval (issue 5 item 3): a rollback whose matches span more distinct entities than
// SafeguardOptions::bulk_threshold is not run at once: it becomes a rollback request
// (state pending_approval), a kReview change filed under the entity kRollbackJournal.
// A second, different admin or reviewer approves it (the rollback then runs, in the same
// transaction as the approval) or rejects it; it expires after pending_ttl. The requests
// are followed from the ledger by RollbackRequests (a view, like the breakers' state).
//
// Thread-safety: thread-safe functions; mutations run on the commit thread.
// RollbackRequests is thread-safe (one mutex).
#ifndef QUELL_WORKFLOW_ROLLBACK_H_
#define QUELL_WORKFLOW_ROLLBACK_H_

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "core/mitigation.h"
#include "ledger/ledger.h"
#include "workflow/mitigations.h"  // WhyHeldFn

namespace quell::workflow {

struct RollbackFilter {
  std::string policy, source, action, batch;  // "" = any
  std::optional<absl::Time> since, until;     // created_at in [since, until)
  bool empty() const {
    return policy.empty() && source.empty() && action.empty() && batch.empty() && !since && !until;
  }
};
//! Whether the rollback revokes `m`: live, and created as `f` selects.
bool Matches(const RollbackFilter& f, const core::Mitigation& m);
//! Whether it takes back the hits of f.batch on `m` instead (its extension and their count
//! for escalation): `m` is live, not matched, and reached by hits of f.batch (of f.source
//! and f.policy when given; m's action f.action when given). A filter with since/until
//! takes back none: they select by creation time, and a hit's time is not kept.
bool MatchesExtension(const RollbackFilter& f, const core::Mitigation& m);
//! {"policy": ..., ...} with only the set fields; times as RFC 3339.
std::string RollbackFilterJson(const RollbackFilter& f);

//! The live mitigations matching `f` (Matches or MatchesExtension), from one consistent read of the
//! store, live at `now` as a rollback run then finds them (core::LiveAt with `pending_ttl`: not one
//! past its expiry or its approval window), so a dry run counts what the run would revoke.
absl::StatusOr<std::vector<core::Mitigation>> FindRollbackTargets(ledger::Store& store,
                                                                  const RollbackFilter& f,
                                                                  absl::Time now,
                                                                  absl::Duration pending_ttl);

struct RollbackTargets {
  std::vector<core::Mitigation> mitigations;  // live mitigations matching
  int64_t entities = 0;                       // distinct entities among them
  int64_t extensions = 0;                     // of them, matched by MatchesExtension
};
//! As FindRollbackTargets, with the number of distinct entities (what approval counts).
absl::StatusOr<RollbackTargets> FindRollbackTargetSet(ledger::Store& store, const RollbackFilter& f,
                                                      absl::Time now, absl::Duration pending_ttl);

struct RollbackResult {
  int64_t matched = 0;
  int64_t revoked = 0;
  int64_t restored = 0;  // mitigations whose hits of the batch it took back
  int64_t entities = 0;  // distinct entities among the revoked
};

// ---- rollback requests (approval) ----

// The entity the ledger files rollback requests under (their timeline).
inline constexpr std::string_view kRollbackJournal = "quell:rollbacks";

struct RollbackRequest {
  std::string id;  // "rb_..."
  RollbackFilter filter;
  std::string reason;
  std::string requested_by;  // key id
  absl::Time requested_at;
  int64_t matched = 0;     // live mitigations matched when requested
  int64_t entities = 0;    // distinct entities among them
  int64_t extensions = 0;  // of them, matched by MatchesExtension (restored, not revoked)
  // pending_approval | done (approved and run) | rejected | expired
  std::string state = "pending_approval";
  std::string decided_by;  // "" while pending
  std::string note;
  absl::Time decided_at;
  int64_t revoked = 0;   // when done
  int64_t restored = 0;  // when done: mitigations whose hits of the batch it took back
};
//! The API's object: {"id", "state", "filter", "reason", "requested_by", "requested_at",
//! "matched", "entities", "extensions", "revoked", "restored", "decided_by", "decided_at",
//! "note", "expires_at"}.
//! A pending request past `pending_ttl` at `now` shows state "expired" (expiry is lazy:
//! it can no longer be decided, and nothing is written for it).
std::string RollbackRequestJson(const RollbackRequest& r, absl::Duration pending_ttl,
                                absl::Time now);
//! r.state, or "expired" for a pending request past `pending_ttl` at `now`.
std::string_view RollbackRequestState(const RollbackRequest& r, absl::Duration pending_ttl,
                                      absl::Time now);
//! Reads a kReview payload of a rollback request; kInvalidArgument if it is not one.
absl::StatusOr<RollbackRequest> RollbackRequestFromPayload(std::string_view payload, absl::Time at);

//! Runs a rollback that needs no approval: revokes each of `targets` (as read by
//! FindRollbackTargets) that is still live and still matches the request's filter,
//! state_reason "rollback <id>: <reason>" (takes back the batch's hits on each that
//! MatchesExtension, the same reason followed by what it took back), and files the request in the
//! rollback journal as done by its requester, with what it matched and revoked, in the same
//! transaction: RollbackRequests (GET /v1/rollbacks/{id}) then answers for it as for an approved
//! one. A target still at the version read is revoked without being read again
//! (Txn::AppendMitigationIfAt); one that changed since is re-read in the transaction and
//! checked again. *out = the request as filed.
//! `why_held` (may be null): a merged decision that would come back into force is left
//! `expired` instead when it says the entity is protected or immune now (SettleMerged).
ledger::Mutation Rollback(RollbackRequest request, std::vector<core::Mitigation> targets,
                          std::shared_ptr<RollbackRequest> out, absl::Duration pending_ttl,
                          WhyHeldFn why_held = nullptr);

// The rollback requests, as of the committed ledger plus the decisions of the
// transaction being built (so two decisions in one commit batch cannot both pass).
class RollbackRequests final : public ledger::ChangeListener {
 public:
  //! Reads every request from the journal. Call before the ledger takes writes.
  absl::Status Load(ledger::Store& store);
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  std::optional<RollbackRequest> Get(std::string_view id) const;
  //! Requests still pending_approval and not past `pending_ttl` at `now`, oldest first.
  std::vector<RollbackRequest> Pending(absl::Time now, absl::Duration pending_ttl) const;
  //! Every request, newest first, at most `limit`.
  std::vector<RollbackRequest> All(size_t limit) const;

  //! Files a new request (its state must be pending_approval); *out = the request as
  //! stored (requested_at is the commit's clock).
  ledger::Mutation Request(RollbackRequest request, std::shared_ptr<RollbackRequest> out);

  //! `reviewer`'s decision on pending request `id`. Approval revokes `targets` (as
  //! Rollback, re-checked against the request's filter) in the same transaction. Errors: kNotFound,
  //! kFailedPrecondition (decided already, or expired after `pending_ttl`),
  //! kPermissionDenied (the requester deciding). *out = the request
  //! after the decision.
  ledger::Mutation Decide(std::string id, bool approve, std::string note, std::string reviewer,
                          std::vector<core::Mitigation> targets, absl::Duration pending_ttl,
                          std::shared_ptr<RollbackRequest> out, WhyHeldFn why_held = nullptr);

 private:
  struct Entry {
    RollbackRequest committed;
    // A decision appended by a transaction not yet committed, with its change's seq: it
    // counts while that seq is below the Txn's next one (a rolled-back savepoint or a
    // failed batch rewinds the seq and so voids it), and is dropped once seq commits.
    std::optional<std::pair<int64_t, RollbackRequest>> tentative;
  };

  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> requests_;
};

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_ROLLBACK_H_
