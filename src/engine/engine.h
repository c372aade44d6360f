// The decision engine: a detection (or, later, an event) plus the active policy set give
// proposed decisions. Pure: a deterministic function of (input, policy set, state seen
// through policy::Environment, clock), with no I/O of its own — so backtests and
// `policies/test` replay it exactly (ARCHITECTURE rule 4).
//
// What happens to a proposal afterwards (escalation against the entity's history,
// extend-instead-of-stack, safeguards, the ledger) is decided by the caller inside the
// ledger transaction, in ledger order; see workflow/decisions.h.
//
// Thread-safety: Evaluate is thread-safe for distinct Environments; PolicySet is
// immutable and shared.
#ifndef QUELL_ENGINE_ENGINE_H_
#define QUELL_ENGINE_ENGINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "core/entity.h"
#include "policy/expr.h"
#include "policy/policy_set.h"

namespace quell::engine {

// A validated detection (SPEC POST /v1/detections).
struct Detection {
  std::string id;      // idempotency key, unique per source
  std::string source;  // detector name, e.g. "bot-model-v3"
  std::string type;    // abuse type, e.g. "artificial_streaming"
  core::Entity entity;
  double score = 0;  // 0..1
  absl::Time observed_at;
  std::string evidence_json = "{}";   // a JSON object, as submitted
  std::vector<core::Entity> related;  // linked entities
  std::string batch;                  // import batch id, if any
};

// A raw event for real-time rules (SPEC POST /v1/events), for `on: <event type>` policies.
struct Event {
  std::string type;  // "play", "login", ...
  core::Entity entity;
  absl::Time at;
  std::string attrs_json = "{}";  // a JSON object, as submitted
  std::string id;                 // optional; seeds random delays with the entity and `at`
};

// {after: N, action: A}: prior mitigations from the same policy within the window, and the
// action the next hit earns. The policy set's own type.
using EscalationStep = policy::EscalationStep;

// What one policy proposes for one entity.
struct Proposal {
  std::string policy;          // policy id
  int64_t policy_version = 0;  // version of the set it belongs to
  core::Entity entity;         // the target: the detection's entity, a related one, or `target:`
  std::string action;          // before escalation
  absl::Duration ttl;          // the policy's ttl, else the action's default
  bool shadow = false;         // policy mode shadow: record, never enforce
  absl::Duration delay;        // enforcement delay (0 = none); random delays are drawn
                               // deterministically from (policy, entity, detection id)
  std::vector<EscalationStep> escalate;  // ascending by `after`
  absl::Duration escalation_window = absl::Hours(24 * 90);
  bool via_related = false;  // reached through `related` propagation
  std::string reason;        // for people: "policy bot-model-high (v3) matched detection d1"
};

// Evaluation outcome of one detection (or event) against a set. Proposals come in policy
// file order; within one policy, the subject entity first, then related entities in the
// detection's order (each entity at most once per policy).
struct Evaluation {
  std::vector<Proposal> proposals;
  int64_t policies_evaluated = 0;
  int64_t eval_errors = 0;    // `when` conditions that hit a runtime error (counted as false)
  int64_t target_errors = 0;  // event policies whose `target: attrs.x` was absent or not an
                              // entity when needed (a matched condition, or a partial
                              // rollout's membership): no proposal is made
  // The ids of the policies behind eval_errors (kind "condition") and target_errors
  // ("target"), one entry per error; they point into the evaluated set's policies.
  std::vector<std::pair<std::string_view, const std::string*>> errors;
};

//! Evaluates every policy of `set` with `on: detection` and mode enforce or shadow (off is
//! skipped) against `d`; applies rollout (a deterministic hash of policy id and entity:
//! the same entity is always in or out), target, related propagation and delay.
Evaluation Evaluate(const policy::PolicySet& set, const Detection& d, policy::Environment& env,
                    absl::Time now);

//! Evaluates every policy of `set` with `on: e.type` and mode enforce or shadow against
//! `e`. The proposal's entity is the event's entity, or the entity named by the attribute
//! of `target: attrs.x` (a string "type:id"). Rollout hashes the target entity; random
//! delays are drawn from (policy, target entity, event id or `at`).
Evaluation EvaluateEvent(const policy::PolicySet& set, const Event& e, policy::Environment& env,
                         absl::Time now);

//! Evaluate() without the detection.type index: every detection policy is evaluated.
//! Results are identical to Evaluate() except policies_evaluated; tests compare the two.
Evaluation EvaluateWithoutIndexForTest(const policy::PolicySet& set, const Detection& d,
                                       policy::Environment& env, absl::Time now);

//! Whether `entity` is inside a policy's rollout (percent 0..100): a stable hash of
//! "policy_id|entity" mod 100 < percent. Stable across processes and releases.
bool InRollout(std::string_view policy_id, std::string_view entity, int percent);

//! The enforcement delay for a policy with delay [min, max] on `entity`, drawn
//! deterministically from (policy id, entity, `seed`, usually the detection id); min when
//! min == max. Always within [min, max], with microsecond granularity.
absl::Duration DrawDelay(std::string_view policy_id, std::string_view entity, std::string_view seed,
                         absl::Duration min, absl::Duration max);

//! The action a proposal earns given `prior` mitigations from the same policy on that
//! entity within its escalation window: the last step with after <= prior, else the
//! proposal's own action.
const std::string& EscalatedAction(const Proposal& p, int64_t prior);
//! How long the action EscalatedAction names lasts: that step's ttl (its own `ttl:`, else
//! its action's catalog default), else the proposal's.
absl::Duration EscalatedTtl(const Proposal& p, int64_t prior);

}  // namespace quell::engine

#endif  // QUELL_ENGINE_ENGINE_H_
