#include "workflow/reviews.h"

#include "absl/algorithm/container.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/journal.h"
#include "safeguards/approval.h"
#include "workflow/mitigations.h"

namespace quell::workflow {
namespace {

constexpr std::string_view kPartial = "approved 1 of 2 by ";

// A record written before approvals were data: "approved 1 of 2 by <key>[: note][; later
// changes]" in its state_reason gives the key (key ids hold no ':' or ';'); "" if none.
std::string_view LegacyPartialApprover(const core::Mitigation& m) {
  if (m.state != core::MitigationState::kPendingApproval ||
      !absl::StartsWith(m.state_reason, AV(kPartial))) {
    return {};
  }
  std::string_view rest = std::string_view(m.state_reason).substr(kPartial.size());
  return rest.substr(0, rest.find_first_of(":;"));
}

}  // namespace

absl::StatusOr<ReviewFacts> LoadReviewFacts(ledger::Store& store, const core::Mitigation& m) {
  // Every change of the mitigation up to `m` (it is pending until decided: each is its
  // creation, a request it absorbed, or a partial approval), however long the entity's
  // timeline. An approver is not a requester for having approved (CheckReviewer tells
  // them they approved already).
  ReviewFacts facts{.seq = m.seq};
  bool found = false;
  const std::vector<std::string> approvers = PriorApprovers(m);
  QUELL_RETURN_IF_ERROR(ledger::ForEachEntityChange(store, m.entity, [&](const ledger::Change& c) {
    if (c.seq > m.seq) return false;
    if (c.kind != ledger::ChangeKind::kMitigation || c.subject != m.id) return true;
    const bool first = !found;
    found = true;
    if (!first && absl::c_linear_search(approvers, c.actor)) return true;
    if (!absl::c_linear_search(facts.requesters, c.actor)) facts.requesters.push_back(c.actor);
    return true;
  }));
  if (found) return facts;
  return absl::NotFoundError(absl::StrCat("no history for mitigation ", m.id));
}

std::vector<std::string> PriorApprovers(const core::Mitigation& m) {
  if (m.state != core::MitigationState::kPendingApproval) return {};
  if (!m.approvals.empty()) return m.approvals;
  std::string_view key = LegacyPartialApprover(m);
  if (key.empty()) return {};
  return {std::string(key)};
}

ledger::Mutation DecideReview(std::string id, bool approve, std::string note, std::string reviewer,
                              ReviewFacts facts, std::shared_ptr<const core::ActionCatalog> catalog,
                              absl::Duration pending_ttl, std::shared_ptr<ReviewOutcome> out) {
  return [id = std::move(id), approve, note = std::move(note), reviewer = std::move(reviewer),
          facts = std::move(facts), catalog = std::move(catalog), pending_ttl,
          out = std::move(out)](ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(id));
    if (!m) return absl::NotFoundError(absl::StrCat("no review ", id));
    if (m->state != core::MitigationState::kPendingApproval) {
      return absl::FailedPreconditionError(absl::StrCat(
          "review ", id, " is closed: the mitigation is ", AV(core::StateName(m->state))));
    }
    // Past its time it is expired whether or not the sweeper has marked it yet: it never
    // becomes active late (ExpirePending uses the same bound).
    if (core::OverAt(*m, pending_ttl) <= now) {
      return absl::FailedPreconditionError(absl::StrCat(
          "review ", id, " expired at ", core::FormatRfc3339(core::OverAt(*m, pending_ttl)),
          " (pending_ttl ", absl::FormatDuration(pending_ttl),
          "): it can no longer be approved or rejected"));
    }
    if (m->seq != facts.seq) {
      return absl::AbortedError(absl::StrCat("review ", id, " changed meanwhile; read it again"));
    }
    std::vector<std::string> prior = PriorApprovers(*m);
    QUELL_RETURN_IF_ERROR(safeguards::CheckReviewer(reviewer, facts.requesters,
                                                    approve ? prior : std::vector<std::string>{}));
    const core::Action* action = catalog->Find(m->action);
    int needed =
        safeguards::RequiredApprovals(action ? action->severity : core::Severity::kCritical);
    std::string suffix = note.empty() ? "" : absl::StrCat(": ", note);
    int approvals = static_cast<int>(prior.size());
    std::string by = reviewer;  // every approver, for the record
    for (const std::string& p : prior) by = absl::StrCat(p, " and ", by);
    if (approve) {  // every approver, as data (a legacy record's text approver too)
      m->approvals = prior;
      m->approvals.push_back(reviewer);
    }
    if (!approve) {
      m->state = core::MitigationState::kRejected;
      m->state_reason = absl::StrCat("rejected by ", reviewer, suffix);
    } else if (++approvals < needed) {
      m->state_reason = absl::StrCat(AV(kPartial), reviewer, suffix);
    } else if (m->starts_at > now) {
      // A delayed decision approved before its start: scheduled for it, as it would have
      // been without the hold.
      m->state = core::MitigationState::kScheduled;
      m->state_reason = absl::StrCat("approved by ", by, suffix, "; starts at ",
                                     core::FormatRfc3339(m->starts_at));
    } else {
      // Its whole length from now; what each import batch asked of it moves with it.
      const absl::Duration shift = now - m->starts_at;
      m->starts_at = now;
      m->expires_at += shift;
      for (core::BatchExpiry& e : m->batch_expiries) e.expires_at += shift;
      m->state_reason = absl::StrCat("approved by ", by, suffix);
      // Active now, or absorbed by the entity's active one of the same action.
      QUELL_RETURN_IF_ERROR(Activate(txn, *m, reviewer, now).status());
      out->mitigation = *std::move(m);
      out->approvals = approvals;
      out->needed = needed;
      return absl::OkStatus();
    }
    QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, reviewer, now).status());
    out->mitigation = *std::move(m);
    out->approvals = approvals;
    out->needed = needed;
    return absl::OkStatus();
  };
}

ledger::Mutation ExpirePending(std::vector<std::string> ids, absl::Duration ttl,
                               std::shared_ptr<int> out) {
  return [ids = std::move(ids), ttl, out = std::move(out)](ledger::Txn& txn,
                                                           absl::Time now) -> absl::Status {
    int n = 0;
    for (const std::string& id : ids) {
      QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(id));
      if (!m || m->state != core::MitigationState::kPendingApproval ||
          core::OverAt(*m, ttl) > now) {
        continue;
      }
      m->state = core::MitigationState::kExpired;
      m->state_reason = PendingExpiredReason(ttl);
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, "system", now).status());
      ++n;
    }
    *out = n;
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
