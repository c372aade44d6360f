// The review queue (SPEC GET /v1/reviews, POST /v1/reviews/{id}/decision): every
// pending_approval mitigation is an open review, its id the mitigation's. Approval rules
// (safeguards/approval.h): critical actions need two distinct reviewers; nobody approves
// their own request. A first approval of a critical action is recorded on the mitigation
// (still pending, state_reason "approved 1 of 2 by <key>: <note>"), so the progress is in
// the ledger and the timeline. A rejection leaves it `rejected`, and the entity immune.
// Pending approvals expire after SafeguardOptions::pending_ttl (ExpirePending): they are
// never silently activated.
//
// Thread-safety: factories and LoadReviewFacts are thread-safe; mutations run on the
// commit thread and fill `out` for the Completion.
#ifndef QUELL_WORKFLOW_REVIEWS_H_
#define QUELL_WORKFLOW_REVIEWS_H_

#include <memory>
#include <string>
#include <vector>

#include "core/action.h"
#include "core/mitigation.h"
#include "ledger/ledger.h"

namespace quell::workflow {

// What a review decision is checked against, read from committed data.
struct ReviewFacts {
  // Who asked for the mitigation: the actor of its first change, and of every later one
  // but its approvers' (a request for the same entity and action that it absorbed while
  // pending is on it as that requester's change, and may have lengthened it).
  std::vector<std::string> requesters;
  int64_t seq = 0;  // the mitigation's seq when read; the decision needs it unchanged
};

//! The facts of mitigation `m` from its history. kNotFound if the store has no change of it.
absl::StatusOr<ReviewFacts> LoadReviewFacts(ledger::Store& store, const core::Mitigation& m);

//! Reviewers who already approved `m` while it is pending (m.approvals; for a record
//! written before approvals were data, the approver its state_reason names), if any.
std::vector<std::string> PriorApprovers(const core::Mitigation& m);

struct ReviewOutcome {
  core::Mitigation mitigation;
  int approvals = 0;  // approvals so far (after this one)
  int needed = 0;     // approvals its action needs
};

//! Records reviewer's decision on pending mitigation `id`. Errors: kNotFound (no such
//! mitigation), kFailedPrecondition (not pending_approval, or pending for `pending_ttl`
//! or longer: it expired, even if the sweeper has not marked it yet), kAborted (it changed
//! since `facts` were read: read again), kPermissionDenied (self-approval), kAlreadyExists
//! (the same reviewer approving twice). Approval with enough distinct approvals makes it
//! active from now for its original duration.
ledger::Mutation DecideReview(std::string id, bool approve, std::string note, std::string reviewer,
                              ReviewFacts facts, std::shared_ptr<const core::ActionCatalog> catalog,
                              absl::Duration pending_ttl, std::shared_ptr<ReviewOutcome> out);

//! Expires each listed mitigation that is still pending_approval and was created at or
//! before now - `ttl` (state expired, "pending approval expired"). *out = how many.
ledger::Mutation ExpirePending(std::vector<std::string> ids, absl::Duration ttl,
                               std::shared_ptr<int> out);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_REVIEWS_H_
