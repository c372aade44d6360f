#include "workflow/policies.h"

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"

namespace quell::workflow {

std::string PolicySetPayload(int64_t version, std::string_view yaml) {
  std::string out = absl::StrCat("{\"version\":", version, ",\"yaml\":");
  core::AppendJsonString(yaml, &out);
  out += "}";
  return out;
}

ledger::Mutation PublishPolicySet(std::string yaml, std::string actor,
                                  std::shared_ptr<int64_t> version_out) {
  return [yaml = std::move(yaml), actor = std::move(actor), version_out = std::move(version_out)](
             ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(int64_t version, txn.NextPolicyVersion());
    ledger::Change c;
    c.kind = ledger::ChangeKind::kPolicySet;
    c.actor = actor;
    c.subject = absl::StrCat("policy_set:", version);
    c.payload = PolicySetPayload(version, yaml);
    QUELL_RETURN_IF_ERROR(txn.Append(std::move(c), nullptr).status());
    *version_out = version;
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
