// Appeals (SPEC POST /v1/appeals, POST /v1/appeals/{id}/decision): someone affected by a
// live mitigation asks for it to be lifted; a reviewer other than the one who filed it
// grants (the mitigation is revoked, the reinstatement is recorded, and the entity becomes
// immune to that policy and action) or denies. Appeals are kReview changes on the
// entity's timeline; an appeal's id is derived from its mitigation's ("ap_" + the part
// after "m_"), so at most one appeal per mitigation is open at a time and no index is
// needed to find it.
//
// Thread-safety: thread-safe functions; mutations run on the commit thread.
#ifndef QUELL_WORKFLOW_APPEALS_H_
#define QUELL_WORKFLOW_APPEALS_H_

#include <memory>
#include <optional>
#include <string>

#include "core/mitigation.h"
#include "ledger/ledger.h"

namespace quell::workflow {

struct Appeal {
  std::string id;
  std::string mitigation_id;
  std::string entity;
  std::string state;  // open | granted | denied
  std::string statement;
  std::string filed_by;
  std::string decided_by;  // "" while open
  std::string note;
  absl::Time filed_at;
  absl::Time decided_at;
};
std::string AppealJson(const Appeal& a);

std::string AppealIdFor(std::string_view mitigation_id);
//! nullopt if `appeal_id` is not of the AppealIdFor form.
std::optional<std::string> MitigationOfAppeal(std::string_view appeal_id);

//! The appeal a kReview change's payload records ({"appeal": id, "state": ...}) as of
//! that change, committed at `at` (filed_at defaults to it); its mitigation and entity
//! are not in the payload and stay empty. kInvalidArgument if it is not an appeal's.
absl::StatusOr<Appeal> AppealFromPayload(std::string_view payload, absl::Time at);

//! The appeal's latest state from committed data, with the mitigation's seq at that read
//! in *mitigation_seq; nullopt if there is none.
absl::StatusOr<std::optional<Appeal>> LoadAppeal(ledger::Store& store, std::string_view appeal_id,
                                                 int64_t* mitigation_seq);

//! Files an appeal against live mitigation `mitigation_id`. kNotFound; kFailedPrecondition
//! if it is not live; kAlreadyExists if another filing of it came first (checked in the
//! transaction: concurrent filings cannot both pass).
//! A pending approval past `pending_ttl` (SafeguardOptions) is not live.
ledger::Mutation FileAppeal(std::string mitigation_id, std::string statement, std::string actor,
                            std::shared_ptr<Appeal> out, absl::Duration pending_ttl);

//! Decides open appeal `appeal` (as loaded, with the mitigation's seq then). Errors:
//! kPermissionDenied (the filer deciding), kAborted (the mitigation changed meanwhile),
//! kFailedPrecondition (a grant on a mitigation no longer live: nothing to revoke).
//! A grant revokes the mitigation.
ledger::Mutation DecideAppeal(Appeal appeal, int64_t mitigation_seq, bool grant, std::string note,
                              std::string reviewer, std::shared_ptr<Appeal> out,
                              absl::Duration pending_ttl);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_APPEALS_H_
