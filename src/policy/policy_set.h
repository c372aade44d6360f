// Policy sets: the YAML file analysts write (SPEC "Policies"), loaded, validated and
// compiled as a whole into an immutable PolicySet.
//
//   policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(yaml_text, /*version=*/7);
//   if (r.set == nullptr) for (const auto& e : r.errors) print(e.ToString());  // "40:12: ..."
//
// Top-level keys: `actions` (the catalog; absent -> core::ActionCatalog::Default()),
// `counters`, `lists`, `breakers`, `policies`. Every key of every mapping is checked:
// an unknown key is an error at its position, with a suggestion ("unknown key `wehn` —
// did you mean `when`?"). A set with any error is rejected whole, and every error found
// is reported (positions are 1-based line:column inside the file; `when` type errors
// point inside the expression).
//
// Policy keys:
//   id        unique, [a-z0-9][a-z0-9_-]{0,63}                               (required)
//   mode      enforce | shadow | off                                          (default enforce)
//   on        `detection` or an event type ([a-z][a-z0-9_]{0,63})             (required)
//   when      an expression (expr.h) typed against Schema::Detection() or ::Event()
//             (required: a policy that matches everything must say `when: true`)
//   action    an action of the catalog                                        (required)
//   ttl       a duration; default the action's ttl
//   rollout   percentage 0-100 of entities the policy applies to              (default 100)
//   escalate  [{after: N, action: A}], `after` strictly ascending and >= 1
//   escalate_window  duration within which prior mitigations count          (default 90d)
//   related   true (all related entities) or a list of entity types; detection policies
//   delay     a duration (fixed), or {min: D, max: D} (random, drawn deterministically)
//   target    event policies: `entity` (default) or `attrs.<name>`; detection
//             policies: only `entity`
//   description  free text for people
//
// Thread-safety: PolicySet is immutable after loading and safe to share between threads
// as std::shared_ptr<const PolicySet>. The load functions are thread-safe.
#ifndef QUELL_POLICY_POLICY_SET_H_
#define QUELL_POLICY_POLICY_SET_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/action.h"
#include "policy/expr.h"

namespace quell::policy {

enum class Mode : uint8_t { kEnforce, kShadow, kOff };
std::string_view ModeName(Mode mode);

// A declared velocity counter (computed by the counters module from events).
struct CounterDef {
  std::string name;
  std::string on;                         // event type
  std::string key;                        // "entity" or "attrs.<name>"
  std::string distinct;                   // "" for a plain count; else "entity" or "attrs.<name>"
  std::vector<std::string> window_names;  // as written ("1m", "1h")
  std::vector<absl::Duration> windows;    // parsed, same order
  int line = 0;
};

// A named entity list. `kind`: protected | allow | deny | watch (default watch, or
// protected when `protected: true`).
struct ListDef {
  std::string name;
  bool is_protected = false;
  std::string kind;
  int line = 0;
};

// A blast-radius breaker (declared and validated here, enforced by the safeguards).
struct BreakerDef {
  enum class Scope : uint8_t { kGlobal, kPolicy, kAction, kSource };
  std::string name;
  Scope scope = Scope::kGlobal;
  std::string scope_value;  // the policy id, action name or source name
  int64_t limit = 0;        // mitigations per window before the breaker opens
  absl::Duration window;
  // Optional: open when the window's count exceeds factor x the average count of the same
  // window over the trailing baseline (e.g. 7d), and also at least `limit`.
  struct Relative {
    double factor = 0;
    absl::Duration baseline;
  };
  std::optional<Relative> relative;
  int line = 0;
};
std::string_view BreakerScopeName(BreakerDef::Scope scope);

struct EscalationStep {
  int64_t after = 0;   // prior mitigations from the same policy within the window
  std::string action;  // the action the next hit earns
  // How long that action lasts: the step's own `ttl`, else the action's catalog default
  // (not the policy's ttl, which is its own action's).
  absl::Duration ttl;
};

struct Policy {
  std::string id;
  Mode mode = Mode::kEnforce;
  std::string on;             // "detection" or an event type
  bool on_detection = false;  // on == "detection"
  std::string when;           // source text, as the expression compiler saw it
  std::shared_ptr<const Program> program;
  std::string action;
  absl::Duration ttl;  // the policy's ttl, else the action's default
  bool ttl_explicit = false;
  int rollout = 100;                     // percent of entities (0..100)
  std::vector<EscalationStep> escalate;  // strictly ascending by `after`
  absl::Duration escalate_window = absl::Hours(24 * 90);
  bool related_all = false;                // related: true
  std::vector<std::string> related_types;  // related: [device, ip]
  absl::Duration delay_min;                // both zero: no delay; equal: fixed delay
  absl::Duration delay_max;
  std::string target_attr;  // event policies: "" = the event's entity, else attrs.<this>
  std::string description;
  bool uses_evidence = false;  // `when` may read detection.evidence / event.attrs
  int line = 0;                // where the policy starts in the file

  bool propagates() const { return related_all || !related_types.empty(); }
};

// A loaded, compiled policy set. Immutable; see the file comment.
class PolicySet {
 public:
  int64_t version() const { return version_; }
  // The YAML text it was loaded from, byte for byte.
  const std::string& yaml() const { return yaml_; }
  // Policies in file order.
  const std::vector<Policy>& policies() const { return policies_; }
  // nullptr if no policy has that id.
  const Policy* Find(std::string_view id) const;
  const core::ActionCatalog& catalog() const { return *catalog_; }
  const std::shared_ptr<const core::ActionCatalog>& catalog_ptr() const { return catalog_; }
  const std::vector<CounterDef>& counters() const { return counters_; }
  const std::vector<ListDef>& lists() const { return lists_; }
  const std::vector<BreakerDef>& breakers() const { return breakers_; }
  // `detection_types:` — the abuse types detectors may send. Empty: any well-formed type.
  const std::vector<std::string>& detection_types() const { return detection_types_; }
  //! True if `type` is declared, or if the set declares no types at all.
  bool KnowsDetectionType(std::string_view type) const;
  //! Why a detection of `type` is refused (`unknown detection type "x"; policy set v3
  //! declares: a, b`; "the policy set" for an unpublished one, version 0), or "" if
  //! KnowsDetectionType. One wording for every intake: the
  //! server's routes, and `quell import` into a data directory or as a dry run.
  std::string UnknownDetectionTypeError(std::string_view type) const;
  // The declarations `when` expressions were compiled against.
  const Declarations& declarations() const { return declarations_; }

  // Indices into policies() of the `on: detection` policies with mode enforce or shadow
  // that can match a detection of `type` (using Program::detection_types()), in file
  // order. Policies without a type guard are included for every type.
  absl::Span<const uint32_t> DetectionCandidates(std::string_view type) const;
  // Every `on: detection` policy with mode enforce or shadow, in file order.
  absl::Span<const uint32_t> DetectionPolicies() const { return detection_all_; }
  // Indices of the `on: <event_type>` policies with mode enforce or shadow, in file order.
  absl::Span<const uint32_t> EventCandidates(std::string_view event_type) const;

 private:
  friend class PolicySetBuilder;
  PolicySet() = default;

  int64_t version_ = 0;
  std::string yaml_;
  std::vector<Policy> policies_;
  absl::flat_hash_map<std::string, uint32_t> by_id_;
  std::shared_ptr<const core::ActionCatalog> catalog_;
  std::vector<CounterDef> counters_;
  std::vector<ListDef> lists_;
  std::vector<BreakerDef> breakers_;
  std::vector<std::string> detection_types_;
  Declarations declarations_;
  std::vector<uint32_t> detection_all_;
  std::vector<uint32_t> detection_unguarded_;
  absl::flat_hash_map<std::string, std::vector<uint32_t>> detection_by_type_;
  absl::flat_hash_map<std::string, std::vector<uint32_t>> event_by_type_;
};

// The structured load result: a set, or every error found (in file order).
struct LoadResult {
  std::shared_ptr<const PolicySet> set;  // null iff !errors.empty()
  std::vector<Diagnostic> errors;
};

// Loads a policy set. Never throws; never crashes on any input (fuzzed).
LoadResult LoadPolicySetWithDiagnostics(std::string_view yaml, int64_t version);

// Like LoadPolicySetWithDiagnostics(); on failure kInvalidArgument whose message lists
// every error, one "line:column: message" per line.
absl::StatusOr<std::shared_ptr<const PolicySet>> LoadPolicySet(std::string_view yaml,
                                                               int64_t version);

// Largest accepted policy file.
inline constexpr size_t kMaxPolicySetBytes = 4 * 1024 * 1024;

}  // namespace quell::policy

#endif  // QUELL_POLICY_POLICY_SET_H_
