#include "workflow/decisions.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

using core::MitigationState;

void AppendDecision(const core::Mitigation& m, std::string_view reason, std::string* out) {
  if (out->back() != '[') out->push_back(',');
  out->append("{\"mitigation_id\":");
  core::AppendJsonString(m.id, out);
  out->append(",\"entity\":");
  core::AppendJsonString(m.entity.str(), out);
  out->append(",\"action\":");
  core::AppendJsonString(m.action, out);
  out->append(",\"state\":\"");
  out->append(core::StateName(m.state));
  out->append("\",\"policy\":");
  core::AppendJsonString(m.policy, out);
  out->append(",\"reason\":");
  core::AppendJsonString(reason, out);
  out->append("}");
}

// Escalation counts hits: every detection that earned a decision from this policy on this
// entity within the window. A hit either created a mitigation or was recorded on a live
// one (same action: extended instead of stacked), so the hits are the mitigations created
// in the window plus the extra detections recorded on the live ones.
absl::StatusOr<int64_t> PriorHits(ledger::Txn& txn, const engine::Proposal& p, absl::Time now) {
  const absl::Time since = now - p.escalation_window;
  QUELL_ASSIGN_OR_RETURN(
      int64_t hits, txn.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/true));
  std::vector<std::string_view> actions = {p.action};
  for (const engine::EscalationStep& step : p.escalate) {
    if (std::find(actions.begin(), actions.end(), step.action) == actions.end()) {
      actions.push_back(step.action);
    }
  }
  for (std::string_view action : actions) {
    QUELL_ASSIGN_OR_RETURN(auto live, txn.FindLive(p.entity, action));
    for (const core::Mitigation& m : live) {
      if (m.policy == p.policy && m.created_at >= since && m.detections.size() > 1) {
        hits += static_cast<int64_t>(m.detections.size()) - 1;
      }
    }
  }
  return hits;
}

absl::Status ApplyOne(ledger::Txn& txn, DetectionWork& w, const core::ActionCatalog& catalog,
                      const std::string& actor, const SafeguardContext& sg, absl::Time now,
                      DetectionOutcome* out) {
  const engine::Detection& d = w.detection;
  QUELL_ASSIGN_OR_RETURN(auto stored, txn.GetDetection(d.source, d.id));
  if (stored) {
    out->duplicate = true;
    out->reply = std::move(stored->reply);
    return absl::OkStatus();
  }
  std::string decisions = "[";
  for (const engine::Proposal& p : w.proposals) {
    int64_t prior = 0;
    if (!p.escalate.empty()) {
      QUELL_ASSIGN_OR_RETURN(prior, PriorHits(txn, p, now));
    }
    CreateRequest req;
    req.entity = p.entity;
    req.action = engine::EscalatedAction(p, prior);
    req.ttl = p.ttl;
    req.reason =
        prior > 0 && req.action != p.action
            ? absl::StrCat(p.reason, "; escalated to ", req.action, " after ", prior, " prior")
            : p.reason;
    req.source = d.source;
    req.policy = p.policy;
    req.policy_version = p.policy_version;
    req.actor = actor;
    req.batch = d.batch;
    req.detections = {d.id};
    if (p.shadow) {
      req.state = MitigationState::kShadow;
    } else if (p.delay > absl::ZeroDuration()) {
      req.state = MitigationState::kScheduled;
      req.starts_at = now + p.delay;
    }
    if (sg.safeguards != nullptr && !p.shadow) {
      QUELL_ASSIGN_OR_RETURN(Safeguards::Hold hold,
                             sg.safeguards->Screen(txn, *sg.set, d, p, req.action, now));
      if (hold.held) {
        req.state = MitigationState::kPendingApproval;
        req.starts_at.reset();
        req.reason = absl::StrCat(req.reason, "; held for approval: ", hold.reason);
      }
    }
    QUELL_ASSIGN_OR_RETURN(CreateResult r, CreateOrExtend(txn, req, catalog, now));
    AppendDecision(r.mitigation, req.reason, &decisions);
    out->decisions.push_back({p.policy, r.mitigation.action, r.mitigation.state});
  }
  decisions += "]";
  out->reply = "{\"id\":";
  core::AppendJsonString(d.id, &out->reply);
  out->reply += ",\"source\":";
  core::AppendJsonString(d.source, &out->reply);
  absl::StrAppend(&out->reply, ",\"status\":\"accepted\",\"decisions\":", decisions, "}");

  ledger::StoredDetection sd;
  sd.source = d.source;
  sd.id = d.id;
  sd.type = d.type;
  sd.entity = d.entity.str();
  sd.score = d.score;
  sd.observed_at = d.observed_at;
  sd.received_at = now;
  sd.batch = d.batch;
  sd.json = std::move(w.json);
  sd.reply = out->reply;
  return txn.PutDetection(sd);
}

}  // namespace

absl::StatusOr<int64_t> PriorHitsCommitted(ledger::Store& store, const engine::Proposal& p,
                                           absl::Time now) {
  const absl::Time since = now - p.escalation_window;
  QUELL_ASSIGN_OR_RETURN(
      int64_t hits, store.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/true));
  ledger::MitigationQuery q;
  q.entity = p.entity;
  q.policy = p.policy;
  q.limit = 1000;
  QUELL_ASSIGN_OR_RETURN(ledger::MitigationPage page, store.ListMitigations(q));
  for (const core::Mitigation& m : page.mitigations) {
    if (core::IsLive(m.state) && m.created_at >= since && m.detections.size() > 1) {
      hits += static_cast<int64_t>(m.detections.size()) - 1;
    }
  }
  return hits;
}

ledger::Mutation ApplyDetections(std::vector<DetectionWork> work,
                                 std::shared_ptr<const core::ActionCatalog> catalog,
                                 std::string actor,
                                 std::shared_ptr<std::vector<DetectionOutcome>> out) {
  return ApplyDetections(std::move(work), std::move(catalog), std::move(actor), std::move(out),
                         SafeguardContext{});
}

ledger::Mutation ApplyDetections(std::vector<DetectionWork> work,
                                 std::shared_ptr<const core::ActionCatalog> catalog,
                                 std::string actor,
                                 std::shared_ptr<std::vector<DetectionOutcome>> out,
                                 SafeguardContext sg) {
  return [work = std::move(work), catalog = std::move(catalog), actor = std::move(actor),
          out = std::move(out),
          sg = std::move(sg)](ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
    out->assign(work.size(), DetectionOutcome{});
    for (size_t i = 0; i < work.size(); ++i) {
      QUELL_RETURN_IF_ERROR(ApplyOne(txn, work[i], *catalog, actor, sg, now, &(*out)[i]));
    }
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
