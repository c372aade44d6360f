#include "workflow/mitigations.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "workflow/reviews.h"

namespace quell::workflow {

using core::Mitigation;
using core::MitigationState;

absl::StatusOr<ledger::Change> AppendMitigationChange(ledger::Txn& txn, Mitigation& m,
                                                      std::string_view actor, absl::Time now) {
  m.seq = txn.NextSeq();
  m.updated_at = now;
  m.actor = std::string(actor);
  ledger::Change c;
  c.kind = ledger::ChangeKind::kMitigation;
  c.actor = m.actor;
  c.subject = m.id;
  c.entity = m.entity.str();
  // Left empty: the store serialises `m` into the payload once (a filled payload would be
  // serialised a second time there, only to be compared).
  return txn.Append(std::move(c), &m);
}

std::string PendingExpiredReason(absl::Duration pending_ttl) {
  return absl::StrCat(AV(core::kPendingExpiredReasonPrefix), ": nobody approved it within ",
                      absl::FormatDuration(pending_ttl));
}

absl::StatusOr<CreateResult> CreateOrExtend(ledger::Txn& txn, const CreateRequest& req,
                                            const core::ActionCatalog& catalog, absl::Time now) {
  const core::Action* action = catalog.Find(req.action);
  if (action == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown action \"", req.action, "\""));
  }
  absl::Duration ttl = req.ttl.value_or(action->default_ttl);
  absl::Time starts = req.starts_at.value_or(now);
  absl::Time expires = starts + ttl;
  CreateResult out;

  QUELL_ASSIGN_OR_RETURN(std::vector<Mitigation> live, txn.FindLive(req.entity, req.action));
  // Ones that have expired, their `expired` change not written yet, are over: a new one is
  // created rather than bringing them back, and their expiry is written after it (the
  // scheduler then finds nothing to do). After: the decision's own change comes first, at
  // the seq the safeguards predicted for it (Screen's NoteLocal).
  // Likewise a pending approval past pending_ttl, which nobody can approve any more: the
  // sweeper would expire it, with ExpirePending's reason.
  std::vector<Mitigation*> over;
  auto expire_over = [&]() -> absl::Status {
    for (Mitigation* m : over) {
      m->state_reason = m->state == MitigationState::kPendingApproval
                            ? PendingExpiredReason(*req.pending_ttl)
                            : "expired";
      m->state = MitigationState::kExpired;
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, "system", now).status());
    }
    return absl::OkStatus();
  };
  for (Mitigation& existing : live) {
    // Only merge into a mitigation of the same kind of enforcement: an active request
    // extends an active one; a pending one never silently extends an active one.
    if (existing.state != req.state) continue;
    if (!core::LiveAt(existing, now, req.pending_ttl.value_or(absl::InfiniteDuration()))) {
      over.push_back(&existing);
      continue;
    }
    // A new hit is recorded on the mitigation even when it does not extend it: the
    // detection ids are the evidence, and escalation counts them (see decisions.cc); a
    // person's request, who asked and why, is on the record too.
    // (What an import batch's hit adds is kept apart: a rollback of the batch undoes it.)
    const bool later = core::ExtendExpiry(existing, {req.batch, req.source, req.policy, expires});
    core::AddDetections(existing, req.detections, req.policy);
    // A partial approval is kept as data (approvals), whatever the new state_reason says;
    // a legacy record's, written only in its state_reason, becomes data before that goes.
    if (existing.approvals.empty()) existing.approvals = PriorApprovers(existing);
    existing.state_reason = absl::StrCat(later                    ? "extended: "
                                         : req.detections.empty() ? "confirmed: "
                                                                  : "hit again: ",
                                         req.reason);
    QUELL_ASSIGN_OR_RETURN(ledger::Change c, AppendMitigationChange(txn, existing, req.actor, now));
    QUELL_RETURN_IF_ERROR(expire_over());
    out.json = std::move(c.payload);
    out.mitigation = std::move(existing);
    return out;
  }
  // Shadow mitigations are never live, so each shadow decision is recorded on its own:
  // a shadow policy's record says how often it would have fired.
  Mitigation m;
  m.id = core::NewId("m_", now);
  m.entity = req.entity;
  m.action = req.action;
  m.state = req.state;
  m.created_at = now;
  m.starts_at = starts;
  m.expires_at = expires;
  m.reason = req.reason;
  m.source = req.source;
  m.policy = req.policy;
  m.policy_version = req.policy_version;
  m.batch = req.batch;
  m.detections = req.detections;
  QUELL_ASSIGN_OR_RETURN(ledger::Change c, AppendMitigationChange(txn, m, req.actor, now));
  QUELL_RETURN_IF_ERROR(expire_over());
  out.json = std::move(c.payload);
  out.created = true;
  out.mitigation = std::move(m);
  return out;
}

namespace {

// How Activate ends the state_reason of a decision merged into `absorber_id` (the
// comma ends the id: "merged into m_1," is not found in "merged into m_12,").
std::string MergedInto(std::string_view absorber_id) {
  return absl::StrCat("; merged into ", AV(absorber_id), ",");
}

}  // namespace

absl::StatusOr<std::string> Activate(ledger::Txn& txn, Mitigation& m, std::string_view actor,
                                     absl::Time now) {
  QUELL_ASSIGN_OR_RETURN(std::vector<Mitigation> live, txn.FindLive(m.entity, m.action));
  for (Mitigation& existing : live) {
    if (existing.id == m.id || existing.state != MitigationState::kActive) continue;
    if (!core::LiveAt(existing, now)) continue;  // over; the scheduler expires it too
    // m's expiry, and what each import batch asked of it, now ask it of `existing`.
    if (m.batch_expiries.empty()) {
      core::ExtendExpiry(existing, {m.batch, m.source, m.policy, m.expires_at});
    }
    for (const core::BatchExpiry& e : m.batch_expiries) {
      const bool own = e.batch.empty();  // m's creation and hits not counted apart
      core::ExtendExpiry(existing, {own ? m.batch : e.batch, own ? m.source : e.source,
                                    own ? m.policy : e.policy, e.expires_at});
    }
    // m's detections are kept as evidence; its first is its creation, which escalation
    // counts as m (expired, merged, still counted as created): recorded as a merged
    // creation, so that it is not counted a second time as a later hit of m's policy on
    // `existing`, while a person's "no" to `existing` still names that policy (immunity).
    for (size_t i = 0; i < m.detections.size(); ++i) {
      // (A manual m was created without detections: its first is a policy's hit.)
      const std::string policy = i == 0 && !m.policy.empty()
                                     ? core::MergedCreation(m.policy)
                                     : std::string(core::DetectionPolicy(m, i));
      core::AddDetections(existing, {m.detections[i]}, policy);
    }
    existing.unlisted_detections += m.unlisted_detections;
    existing.state_reason = absl::StrCat("absorbed ", m.id, " (", m.state_reason, ")");
    QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, existing, actor, now).status());
    m.state = MitigationState::kExpired;
    absl::StrAppend(&m.state_reason, MergedInto(existing.id),
                    " already active for this entity and action");
    QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
    return existing.id;
  }
  m.state = MitigationState::kActive;
  QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
  return m.id;
}

absl::Status UndoMerged(ledger::Txn& txn, const Mitigation& absorber, std::string_view actor,
                        absl::Time now) {
  QUELL_ASSIGN_OR_RETURN(std::vector<Mitigation> ms,
                         txn.EntityMitigations(absorber.entity, absl::InfinitePast()));
  for (Mitigation& m : ms) {
    if (!WasMergedInto(m, absorber.id)) continue;
    m.state = MitigationState::kRevoked;
    m.state_reason =
        absl::StrCat("undone with ", absorber.id, ", which it was merged into (",
                     AV(core::StateName(absorber.state)), ": ", absorber.state_reason, ")");
    QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
  }
  return absl::OkStatus();
}

bool HasMergedCreation(const Mitigation& absorber) {
  return std::any_of(absorber.detection_policies.begin(), absorber.detection_policies.end(),
                     [](const std::string& e) { return core::IsMergedCreation(e); });
}

bool WasMergedInto(const Mitigation& m, std::string_view absorber_id) {
  return m.state == MitigationState::kExpired &&
         m.state_reason.find(MergedInto(absorber_id)) != std::string::npos;
}

ledger::Mutation CreateMitigation(CreateRequest req,
                                  std::shared_ptr<const core::ActionCatalog> catalog,
                                  std::shared_ptr<CreateResult> out) {
  return [req = std::move(req), catalog = std::move(catalog), out = std::move(out)](
             ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(*out, CreateOrExtend(txn, req, *catalog, now));
    return absl::OkStatus();
  };
}

ledger::Mutation RevokeMitigation(std::string id, std::string reason, std::string actor,
                                  std::shared_ptr<Mitigation> out, absl::Duration pending_ttl) {
  return [id = std::move(id), reason = std::move(reason), actor = std::move(actor),
          out = std::move(out), pending_ttl](ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(std::optional<Mitigation> m, txn.GetMitigation(id));
    if (!m) return absl::NotFoundError(absl::StrCat("no mitigation ", id));
    if (!core::IsLive(m->state)) {
      return absl::FailedPreconditionError(absl::StrCat("mitigation ", id, " is ",
                                                        AV(core::StateName(m->state)),
                                                        "; only live ones can be revoked"));
    }
    if (!core::LiveAt(*m, now, pending_ttl)) {  // its expiry is not written yet, but it is over
      return absl::FailedPreconditionError(absl::StrCat(
          "mitigation ", id, " expired at ", core::FormatRfc3339(core::OverAt(*m, pending_ttl)),
          "; only live ones can be revoked"));
    }
    const bool was_active = m->state == MitigationState::kActive;  // only those absorb
    m->state = MitigationState::kRevoked;
    m->state_reason = reason;
    QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, actor, now).status());
    if (was_active) QUELL_RETURN_IF_ERROR(UndoMerged(txn, *m, actor, now));
    *out = *std::move(m);
    return absl::OkStatus();
  };
}

ledger::Mutation ApplyDue(std::vector<std::string> ids, std::shared_ptr<int> out,
                          WhyHeldFn why_held) {
  return [ids = std::move(ids), out = std::move(out), why_held = std::move(why_held)](
             ledger::Txn& txn, absl::Time now) -> absl::Status {
    int n = 0;
    for (const std::string& id : ids) {
      QUELL_ASSIGN_OR_RETURN(std::optional<Mitigation> m, txn.GetMitigation(id));
      if (!m) continue;
      if (m->state == MitigationState::kActive && m->expires_at <= now) {
        m->state = MitigationState::kExpired;
        m->state_reason = "expired";
      } else if (m->state == MitigationState::kScheduled && m->starts_at <= now &&
                 m->expires_at > now) {
        std::optional<std::string> why;
        if (why_held && !m->policy.empty() && m->approvals.empty()) why = why_held(*m, now);
        if (why) {  // a policy's decision, which the entity's protection or immunity holds
          m->state = MitigationState::kPendingApproval;
          m->state_reason = absl::StrCat("held at its scheduled start: ", *why);
          QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, "system", now).status());
          ++n;
          continue;
        }
        m->state_reason = "scheduled start reached";
        QUELL_RETURN_IF_ERROR(Activate(txn, *m, "system", now).status());
        ++n;
        continue;
      } else if (m->state == MitigationState::kScheduled && m->starts_at <= now) {
        m->state = MitigationState::kExpired;  // its whole window passed unseen
        m->state_reason = core::kStartAfterExpiryReason;
      } else {
        continue;
      }
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, "system", now).status());
      ++n;
    }
    *out = n;
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
