#include "workflow/decisions.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::workflow {
namespace {

using core::MitigationState;

// `policy` is the deciding one: the mitigation may be another policy's, which this decision
// extended (the same entity and action), and carries that one's name.
void AppendDecision(const core::Mitigation& m, std::string_view policy, std::string_view reason,
                    std::string* out) {
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
  core::AppendJsonString(policy, out);
  out->append(",\"reason\":");
  core::AppendJsonString(reason, out);
  out->append("}");
}

// The Txn the decision mutation works through: forwards to the ledger's, and remembers
// what it read about an entity until a write could change it, so that the escalation
// count, the safeguards' and the create-or-extend step's live reads read the entity once.
// An entity is read whole (EntityMitigations: its live mitigations and, for a count,
// those created since the window's start), and CountMitigations and FindLive are answered
// from that. A mitigation append forgets its entity; a savepoint rollback forgets all.
// Confined to the commit thread, like the Txn it wraps (borrowed).
class CachingTxn final : public ledger::Txn {
 public:
  explicit CachingTxn(ledger::Txn& inner) : inner_(inner) {}

  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return inner_.GetMitigation(id);
  }
  absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                         std::string_view action) override {
    // Any view holds every live mitigation; a live read alone asks for no other.
    QUELL_ASSIGN_OR_RETURN(const EntityView* view, View(entity, absl::InfiniteFuture()));
    std::vector<core::Mitigation> live;
    for (const core::Mitigation& m : view->mitigations) {
      if (m.action == action && core::IsLive(m.state)) live.push_back(m);
    }
    // As the store orders them.
    std::sort(live.begin(), live.end(),
              [](const core::Mitigation& a, const core::Mitigation& b) { return a.id < b.id; });
    return live;
  }
  absl::StatusOr<std::optional<ledger::IdempotencyRecord>> GetIdempotency(
      std::string_view scope, std::string_view key) override {
    return inner_.GetIdempotency(scope, key);
  }
  absl::Status PutIdempotency(const ledger::IdempotencyRecord& record) override {
    return inner_.PutIdempotency(record);
  }
  absl::StatusOr<ledger::Change> Append(ledger::Change change,
                                        const core::Mitigation* mitigation) override {
    if (mitigation != nullptr) entities_.erase(AV(mitigation->entity.str()));
    return inner_.Append(std::move(change), mitigation);
  }
  int64_t NextSeq() const override { return inner_.NextSeq(); }
  absl::StatusOr<std::optional<ledger::StoredDetection>> GetDetection(
      std::string_view source, std::string_view id) override {
    return inner_.GetDetection(source, id);
  }
  absl::Status PutDetection(const ledger::StoredDetection& d) override {
    return inner_.PutDetection(d);
  }
  absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
      const std::vector<ledger::DetectionKey>& keys) override {
    return inner_.GetDetectionReplies(keys);
  }
  absl::Status PutDetections(const std::vector<ledger::StoredDetection>& ds) override {
    return inner_.PutDetections(ds);
  }
  absl::StatusOr<std::vector<bool>> PutNewDetections(
      const std::vector<ledger::StoredDetection>& ds) override {
    return inner_.PutNewDetections(ds);
  }
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    QUELL_ASSIGN_OR_RETURN(const EntityView* view, View(entity, since));
    int64_t n = 0;
    for (const core::Mitigation& m : view->mitigations) {
      if (m.created_at >= since && (policy.empty() || m.policy == policy) &&
          (action.empty() || m.action == action) && core::CountsAsPrior(m, exclude_shadow)) {
        ++n;
      }
    }
    return n;
  }
  absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(const core::Entity& entity,
                                                                  absl::Time since) override {
    QUELL_ASSIGN_OR_RETURN(const EntityView* view, View(entity, since));
    std::vector<core::Mitigation> out;
    for (const core::Mitigation& m : view->mitigations) {
      if (m.created_at >= since || core::IsLive(m.state)) out.push_back(m);
    }
    return out;
  }
  absl::StatusOr<int64_t> NextPolicyVersion() override { return inner_.NextPolicyVersion(); }
  absl::StatusOr<bool> ListHas(std::string_view name, const core::Entity& entity) override {
    return inner_.ListHas(name, entity);
  }
  absl::Status Savepoint() override { return inner_.Savepoint(); }
  absl::Status RollbackToSavepoint() override {
    entities_.clear();
    return inner_.RollbackToSavepoint();
  }
  absl::Status ReleaseSavepoint() override { return inner_.ReleaseSavepoint(); }
  absl::Status Commit() override { return inner_.Commit(); }
  void Rollback() override {
    entities_.clear();
    inner_.Rollback();
  }

 private:
  // An entity's mitigations that are live or were created at or after `since`.
  struct EntityView {
    absl::Time since;
    std::vector<core::Mitigation> mitigations;
  };
  // The entity's view covering `since`, read if it has none that does.
  absl::StatusOr<const EntityView*> View(const core::Entity& entity, absl::Time since) {
    auto it = entities_.find(AV(entity.str()));
    if (it != entities_.end() && it->second.since <= since) return &it->second;
    QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> read,
                           inner_.EntityMitigations(entity, since));
    EntityView& v = entities_[AV(entity.str())];
    v.since = since;
    v.mitigations = std::move(read);
    return &v;
  }

  ledger::Txn& inner_;
  absl::flat_hash_map<std::string, EntityView> entities_;
};

// What the caller's thread prepares for each detection, so that the commit thread only
// decides and writes: the stored row (all but received_at and reply) and the reply's
// fixed head.
struct Prepared {
  engine::Detection detection;
  std::vector<engine::Proposal> proposals;
  bool proposals_final = false;
  ledger::StoredDetection stored;
  std::string reply_head;  // {"id":..,"source":..,"status":"accepted","decisions":[
};

std::vector<Prepared> Prepare(std::vector<DetectionWork> work) {
  std::vector<Prepared> out(work.size());
  for (size_t i = 0; i < work.size(); ++i) {
    DetectionWork& w = work[i];
    Prepared& p = out[i];
    const engine::Detection& d = w.detection;
    ledger::AppendAcceptedReplyHead(d.source, d.id, &p.reply_head);
    ledger::StoredDetection& sd = p.stored;
    sd.source = d.source;
    sd.id = d.id;
    sd.type = d.type;
    sd.entity = d.entity.str();
    sd.score = d.score;
    sd.observed_at = d.observed_at;
    sd.batch = d.batch;
    sd.json = std::move(w.json);
    sd.json_head_bytes = w.json_head_bytes;
    p.detection = std::move(w.detection);
    p.proposals = std::move(w.proposals);
    p.proposals_final = w.proposals_final;
  }
  return out;
}

// The actions a hit of `p` may have been recorded on: its own and its escalation steps'.
std::vector<std::string_view> EscalationActions(const engine::Proposal& p) {
  std::vector<std::string_view> actions = {p.action};
  for (const engine::EscalationStep& step : p.escalate) {
    if (std::find(actions.begin(), actions.end(), step.action) == actions.end()) {
      actions.push_back(step.action);
    }
  }
  return actions;
}

// The hits of `policy` recorded after their creation on those of `ms` of `actions`
// created at or after `since` that count as prior offences (core::CountsAsPrior: live, or
// expired after they were enforced; not one a person undid): after its first detection
// if a policy created it (counted as a creation), all of them on a manual one (created
// without detections, not counted as any policy's creation). Another policy's hits count
// for that policy. Each detection once: a merged mitigation's hits are on the one that
// absorbed it too.
int64_t LaterHitsIn(const std::vector<core::Mitigation>& ms, std::string_view policy,
                    const std::vector<std::string_view>& actions, absl::Time since) {
  absl::flat_hash_set<std::string_view> hits;
  for (const core::Mitigation& m : ms) {
    if (m.created_at < since || !core::CountsAsPrior(m, /*exclude_shadow=*/true) ||
        std::find(actions.begin(), actions.end(), m.action) == actions.end()) {
      continue;
    }
    for (size_t i = m.policy.empty() ? 0 : 1; i < m.detections.size(); ++i) {
      if (core::DetectionPolicy(m, i) == policy) hits.insert(m.detections[i]);
    }
  }
  return static_cast<int64_t>(hits.size());
}

// Escalation counts hits: every detection that earned a decision from this policy on this
// entity within the window. A hit either created a mitigation or was recorded on a live
// one (same action: extended instead of stacked, whichever policy created it), so the
// hits are the mitigations created in the window plus this policy's later detections
// recorded on those created in it, live or expired after enforcement (a short mitigation
// that ended does not take the hits it took with it).
//
// A shadow policy's hits are its shadow mitigations (each recorded on its own, never
// live): counted, so that its record shows the escalations enforcing it would make.
absl::StatusOr<int64_t> PriorHits(ledger::Txn& txn, const engine::Proposal& p, absl::Time now) {
  const absl::Time since = now - p.escalation_window;
  if (p.shadow) {
    return txn.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/false);
  }
  QUELL_ASSIGN_OR_RETURN(
      int64_t hits, txn.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/true));
  QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> ms, txn.EntityMitigations(p.entity, since));
  return hits + LaterHitsIn(ms, p.policy, EscalationActions(p), since);
}

// Completes p.stored with its reply (the reply head, decisions appended) and time.
void CompleteStored(Prepared& p, std::string reply, absl::Time now) {
  reply += "]}";
  p.stored.received_at = now;
  p.stored.reply = std::move(reply);
}

// Decides one new detection: fills `out` and completes p.stored (written later, with
// the rest of the batch's).
absl::Status ApplyOne(ledger::Txn& txn, Prepared& pr, const core::ActionCatalog& catalog,
                      const std::string& actor, const SafeguardContext& sg, absl::Time now,
                      DetectionOutcome* out) {
  const engine::Detection& d = pr.detection;
  std::string reply = std::move(pr.reply_head);
  for (const engine::Proposal& p : pr.proposals) {
    int64_t prior = 0;
    if (!p.escalate.empty()) {
      QUELL_ASSIGN_OR_RETURN(prior, PriorHits(txn, p, now));
    }
    CreateRequest req;
    req.entity = p.entity;
    req.action = engine::EscalatedAction(p, prior);
    req.ttl = engine::EscalatedTtl(p, prior);
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
        // A delayed decision keeps its start (approval schedules it, when still ahead):
        // the delay is there so that fraudsters cannot tell what gave them away.
        req.state = MitigationState::kPendingApproval;
        req.pending_ttl = sg.safeguards->options().pending_ttl;
        req.reason = absl::StrCat(req.reason, "; held for approval: ", hold.reason);
      }
    }
    QUELL_ASSIGN_OR_RETURN(CreateResult r, CreateOrExtend(txn, req, catalog, now));
    AppendDecision(r.mitigation, p.policy, req.reason, &reply);
    out->decisions.push_back({p.policy, r.mitigation.action, r.mitigation.state});
  }
  CompleteStored(pr, std::move(reply), now);
  out->reply = pr.stored.reply;
  return absl::OkStatus();
}

// The policy environment of EvaluateInTxn. Confined to the commit thread, like the Txn.
class TxnEnvironment final : public policy::Environment {
 public:
  TxnEnvironment(ledger::Txn& txn, absl::Time now) : txn_(txn), now_(now) {}
  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view list, std::string_view entity) override {
    auto e = core::Entity::Parse(entity);  // entries are kept in the normal form
    if (!e.ok()) return false;
    auto has = txn_.ListHas(list, *e);
    return has.ok() && *has;
  }
  bool Active(std::string_view entity, std::string_view action) override {
    auto e = core::Entity::Parse(entity);
    if (!e.ok()) return false;
    auto live = txn_.FindLive(*e, action);
    if (!live.ok()) return false;
    for (const core::Mitigation& m : *live) {
      if (m.state == core::MitigationState::kActive && m.expires_at > now_) return true;
    }
    return false;
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override {
    auto e = core::Entity::Parse(entity);
    if (!e.ok()) return 0;
    auto n = txn_.CountMitigations(*e, "", action, now_ - window, /*exclude_shadow=*/true);
    return n.ok() ? *n : 0;
  }

 private:
  ledger::Txn& txn_;
  const absl::Time now_;
};

}  // namespace

ProposeFn EvaluateInTxn(std::shared_ptr<const policy::PolicySet> set) {
  return [set = std::move(set)](ledger::Txn& txn, const engine::Detection& d, absl::Time now) {
    TxnEnvironment env(txn, now);
    return engine::Evaluate(*set, d, env, now).proposals;
  };
}

absl::StatusOr<int64_t> PriorHitsCommitted(ledger::Store& store, const engine::Proposal& p,
                                           absl::Time now) {
  const absl::Time since = now - p.escalation_window;
  if (p.shadow) {  // as in PriorHits
    return store.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/false);
  }
  QUELL_ASSIGN_OR_RETURN(
      int64_t hits, store.CountMitigations(p.entity, p.policy, "", since, /*exclude_shadow=*/true));
  ledger::MitigationQuery q;  // as in PriorHits, whichever policy made them
  q.entity = p.entity;
  q.limit = 1000;
  QUELL_ASSIGN_OR_RETURN(ledger::MitigationPage page, store.ListMitigations(q));
  return hits + LaterHitsIn(page.mitigations, p.policy, EscalationActions(p), since);
}

std::vector<ledger::EntityRead> ReadsAhead(const std::vector<DetectionWork>& work, absl::Time now) {
  std::vector<ledger::EntityRead> reads;
  absl::flat_hash_map<absl::string_view, size_t> index;  // entity -> its read
  for (const DetectionWork& w : work) {
    for (const engine::Proposal& p : w.proposals) {
      // As ApplyOne reads: PriorHits counts from the window's start; the safeguards and
      // create-or-extend read the live ones (any view holds them).
      const absl::Time since =
          p.escalate.empty() ? absl::InfiniteFuture() : now - p.escalation_window;
      auto [it, added] = index.try_emplace(AV(p.entity.str()), reads.size());
      if (added) {
        reads.push_back({p.entity, since});
      } else {
        reads[it->second].since = std::min(reads[it->second].since, since);
      }
    }
  }
  return reads;
}

ledger::Mutation ApplyDetections(std::vector<DetectionWork> work,
                                 std::shared_ptr<const core::ActionCatalog> catalog,
                                 std::string actor,
                                 std::shared_ptr<std::vector<DetectionOutcome>> out,
                                 SafeguardContext sg, ProposeFn propose) {
  // Runs on the caller's thread: everything that does not depend on ledger state.
  std::vector<Prepared> items = Prepare(std::move(work));
  return [items = std::move(items), catalog = std::move(catalog), actor = std::move(actor),
          out = std::move(out), sg = std::move(sg), propose = std::move(propose)](
             ledger::Txn& ledger_txn, absl::Time now) mutable -> absl::Status {
    CachingTxn txn(ledger_txn);
    out->assign(items.size(), DetectionOutcome{});
    // A repeat within the batch is a duplicate of its first occurrence, as it would be had
    // that been stored just before; it is answered once that one is.
    std::vector<size_t> repeat_of(items.size(), SIZE_MAX);
    if (items.size() > 1) {
      absl::flat_hash_map<std::pair<absl::string_view, absl::string_view>, size_t> first;
      first.reserve(items.size());
      for (size_t i = 0; i < items.size(); ++i) {
        auto [it, inserted] =
            first.try_emplace({AV(items[i].stored.source), AV(items[i].stored.id)}, i);
        if (!inserted) repeat_of[i] = it->second;
      }
    }
    // Most detections earn nothing whatever the ledger holds (no proposal, and proposals
    // that need no ledger state to compute): their rows are complete now, and writing them
    // with PutNewDetections is also their duplicate check. The others are checked, then
    // decided in order, then written.
    std::vector<size_t> quiet, decide;
    for (size_t i = 0; i < items.size(); ++i) {
      if (repeat_of[i] != SIZE_MAX) continue;
      const bool final = !propose || items[i].proposals_final;
      (final && items[i].proposals.empty() ? quiet : decide).push_back(i);
    }
    std::vector<size_t> check;  // items whose stored reply is read
    if (!quiet.empty()) {
      std::vector<ledger::StoredDetection> rows;
      rows.reserve(quiet.size());
      for (size_t i : quiet) {
        Prepared& p = items[i];
        CompleteStored(p, std::move(p.reply_head), now);
        rows.push_back(std::move(p.stored));
      }
      QUELL_ASSIGN_OR_RETURN(std::vector<bool> written, txn.PutNewDetections(rows));
      for (size_t k = 0; k < quiet.size(); ++k) {
        if (written[k]) {
          (*out)[quiet[k]].reply = std::move(rows[k].reply);
        } else {
          check.push_back(quiet[k]);
        }
      }
    }
    const size_t quiet_stored = check.size();
    check.insert(check.end(), decide.begin(), decide.end());
    std::vector<ledger::DetectionKey> keys;
    keys.reserve(check.size());
    for (size_t i : check) keys.push_back({items[i].detection.source, items[i].detection.id});
    std::vector<std::optional<std::string>> stored;
    if (!keys.empty()) {
      QUELL_ASSIGN_OR_RETURN(stored, txn.GetDetectionReplies(keys));
    }
    std::vector<ledger::StoredDetection> rows;
    rows.reserve(decide.size());
    for (size_t k = 0; k < check.size(); ++k) {
      const size_t i = check[k];
      DetectionOutcome& o = (*out)[i];
      if (stored[k]) {
        o.duplicate = true;
        o.reply = *std::move(stored[k]);
        continue;
      }
      if (k < quiet_stored) return absl::InternalError("a detection neither written nor stored");
      if (propose && !items[i].proposals_final) {
        items[i].proposals = propose(txn, items[i].detection, now);
      }
      QUELL_RETURN_IF_ERROR(ApplyOne(txn, items[i], *catalog, actor, sg, now, &o));
      rows.push_back(std::move(items[i].stored));
    }
    for (size_t i = 0; i < items.size(); ++i) {
      if (repeat_of[i] == SIZE_MAX) continue;
      (*out)[i].duplicate = true;
      (*out)[i].reply = (*out)[repeat_of[i]].reply;
    }
    return txn.PutDetections(rows);
  };
}

}  // namespace quell::workflow
