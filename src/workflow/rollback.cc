#include "workflow/rollback.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "workflow/mitigations.h"

namespace quell::workflow {

bool Matches(const RollbackFilter& f, const core::Mitigation& m) {
  if (!core::IsLive(m.state)) return false;
  if (!f.policy.empty() && m.policy != f.policy) return false;
  if (!f.source.empty() && m.source != f.source) return false;
  if (!f.action.empty() && m.action != f.action) return false;
  if (!f.batch.empty() && m.batch != f.batch) return false;
  if (f.since && m.created_at < *f.since) return false;
  if (f.until && m.created_at >= *f.until) return false;
  return true;
}

absl::StatusOr<std::vector<std::string>> FindRollbackTargets(ledger::Store& store,
                                                             const RollbackFilter& f) {
  std::vector<std::string> ids;
  QUELL_RETURN_IF_ERROR(store
                            .ScanLive([&](const core::Mitigation& m) {
                              if (Matches(f, m)) ids.push_back(m.id);
                              return absl::OkStatus();
                            })
                            .status());
  return ids;
}

ledger::Mutation Rollback(std::vector<std::string> ids, RollbackFilter f, std::string reason,
                          std::string actor, std::string rollback_id,
                          std::shared_ptr<RollbackResult> out) {
  return [ids = std::move(ids), f = std::move(f), reason = std::move(reason),
          actor = std::move(actor), rollback_id = std::move(rollback_id),
          out = std::move(out)](ledger::Txn& txn, absl::Time now) -> absl::Status {
    RollbackResult r;
    const std::string why = absl::StrCat("rollback ", rollback_id, ": ", reason);
    for (const std::string& id : ids) {
      QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(id));
      if (!m || !Matches(f, *m)) continue;
      ++r.matched;
      m->state = core::MitigationState::kRevoked;
      m->state_reason = why;
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, actor, now).status());
      ++r.revoked;
    }
    *out = r;
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
