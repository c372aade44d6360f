#include "workflow/rollback.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
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

// Idempotency-table scope of the decided-request markers (purged with the other keys
// after idempotency_retention, long after the decision is in the journal).
constexpr std::string_view kRollbackMarkers = "quell:rollbacks";

using internal::Field;

void IntField(std::string* out, std::string_view name, int64_t value) {
  absl::StrAppend(out, out->size() > 1 ? "," : "", "\"", AV(name), "\":", value);
}

int64_t I(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsInt64()) return 0;
  return it->value.GetInt64();
}

std::optional<absl::Time> T(const rapidjson::Value& v, const char* name) {
  std::string text = internal::StringMember(v, name);
  if (text.empty()) return std::nullopt;
  auto t = core::ParseRfc3339(text);
  if (!t.ok()) return std::nullopt;
  return *t;
}

// The ledger payload: the request after the change.
std::string Payload(const RollbackRequest& r) {
  std::string p = "{";
  Field(&p, "rollback", r.id);
  Field(&p, "state", r.state);
  p += ",\"filter\":";
  p += RollbackFilterJson(r.filter);
  Field(&p, "reason", r.reason);
  Field(&p, "requested_by", r.requested_by);
  Field(&p, "requested_at", core::FormatRfc3339(r.requested_at));
  IntField(&p, "matched", r.matched);
  IntField(&p, "entities", r.entities);
  if (r.extensions != 0) IntField(&p, "extensions", r.extensions);
  if (!r.decided_by.empty()) {
    Field(&p, "decided_by", r.decided_by);
    Field(&p, "decided_at", core::FormatRfc3339(r.decided_at));
    Field(&p, "note", r.note);
    IntField(&p, "revoked", r.revoked);
    if (r.restored != 0) IntField(&p, "restored", r.restored);
  }
  p += "}";
  return p;
}

// Records the hits of `removed` (the batch's parts of m) on m as taken back: those of its
// policies whose detection is stored as the batch's. Escalation then no longer counts them
// (a detection purged by retention since is left counted).
absl::Status TakeBackHits(ledger::Txn& txn, std::string_view batch,
                          const std::vector<core::BatchExpiry>& removed, core::Mitigation& m) {
  for (size_t i = 0; i < m.detections.size(); ++i) {
    const std::string_view policy = core::DetectionPolicy(m, i);
    for (const core::BatchExpiry& e : removed) {
      if (e.policy != policy) continue;
      QUELL_ASSIGN_OR_RETURN(std::optional<ledger::StoredDetection> d,
                             txn.GetDetection(e.source, m.detections[i]));
      if (d && d->batch == batch) {
        core::TakeBackHit(m, i);
        break;
      }
    }
  }
  return absl::OkStatus();
}

// Whether the rollback selects `m`'s creation, live or not (Matches without liveness).
bool Selects(const RollbackFilter& f, const core::Mitigation& m) {
  if (!f.policy.empty() && m.policy != f.policy) return false;
  if (!f.source.empty() && m.source != f.source) return false;
  if (!f.action.empty() && m.action != f.action) return false;
  if (!f.batch.empty() && m.batch != f.batch) return false;
  if (f.since && m.created_at < *f.since) return false;
  if (f.until && m.created_at >= *f.until) return false;
  return true;
}

// After the rollback revoked `absorber`, or took back batch f.batch's extension of it: the
// policy decisions Activate merged into it were enforced only as part of it. One the
// filter selects itself (the same bad model or batch) is undone: written `revoked`, no
// prior offence any more. Another one loses the batch's hits and extension as the absorber
// does (TakeBackHits, ExpiryWithoutBatch); when the absorber was revoked, it then stands on
// its own again: back in force until its own expiry if that is still ahead (a rollback of
// one model does not lift what another decided), left `expired` (enforced, through the
// absorber) if not. Looks only where the absorber records a merged policy decision
// (HasMergedCreation): a rollback may revoke 100,000 mitigations. A merged manual decision
// is left as it is (it leaves no such record, so it could not be found in every case).
absl::Status SettleMerged(ledger::Txn& txn, const RollbackFilter& f,
                          const core::Mitigation& absorber, const std::string& why,
                          const std::string& actor, absl::Time now, const WhyHeldFn& why_held) {
  if (!HasMergedCreation(absorber)) return absl::OkStatus();
  const bool revoked = absorber.state == core::MitigationState::kRevoked;
  const bool by_batch = !f.batch.empty() && !f.since && !f.until;
  QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> ms,
                         txn.EntityMitigations(absorber.entity, absl::InfinitePast()));
  for (core::Mitigation& m : ms) {
    if (m.policy.empty() || !WasMergedInto(m, absorber.id)) continue;
    if (Selects(f, m)) {
      m.state = core::MitigationState::kRevoked;
      m.state_reason = absl::StrCat(why, "; it had been merged into ", absorber.id);
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
      continue;
    }
    bool took_back = false;
    if (by_batch && core::HitByBatch(m, f.batch, f.source, f.policy)) {
      std::vector<core::BatchExpiry> removed;
      m.expires_at = *core::ExpiryWithoutBatch(m, f.batch, f.source, f.policy, &removed);
      QUELL_RETURN_IF_ERROR(TakeBackHits(txn, f.batch, removed, m));
      took_back = true;
    }
    // A policy's decision no person approved, on an entity protected or made immune since:
    // not enforced again without a person (as ApplyDue holds one at its scheduled start).
    std::optional<std::string> held;
    if (revoked && m.expires_at > now && why_held && m.approvals.empty()) held = why_held(m, now);
    if (held) {
      absl::StrAppend(&m.state_reason, "; not back in force after ", absorber.id, " was revoked (",
                      why, "): ", *held);
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
    } else if (revoked && m.expires_at > now) {
      m.state_reason = absl::StrCat("back in force: ", absorber.id,
                                    ", which it had been merged into, was revoked (", why, ")");
      QUELL_RETURN_IF_ERROR(Activate(txn, m, actor, now).status());
    } else if (took_back) {  // still expired, its "merged into" kept
      absl::StrAppend(&m.state_reason, "; ", why, ": took back the hits of batch ", f.batch);
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, m, actor, now).status());
    }
  }
  return absl::OkStatus();
}

// What the rollback does to `m` (live, matched): revokes it, or (MatchesExtension) takes
// back the batch's extension and hits. False if it matches neither any more.
absl::StatusOr<bool> Undo(ledger::Txn& txn, const RollbackFilter& f, const std::string& why,
                          absl::Time now, core::Mitigation& m) {
  if (Matches(f, m)) {
    m.state = core::MitigationState::kRevoked;
    m.state_reason = why;
    return true;
  }
  if (!MatchesExtension(f, m)) return false;
  std::vector<core::BatchExpiry> removed;
  m.expires_at = *core::ExpiryWithoutBatch(m, f.batch, f.source, f.policy, &removed);
  QUELL_RETURN_IF_ERROR(TakeBackHits(txn, f.batch, removed, m));
  // Over without the batch: it ends now, as the scheduler would have ended it then (an
  // enforced decision of its own, still a prior offence).
  const bool over = m.state == core::MitigationState::kActive && m.expires_at <= now;
  if (over) m.state = core::MitigationState::kExpired;
  m.state_reason =
      absl::StrCat(why, "; took back the hits of batch ", f.batch,
                   over ? ": over since " : ": expires ", core::FormatRfc3339(m.expires_at));
  return true;
}

// Revokes each of `targets` still live and matching `f`, or undoes the batch's extension
// of it, in `txn`.
absl::Status RevokeMatching(ledger::Txn& txn, std::vector<core::Mitigation>& targets,
                            const RollbackFilter& f, const std::string& why,
                            const std::string& actor, absl::Time now, absl::Duration pending_ttl,
                            const WhyHeldFn& why_held, RollbackResult* r) {
  absl::flat_hash_set<std::string> entities;
  for (core::Mitigation& m : targets) {
    // One past its expiry is over (its `expired` change is the scheduler's to write), and a
    // pending approval past pending_ttl (the sweeper's).
    if (!core::LiveAt(m, now, pending_ttl)) continue;
    const int64_t read_at = m.seq;
    QUELL_ASSIGN_OR_RETURN(bool undo, Undo(txn, f, why, now, m));
    if (!undo) continue;
    m.seq = txn.NextSeq();
    m.updated_at = now;
    m.actor = actor;
    ledger::Change c;
    c.kind = ledger::ChangeKind::kMitigation;
    c.actor = actor;
    QUELL_ASSIGN_OR_RETURN(std::optional<ledger::Change> done,
                           txn.AppendMitigationIfAt(std::move(c), m, read_at));
    if (!done) {
      // Changed since the scan: read it again and decide on what it is now.
      QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> cur, txn.GetMitigation(m.id));
      if (!cur || !core::LiveAt(*cur, now, pending_ttl)) continue;
      QUELL_ASSIGN_OR_RETURN(undo, Undo(txn, f, why, now, *cur));
      if (!undo) continue;
      QUELL_RETURN_IF_ERROR(AppendMitigationChange(txn, *cur, actor, now).status());
      m = *std::move(cur);
    }
    QUELL_RETURN_IF_ERROR(SettleMerged(txn, f, m, why, actor, now, why_held));
    ++r->matched;
    ++(m.state == core::MitigationState::kRevoked ? r->revoked : r->restored);
    entities.insert(m.entity.str());
  }
  r->entities = static_cast<int64_t>(entities.size());
  return absl::OkStatus();
}

bool Expired(const RollbackRequest& r, absl::Duration ttl, absl::Time now) {
  return r.state == "pending_approval" && r.requested_at + ttl <= now;
}

// Files `r` (its current state) in the rollback journal.
absl::Status AppendRequest(ledger::Txn& txn, const RollbackRequest& r, std::string_view actor) {
  ledger::Change c;
  c.kind = ledger::ChangeKind::kReview;
  c.actor = std::string(actor);
  c.subject = r.id;
  c.entity = std::string(kRollbackJournal);
  c.payload = Payload(r);
  return txn.Append(std::move(c), nullptr).status();
}

}  // namespace

bool Matches(const RollbackFilter& f, const core::Mitigation& m) {
  return core::IsLive(m.state) && Selects(f, m);
}

bool MatchesExtension(const RollbackFilter& f, const core::Mitigation& m) {
  if (f.batch.empty() || f.since || f.until || !core::IsLive(m.state) || Matches(f, m)) {
    return false;
  }
  if (!f.action.empty() && m.action != f.action) return false;
  return core::HitByBatch(m, f.batch, f.source, f.policy);
}

std::string RollbackFilterJson(const RollbackFilter& f) {
  std::string p = "{";
  if (!f.policy.empty()) Field(&p, "policy", f.policy);
  if (!f.source.empty()) Field(&p, "source", f.source);
  if (!f.action.empty()) Field(&p, "action", f.action);
  if (!f.batch.empty()) Field(&p, "batch", f.batch);
  if (f.since) Field(&p, "since", core::FormatRfc3339(*f.since));
  if (f.until) Field(&p, "until", core::FormatRfc3339(*f.until));
  p += "}";
  return p;
}

absl::StatusOr<std::vector<core::Mitigation>> FindRollbackTargets(ledger::Store& store,
                                                                  const RollbackFilter& f,
                                                                  absl::Time now,
                                                                  absl::Duration pending_ttl) {
  QUELL_ASSIGN_OR_RETURN(RollbackTargets t, FindRollbackTargetSet(store, f, now, pending_ttl));
  return std::move(t.mitigations);
}

absl::StatusOr<RollbackTargets> FindRollbackTargetSet(ledger::Store& store, const RollbackFilter& f,
                                                      absl::Time now, absl::Duration pending_ttl) {
  RollbackTargets t;
  absl::flat_hash_set<std::string> entities;
  QUELL_RETURN_IF_ERROR(store
                            .ScanLive([&](const core::Mitigation& m) {
                              if (!core::LiveAt(m, now, pending_ttl)) return absl::OkStatus();
                              const bool extension = MatchesExtension(f, m);
                              if (extension || Matches(f, m)) {
                                t.mitigations.push_back(m);
                                entities.insert(m.entity.str());
                                t.extensions += extension;
                              }
                              return absl::OkStatus();
                            })
                            .status());
  t.entities = static_cast<int64_t>(entities.size());
  return t;
}

// ---- rollback requests ----

std::string_view RollbackRequestState(const RollbackRequest& r, absl::Duration pending_ttl,
                                      absl::Time now) {
  return Expired(r, pending_ttl, now) ? std::string_view("expired") : std::string_view(r.state);
}

std::string RollbackRequestJson(const RollbackRequest& r, absl::Duration pending_ttl,
                                absl::Time now) {
  std::string p = "{";
  const std::string_view state = RollbackRequestState(r, pending_ttl, now);
  Field(&p, "id", r.id);
  Field(&p, "state", state);
  p += ",\"filter\":";
  p += RollbackFilterJson(r.filter);
  Field(&p, "reason", r.reason);
  Field(&p, "requested_by", r.requested_by);
  Field(&p, "requested_at", core::FormatRfc3339(r.requested_at));
  // When it stops (or stopped) waiting; a decided request did not wait for it.
  if (state == "pending_approval" || state == "expired") {
    Field(&p, "expires_at", core::FormatRfc3339(r.requested_at + pending_ttl));
  }
  IntField(&p, "matched", r.matched);
  IntField(&p, "entities", r.entities);
  IntField(&p, "extensions", r.extensions);
  IntField(&p, "revoked", r.revoked);
  IntField(&p, "restored", r.restored);
  Field(&p, "decided_by", r.decided_by);
  if (!r.decided_by.empty()) Field(&p, "decided_at", core::FormatRfc3339(r.decided_at));
  Field(&p, "note", r.note);
  p += "}";
  return p;
}

absl::StatusOr<RollbackRequest> RollbackRequestFromPayload(std::string_view payload,
                                                           absl::Time at) {
  rapidjson::Document doc;
  doc.Parse(payload.data(), payload.size());
  if (doc.HasParseError() || !doc.IsObject() || internal::StringMember(doc, "rollback").empty()) {
    return absl::InvalidArgumentError("not a rollback request");
  }
  RollbackRequest r;
  r.id = internal::StringMember(doc, "rollback");
  r.state = internal::StringMember(doc, "state");
  if (auto it = doc.FindMember("filter"); it != doc.MemberEnd() && it->value.IsObject()) {
    const rapidjson::Value& f = it->value;
    r.filter.policy = internal::StringMember(f, "policy");
    r.filter.source = internal::StringMember(f, "source");
    r.filter.action = internal::StringMember(f, "action");
    r.filter.batch = internal::StringMember(f, "batch");
    r.filter.since = T(f, "since");
    r.filter.until = T(f, "until");
  }
  r.reason = internal::StringMember(doc, "reason");
  r.requested_by = internal::StringMember(doc, "requested_by");
  r.requested_at = T(doc, "requested_at").value_or(at);
  r.matched = I(doc, "matched");
  r.entities = I(doc, "entities");
  r.extensions = I(doc, "extensions");
  r.decided_by = internal::StringMember(doc, "decided_by");
  r.decided_at = T(doc, "decided_at").value_or(at);
  r.note = internal::StringMember(doc, "note");
  r.revoked = I(doc, "revoked");
  r.restored = I(doc, "restored");
  if (r.filter.empty()) return absl::InvalidArgumentError("rollback request without a filter");
  return r;
}

absl::Status RollbackRequests::Load(ledger::Store& store) {
  QUELL_ASSIGN_OR_RETURN(std::vector<ledger::Change> changes,
                         ledger::ReadJournal(store, kRollbackJournal, ledger::ChangeKind::kReview));
  OnCommitted(changes);
  return absl::OkStatus();
}

void RollbackRequests::OnCommitted(const std::vector<ledger::Change>& changes) {
  if (changes.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (const ledger::Change& c : changes) {
    if (c.kind != ledger::ChangeKind::kReview || c.entity != kRollbackJournal) continue;
    auto r = RollbackRequestFromPayload(c.payload, c.at);
    if (!r.ok()) continue;
    Entry& e = requests_[r->id];
    e.committed = *std::move(r);
  }
  // Every decision appended at or below the last committed seq is now settled: either it
  // committed (and was applied above) or its seq was reused by something else.
  const int64_t last = changes.back().seq;
  for (auto& [id, e] : requests_) {
    if (e.tentative && e.tentative->first <= last) e.tentative.reset();
  }
}

std::optional<RollbackRequest> RollbackRequests::Get(std::string_view id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = requests_.find(id);
  if (it == requests_.end()) return std::nullopt;
  return it->second.committed;
}

std::vector<RollbackRequest> RollbackRequests::Pending(absl::Time now,
                                                       absl::Duration pending_ttl) const {
  std::vector<RollbackRequest> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, e] : requests_) {
    if (e.committed.state == "pending_approval" && !Expired(e.committed, pending_ttl, now))
      out.push_back(e.committed);
  }
  std::sort(out.begin(), out.end(), [](const RollbackRequest& a, const RollbackRequest& b) {
    return a.requested_at < b.requested_at || (a.requested_at == b.requested_at && a.id < b.id);
  });
  return out;
}

std::vector<RollbackRequest> RollbackRequests::All(size_t limit) const {
  std::vector<RollbackRequest> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, e] : requests_) out.push_back(e.committed);
  std::sort(out.begin(), out.end(), [](const RollbackRequest& a, const RollbackRequest& b) {
    return a.requested_at > b.requested_at || (a.requested_at == b.requested_at && a.id > b.id);
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

ledger::Mutation RollbackRequests::Request(RollbackRequest request,
                                           std::shared_ptr<RollbackRequest> out) {
  return [this, request = std::move(request), out = std::move(out)](
             ledger::Txn& txn, absl::Time now) -> absl::Status {
    if (request.state != "pending_approval" || request.id.empty() || request.filter.empty()) {
      return absl::InvalidArgumentError("a rollback request needs an id, a filter and no decision");
    }
    RollbackRequest r = request;
    r.requested_at = now;
    QUELL_RETURN_IF_ERROR(AppendRequest(txn, r, r.requested_by));
    *out = std::move(r);
    return absl::OkStatus();
  };
}

ledger::Mutation Rollback(RollbackRequest request, std::vector<core::Mitigation> targets,
                          std::shared_ptr<RollbackRequest> out, absl::Duration pending_ttl,
                          WhyHeldFn why_held) {
  return [request = std::move(request), targets = std::move(targets), out = std::move(out),
          pending_ttl, why_held = std::move(why_held)](ledger::Txn& txn,
                                                       absl::Time now) mutable -> absl::Status {
    if (request.id.empty() || request.filter.empty()) {
      return absl::InvalidArgumentError("a rollback needs an id and a filter");
    }
    RollbackRequest r = request;
    r.requested_at = now;
    RollbackResult result;
    // Revokes in place: the ledger runs a mutation once.
    QUELL_RETURN_IF_ERROR(RevokeMatching(txn, targets, r.filter,
                                         absl::StrCat("rollback ", r.id, ": ", r.reason),
                                         r.requested_by, now, pending_ttl, why_held, &result));
    r.matched = result.matched;  // as the transaction found them
    r.entities = result.entities;
    r.extensions = result.restored;
    r.revoked = result.revoked;
    r.restored = result.restored;
    r.state = "done";
    r.decided_by = r.requested_by;
    r.decided_at = now;
    QUELL_RETURN_IF_ERROR(AppendRequest(txn, r, r.requested_by));
    *out = std::move(r);
    return absl::OkStatus();
  };
}

ledger::Mutation RollbackRequests::Decide(std::string id, bool approve, std::string note,
                                          std::string reviewer,
                                          std::vector<core::Mitigation> targets,
                                          absl::Duration pending_ttl,
                                          std::shared_ptr<RollbackRequest> out,
                                          WhyHeldFn why_held) {
  return
      [this, id = std::move(id), approve, note = std::move(note), reviewer = std::move(reviewer),
       targets = std::move(targets), pending_ttl, out = std::move(out),
       why_held = std::move(why_held)](ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
        RollbackRequest r;
        {
          std::lock_guard<std::mutex> lock(mu_);
          auto it = requests_.find(id);
          if (it == requests_.end()) {
            return absl::NotFoundError(absl::StrCat("no rollback request ", id));
          }
          const Entry& e = it->second;
          r = e.tentative && e.tentative->first < txn.NextSeq() ? e.tentative->second : e.committed;
        }
        if (r.state != "pending_approval") {
          return absl::FailedPreconditionError(
              absl::StrCat("rollback request ", id, " is already ", r.state));
        }
        if (Expired(r, pending_ttl, now)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "rollback request ", id, " expired at ",
              core::FormatRfc3339(r.requested_at + pending_ttl), "; request it again"));
        }
        QUELL_RETURN_IF_ERROR(safeguards::CheckReviewer(reviewer, r.requested_by, {}));
        // One decision per request across nodes too: this node's view of the request follows
        // the change feed, which may not have brought another node's decision yet; a marker
        // the transaction reads (the chain-head lock orders it after that decision) does.
        QUELL_ASSIGN_OR_RETURN(
            bool first, ClaimMarker(txn, kRollbackMarkers, absl::StrCat(id, "/decided"), now));
        if (!first) {
          return absl::FailedPreconditionError(
              absl::StrCat("rollback request ", id, " is already decided"));
        }
        r.decided_by = reviewer;
        r.decided_at = now;
        r.note = note;
        if (approve) {
          RollbackResult result;
          const std::string why = absl::StrCat("rollback ", r.id, ": ", r.reason, " (requested by ",
                                               r.requested_by, ", approved by ", reviewer, ")");
          QUELL_RETURN_IF_ERROR(RevokeMatching(txn, targets, r.filter, why, reviewer, now,
                                               pending_ttl, why_held, &result));
          // What it matched when it ran, as for a rollback run at once: the request's own
          // figures were the evidence for approving it (Reviews showed them).
          r.matched = result.matched;
          r.entities = result.entities;
          r.extensions = result.restored;
          r.revoked = result.revoked;
          r.restored = result.restored;
          r.state = "done";
        } else {
          r.state = "rejected";
        }
        const int64_t seq = txn.NextSeq();
        QUELL_RETURN_IF_ERROR(AppendRequest(txn, r, reviewer));
        {
          std::lock_guard<std::mutex> lock(mu_);
          requests_[id].tentative.emplace(seq, r);
        }
        *out = r;
        return absl::OkStatus();
      };
}

}  // namespace quell::workflow
