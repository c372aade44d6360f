// Policy-as-code test cases: YAML files of input detections/events, optional state, and
// the exact decisions expected. Used by `quell policy test FILE --cases DIR` and
// POST /v1/policies/test.
//
//   name: third bot hit earns suspend
//   now: 2026-03-01T12:00:00Z            # optional; default 2026-01-01T00:00:00Z
//   lists: {verified_artists: [artist:42]}          # optional list memberships
//   prior: [{entity: user:u1, policy: bot-model-high, count: 2}]   # optional history
//   active: [{entity: user:u1, action: flag}]       # optional active mitigations
//   counters: [{counter: plays, key: user:u1, value: 400}]  # optional counter values
//   detections:                          # as in SPEC POST /v1/detections
//     - {id: d1, source: bot-model, type: artificial_streaming, entity: user:u1,
//        score: 0.97, observed_at: 2026-03-01T11:59:00Z, evidence: {model: bot-v3},
//        related: [device:d1]}
//   events:                              # as in SPEC POST /v1/events (after detections)
//     - {type: login, entity: user:u2, at: ..., attrs: {ip: "ip:203.0.113.7"}}
//   expect:                              # exactly these decisions, in any order
//     - {entity: user:u1, action: suspend, state: active, policy: bot-model-high}
//
// Semantics. Inputs are evaluated in order (detections, then events) with
// engine::Evaluate / EvaluateEvent against an in-memory Environment built from the case.
// Each proposal's action is engine::EscalatedAction(proposal, prior), where prior is the
// case's `prior` count for (entity, policy) plus the decisions already made in this case
// for that pair (every input is taken to fall inside the escalation window). Its state is
// `shadow` for a shadow-mode policy, else `pending_approval` if the target is in a list
// declared `protected` (held for review, as the server's safeguard does), else `scheduled`
// if it has a delay, else `active`. Active decisions become visible to active() for the
// inputs that follow; prior() counts the mitigations they created (a second decision on
// the same entity and action extends the first, as on the server, and is not counted) and
// the `prior` entries, whose action is `action:` if given, else the policy's.
// Counters: count()/distinct() return the matching `counters` value for (counter, key)
// (any window), else 0.
//
// Thread-safety: functions are thread-safe; PolicyCase and CaseResult are plain values.
#ifndef QUELL_ENGINE_POLICY_CASES_H_
#define QUELL_ENGINE_POLICY_CASES_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "policy/policy_set.h"

namespace quell::engine {

struct CaseDecision {
  std::string entity;
  std::string action;
  std::string state;  // active | shadow | scheduled | pending_approval
  std::string policy;

  std::string ToString() const;  // "user:u1 suspend active (policy bot-model-high)"
  bool operator==(const CaseDecision&) const = default;
  bool operator<(const CaseDecision& o) const;
};

struct PolicyCase {
  struct Prior {
    std::string entity;
    std::string policy;
    std::string action;  // "" = the policy's action
    int64_t count = 0;
  };
  struct Active {
    std::string entity;
    std::string action;
  };
  struct CounterValue {
    std::string counter;
    std::string key;
    int64_t value = 0;
  };

  std::string name;
  absl::Time now = absl::FromUnixSeconds(1767225600);  // 2026-01-01T00:00:00Z
  std::vector<Detection> detections;
  std::vector<Event> events;
  std::map<std::string, std::vector<std::string>> lists;
  std::vector<Prior> prior;
  std::vector<Active> active;
  std::vector<CounterValue> counters;
  std::vector<CaseDecision> expect;
};

//! Parses one case file. kInvalidArgument lists every error as "line:column: message".
absl::StatusOr<PolicyCase> ParseCase(std::string_view yaml);

struct CaseResult {
  std::string file;  // the case file, if run from a file
  std::string name;
  bool passed = false;
  std::string error;                  // the case could not be parsed or run (then passed is false)
  std::vector<CaseDecision> actual;   // sorted
  std::vector<CaseDecision> missing;  // expected, not produced
  std::vector<CaseDecision> unexpected;  // produced, not expected
  int64_t eval_errors = 0;

  //! "PASS name" or "FAIL name" followed by the diff / error, one item per line.
  std::string Report() const;
};

//! Runs one parsed case against `set`.
CaseResult RunCase(const policy::PolicySet& set, const PolicyCase& c);

//! Parses and runs one case; a parse error gives a failed result carrying it.
CaseResult RunCaseText(const policy::PolicySet& set, std::string_view yaml,
                       std::string_view file = "");

struct CaseRun {
  std::vector<CaseResult> results;
  int passed = 0;
  int failed = 0;
};

//! Runs every *.yaml / *.yml file of `dir` (sorted by name, not recursive).
//! kNotFound if `dir` is not a readable directory; an empty directory is kNotFound too
//! (a test run that tests nothing should not pass silently).
absl::StatusOr<CaseRun> RunCaseDirectory(const policy::PolicySet& set, const std::string& dir);

}  // namespace quell::engine

#endif  // QUELL_ENGINE_POLICY_CASES_H_
