// Turning evaluated detections into ledger state: the one mutation behind
// POST /v1/detections (and, later, bulk imports and rule-triggered detections).
//
// For each detection, inside the ledger transaction and so in ledger order:
//   1. (source, id) already stored -> a duplicate: the stored reply is returned and
//      nothing changes (also after a restart);
//   2. each proposal is escalated against the entity's history (mitigations from the
//      same policy within the escalation window, shadow ones excluded), then created
//      or, when the same action is already live on the entity, extended (the later
//      expiry wins) — shadow policies record `shadow` mitigations, delayed ones
//      `scheduled` mitigations that the expiry scheduler activates;
//   3. with safeguards (a non-empty SafeguardContext), each non-shadow proposal
//      is screened first (protected entities, immunity, breakers; see safeguards.h): a
//      held one becomes pending_approval, its reason saying why;
//   4. the detection and its reply are stored, for idempotency, timelines and backtests.
// A repeat of an earlier item of the same batch is a duplicate of it. Items that earn no
// decision whatever the ledger holds (no proposals, computed without ledger state) are
// stored first, by one PutNewDetections that is also their duplicate check; the others
// are checked with one GetDetectionReplies, decided in order, then stored by one
// PutDetections. The factory prepares what needs no ledger state (stored rows, reply
// heads) on the caller's thread, so the commit thread only decides and writes.
//
// Thread-safety: the factory is thread-safe; the mutation runs on the commit thread and
// fills `out`, which the caller reads after the Completion.
#ifndef QUELL_WORKFLOW_DECISIONS_H_
#define QUELL_WORKFLOW_DECISIONS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "core/action.h"
#include "core/mitigation.h"
#include "engine/engine.h"
#include "ledger/ledger.h"
#include "policy/policy_set.h"

namespace quell::workflow {

struct DetectionWork {
  engine::Detection detection;
  std::vector<engine::Proposal> proposals;
  std::string json;            // the detection as stored (normalised JSON)
  size_t json_head_bytes = 0;  // as in ledger::StoredDetection
  // With a ProposeFn: `proposals` were computed without reading any ledger state (no
  // active(), prior() or list whose answer could change), so they are what `propose`
  // would compute, and it is not called for this item.
  bool proposals_final = false;
};

// One decision, for metrics (the reply JSON has the full form).
struct DecisionSummary {
  std::string policy;
  std::string action;
  core::MitigationState state = core::MitigationState::kActive;
};

struct DetectionOutcome {
  bool duplicate = false;
  std::string reply;  // the per-item reply JSON (the stored one for a duplicate)
  std::vector<DecisionSummary> decisions;  // made now (empty for a duplicate)
};

class Safeguards;
// What the decision path screens proposals with. An empty context means no safeguards
// (benchmarks compare both; production always passes one).
struct SafeguardContext {
  Safeguards* safeguards = nullptr;              // borrowed; must outlive the mutation
  std::shared_ptr<const policy::PolicySet> set;  // the set the proposals came from
};

// Computes a detection's proposals inside the transaction, just before the detection is
// decided, so that its reads (active(), prior(), lists) see every decision before it,
// those of earlier items of the same batch included. For quell import, whose outcome
// must depend on the file's order alone, not on how it is cut into batches.
using ProposeFn = absl::AnyInvocable<std::vector<engine::Proposal>(
    ledger::Txn& txn, const engine::Detection& d, absl::Time now)>;

//! The ProposeFn that evaluates `set` in the transaction: active() and prior() read the
//! Txn (so they see the batch's earlier decisions; active() as the index answers it: an
//! active mitigation not yet expired), in_list() the Txn's lists, and count()/distinct()
//! read 0, as for every detection (counters are the events path's).
ProposeFn EvaluateInTxn(std::shared_ptr<const policy::PolicySet> set);

//! Applies a batch of detections in one step of one transaction. `out` gets one outcome
//! per item, in order. `actor` is the submitting key id; `received_at` is stored. Every
//! proposal is screened through `safeguards` (none if empty). With `propose`, each new
//! item's proposals are computed by it (DetectionWork's proposals are ignored unless
//! proposals_final); duplicates are not evaluated.
ledger::Mutation ApplyDetections(std::vector<DetectionWork> work,
                                 std::shared_ptr<const core::ActionCatalog> catalog,
                                 std::string actor,
                                 std::shared_ptr<std::vector<DetectionOutcome>> out,
                                 SafeguardContext safeguards = {}, ProposeFn propose = nullptr);

//! The entity reads ApplyDetections will make deciding `work` from `now` on (an
//! escalating proposal's count over its window, otherwise the entity's live mitigations),
//! one per entity, for ledger::Store::PrefetchEntities. Proposals that are not final are
//! included as they are: a read ahead that is not used costs only itself.
std::vector<ledger::EntityRead> ReadsAhead(const std::vector<DetectionWork>& work, absl::Time now);

//! The escalation count of `p` on committed data (for dry runs: policies/test, backtest):
//! the same hits ApplyDetections counts inside its transaction.
absl::StatusOr<int64_t> PriorHitsCommitted(ledger::Store& store, const engine::Proposal& p,
                                           absl::Time now);

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_DECISIONS_H_
