// Approval rules (issue 5 item 3): how many distinct reviewers a held decision needs, who
// may review it, and when a manual action or a rollback needs approval at all.
//
// Thread-safety: pure functions.
#ifndef QUELL_SAFEGUARDS_APPROVAL_H_
#define QUELL_SAFEGUARDS_APPROVAL_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/action.h"
#include "core/entity.h"

namespace quell::safeguards {

//! Distinct approvals a decision with an action of `severity` needs: 2 for critical, else 1.
int RequiredApprovals(core::Severity severity);

//! May `reviewer` record a decision on a request made by `requesters` (everyone whose
//! request it holds), which `prior` reviewers already approved? kPermissionDenied for a
//! requester; kAlreadyExists if the reviewer already approved it (two approvals must come
//! from two people).
absl::Status CheckReviewer(std::string_view reviewer, std::span<const std::string> requesters,
                           const std::vector<std::string>& prior);
//! The same for a request made by one person.
inline absl::Status CheckReviewer(std::string_view reviewer, const std::string& requester,
                                  const std::vector<std::string>& prior) {
  return CheckReviewer(reviewer, std::span<const std::string>(&requester, 1), prior);
}

//! How many entities an action on `e` reaches: for a cidr, its IPv4 addresses or its IPv6
//! /64 subnets (saturating at 2^62); else 1.
int64_t EntitiesCovered(const core::Entity& e);

//! True if a manual action of `severity` over `entities` needs approval under `threshold`:
//! more entities than it, unless the action is low severity (a challenge or a throttle
//! hurts little and is undone at once).
inline bool BulkNeedsApproval(int64_t entities, int64_t threshold,
                              core::Severity severity = core::Severity::kCritical) {
  return entities > threshold && severity != core::Severity::kLow;
}

}  // namespace quell::safeguards

#endif  // QUELL_SAFEGUARDS_APPROVAL_H_
