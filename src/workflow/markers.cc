#include "workflow/markers.h"

#include <optional>
#include <utility>

#include "core/status.h"

namespace quell::workflow {

absl::StatusOr<bool> ClaimMarker(ledger::Txn& txn, std::string_view scope, std::string key,
                                 absl::Time now) {
  QUELL_ASSIGN_OR_RETURN(std::optional<ledger::IdempotencyRecord> taken,
                         txn.GetIdempotency(scope, key));
  if (taken) return false;
  QUELL_RETURN_IF_ERROR(txn.PutIdempotency({.scope = std::string(scope),
                                            .key = std::move(key),
                                            .request_hash = "",
                                            .status = 200,
                                            .response = "",
                                            .created_at = now}));
  return true;
}

}  // namespace quell::workflow
