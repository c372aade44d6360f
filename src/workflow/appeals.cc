#include "workflow/appeals.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/journal.h"
#include "rapidjson/document.h"
#include "safeguards/approval.h"
#include "workflow/internal/json_fields.h"
#include "workflow/markers.h"
#include "workflow/mitigations.h"

namespace quell::workflow {
namespace {

// The idempotency-table scope of the one-appeal-per-mitigation markers (FileAppeal).
constexpr std::string_view kAppealMarkers = "quell:appeals";

using internal::Field;

// The ledger payload: the appeal after the change.
std::string Payload(const Appeal& a) {
  std::string p = "{";
  Field(&p, "appeal", a.id);
  Field(&p, "mitigation_id", a.mitigation_id);
  Field(&p, "state", a.state);
  Field(&p, "statement", a.statement);
  Field(&p, "filed_by", a.filed_by);
  Field(&p, "filed_at", core::FormatRfc3339(a.filed_at));
  Field(&p, "decided_by", a.decided_by);
  Field(&p, "note", a.note);
  if (a.state == "granted") p += ",\"reinstated\":true";
  p += "}";
  return p;
}

absl::Status AppendAppeal(ledger::Txn& txn, const Appeal& a, std::string_view actor) {
  ledger::Change c;
  c.kind = ledger::ChangeKind::kReview;
  c.actor = std::string(actor);
  c.subject = a.id;
  c.entity = a.entity;
  c.payload = Payload(a);
  return txn.Append(std::move(c), nullptr).status();
}

}  // namespace

std::string AppealJson(const Appeal& a) {
  std::string p = "{";
  Field(&p, "id", a.id);
  Field(&p, "mitigation_id", a.mitigation_id);
  Field(&p, "entity", a.entity);
  Field(&p, "state", a.state);
  Field(&p, "statement", a.statement);
  Field(&p, "filed_by", a.filed_by);
  Field(&p, "filed_at", core::FormatRfc3339(a.filed_at));
  Field(&p, "decided_by", a.decided_by);
  Field(&p, "note", a.note);
  if (a.state != "open") Field(&p, "decided_at", core::FormatRfc3339(a.decided_at));
  p += "}";
  return p;
}

std::string AppealIdFor(std::string_view mitigation_id) {
  if (absl::StartsWith(AV(mitigation_id), "m_")) mitigation_id.remove_prefix(2);
  return absl::StrCat("ap_", AV(mitigation_id));
}

std::optional<std::string> MitigationOfAppeal(std::string_view appeal_id) {
  if (!absl::StartsWith(AV(appeal_id), "ap_") || appeal_id.size() < 4) return std::nullopt;
  return absl::StrCat("m_", AV(appeal_id.substr(3)));
}

absl::StatusOr<Appeal> AppealFromPayload(std::string_view payload, absl::Time at) {
  rapidjson::Document doc;
  doc.Parse(payload.data(), payload.size());
  if (doc.HasParseError() || !doc.IsObject() || internal::StringMember(doc, "appeal").empty()) {
    return absl::InvalidArgumentError("not an appeal's change");
  }
  Appeal a;
  a.id = internal::StringMember(doc, "appeal");
  a.state = internal::StringMember(doc, "state");
  a.statement = internal::StringMember(doc, "statement");
  a.filed_by = internal::StringMember(doc, "filed_by");
  a.decided_by = internal::StringMember(doc, "decided_by");
  a.note = internal::StringMember(doc, "note");
  a.filed_at = core::ParseRfc3339(internal::StringMember(doc, "filed_at")).value_or(at);
  a.decided_at = at;
  return a;
}

absl::StatusOr<std::optional<Appeal>> LoadAppeal(ledger::Store& store, std::string_view appeal_id,
                                                 int64_t* mitigation_seq) {
  auto mid = MitigationOfAppeal(appeal_id);
  if (!mid) return std::optional<Appeal>();
  QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, store.GetMitigation(*mid));
  if (!m) return std::optional<Appeal>();
  *mitigation_seq = m->seq;
  std::optional<Appeal> out;  // its latest record, however long the entity's timeline
  QUELL_RETURN_IF_ERROR(ledger::ForEachEntityChange(store, m->entity, [&](const ledger::Change& c) {
    if (c.kind != ledger::ChangeKind::kReview || c.subject != appeal_id) return true;
    absl::StatusOr<Appeal> a = AppealFromPayload(c.payload, c.at);
    if (!a.ok()) return true;
    a->id = std::string(appeal_id);
    a->mitigation_id = *mid;
    a->entity = m->entity.str();
    out = *std::move(a);
    return true;
  }));
  return out;
}

ledger::Mutation FileAppeal(std::string mitigation_id, std::string statement, std::string actor,
                            std::shared_ptr<Appeal> out, absl::Duration pending_ttl) {
  return [mitigation_id = std::move(mitigation_id), statement = std::move(statement),
          actor = std::move(actor), out = std::move(out),
          pending_ttl](ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(mitigation_id));
    if (!m) return absl::NotFoundError(absl::StrCat("no mitigation ", mitigation_id));
    if (!core::IsLive(m->state)) {
      return absl::FailedPreconditionError(absl::StrCat("mitigation ", mitigation_id, " is ",
                                                        AV(core::StateName(m->state)),
                                                        "; only live ones can be appealed"));
    }
    if (!core::LiveAt(*m, now, pending_ttl)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "mitigation ", mitigation_id, " expired at ",
          core::FormatRfc3339(core::OverAt(*m, pending_ttl)), "; only live ones can be appealed"));
    }
    // One appeal per mitigation, also when two are filed at once (one group commit, or
    // two nodes on PostgreSQL, whose ledger transactions are serialised): a marker in the
    // idempotency table, which the transaction reads with its own writes. It is purged
    // after idempotency_retention, long after the appeal itself is in the journal, where
    // the route's check finds it.
    const std::string id = AppealIdFor(m->id);
    QUELL_ASSIGN_OR_RETURN(bool first, ClaimMarker(txn, kAppealMarkers, id, now));
    if (!first) return absl::AlreadyExistsError(absl::StrCat("appeal ", id, " is already open"));
    Appeal a;
    a.id = id;
    a.mitigation_id = m->id;
    a.entity = m->entity.str();
    a.state = "open";
    a.statement = statement;
    a.filed_by = actor;
    a.filed_at = now;
    QUELL_RETURN_IF_ERROR(AppendAppeal(txn, a, actor));
    *out = std::move(a);
    return absl::OkStatus();
  };
}

ledger::Mutation DecideAppeal(Appeal appeal, int64_t mitigation_seq, bool grant, std::string note,
                              std::string reviewer, std::shared_ptr<Appeal> out,
                              absl::Duration pending_ttl) {
  return [a = std::move(appeal), mitigation_seq, grant, note = std::move(note),
          reviewer = std::move(reviewer), out = std::move(out),
          pending_ttl](ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
    if (a.state != "open") {
      return absl::FailedPreconditionError(absl::StrCat("appeal ", a.id, " is already ", a.state));
    }
    QUELL_RETURN_IF_ERROR(safeguards::CheckReviewer(reviewer, a.filed_by, {}));
    // One decision per appeal, also when two are sent at once (the appeal was read before
    // this transaction, and a denial does not change the mitigation): a marker, as for
    // filing. Two at once were both answered 200, a denial then overturned by a grant.
    QUELL_ASSIGN_OR_RETURN(bool first,
                           ClaimMarker(txn, kAppealMarkers, absl::StrCat(a.id, "/decided"), now));
    if (!first) {
      return absl::FailedPreconditionError(absl::StrCat("appeal ", a.id, " is already decided"));
    }
    QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(a.mitigation_id));
    if (!m) return absl::NotFoundError(absl::StrCat("no mitigation ", a.mitigation_id));
    if (m->seq != mitigation_seq) {
      return absl::AbortedError(
          absl::StrCat("mitigation ", m->id, " changed meanwhile; read the appeal again"));
    }
    if (grant && !core::LiveAt(*m, now, pending_ttl)) {
      // Nothing to revoke, and nothing would make the entity immune: refuse rather than
      // record a grant that did nothing (a pending approval past its window included).
      return absl::FailedPreconditionError(absl::StrCat(
          "mitigation ", m->id, " is ",
          AV(core::LiveAt(*m, now) ? std::string_view("over") : core::StateName(m->state)),
          ": nothing to revoke; deny the appeal, or mitigate again and appeal that"));
    }
    std::string suffix = note.empty() ? "" : absl::StrCat(": ", note);
    if (grant) {
      const bool was_active = m->state == core::MitigationState::kActive;  // only those absorb
      m->state = core::MitigationState::kRevoked;
      m->state_reason =
          absl::StrCat("appeal ", a.id, " granted by ", reviewer, suffix, "; entity reinstated");
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *m, reviewer, now).status());
      if (was_active) QUELL_RETURN_IF_ERROR(UndoMerged(txn, *m, reviewer, now));
    }
    a.state = grant ? "granted" : "denied";
    a.decided_by = reviewer;
    a.note = note;
    a.decided_at = now;
    QUELL_RETURN_IF_ERROR(AppendAppeal(txn, a, reviewer));
    *out = std::move(a);
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
