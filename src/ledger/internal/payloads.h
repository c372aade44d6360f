// The payloads of the change kinds a store materialises (kList, kPolicySet), the API
// key sources column and a state_reason pattern for the SQL, parsed and written the same way by the
// SQLite and PostgreSQL stores: one set of rules, so a change accepted by one backend is accepted
// by the other.
//
// Thread-safety: free functions without state; safe from any thread.
#ifndef QUELL_LEDGER_INTERNAL_PAYLOADS_H_
#define QUELL_LEDGER_INTERNAL_PAYLOADS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::ledger::internal {

// A kList payload: {"list": name, "add": [...], "remove": [...], "protected": bool?,
// "kind": string?}; entities normalised.
struct ListChange {
  std::string list;
  std::vector<std::string> add, remove;
  std::optional<bool> is_protected;
  std::optional<std::string> kind;
};
// kInvalidArgument naming the field, for a payload that is not such an object (unknown
// fields included) or names an entity that does not parse.
absl::StatusOr<ListChange> ParseListChange(std::string_view payload);

// A kPolicySet payload: {"version": N, "yaml": "..."}.
struct PolicySetChange {
  int64_t version = 0;
  std::string yaml;
};
// kInvalidArgument for anything but exactly those two fields, typed so.
absl::StatusOr<PolicySetChange> ParsePolicySetChange(std::string_view payload);

// An API key's sources as stored: a JSON array of strings.
std::string SourcesToJson(const std::vector<std::string>& sources);
// kDataLoss if the stored text is not such an array.
absl::StatusOr<std::vector<std::string>> SourcesFromJson(std::string_view json);

// core::CountsAsPrior in SQL, as both stores' CountMitigations filter: a LIKE pattern
// matching the state_reason of a pending approval that expired unapproved (its prefix,
// then anything); core::ExpiredUnenforced's other reasons are bound as they are.
const std::string& ExpiredUnapprovedPattern();

}  // namespace quell::ledger::internal

#endif  // QUELL_LEDGER_INTERNAL_PAYLOADS_H_
