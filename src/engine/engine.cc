#include "engine/engine.h"

#include <cstring>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/time.h"
#include "engine/internal/json_map.h"

namespace quell::engine {
namespace {

using policy::Mode;
using policy::Policy;
using policy::PolicySet;

// 64-bit FNV-1a, fixed forever: rollout membership must not change between releases.
constexpr uint64_t kFnvOffset = 1469598103934665603ULL;
constexpr uint64_t kFnvPrime = 1099511628211ULL;

uint64_t Fnv(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

// splitmix64's finaliser: spreads FNV's weak low bits before a modulo.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// RFC 3339 in UTC with microseconds when non-zero, exactly as core::FormatRfc3339 writes
// it, into `buf` (>= 32 bytes) without allocating. Returns an absent view for an
// infinite time.
std::string_view FormatTimeFast(absl::Time t, char* buf) { return core::FormatRfc3339To(t, buf); }

// One arena per thread: evidence and attrs are parsed into it at most once per call.
internal::JsonMapArena& Arena() {
  thread_local internal::JsonMapArena arena;
  return arena;
}

Proposal MakeProposal(const PolicySet& set, const Policy& p, const core::Entity& target,
                      std::string_view seed, bool via_related) {
  Proposal out;
  out.policy = p.id;
  out.policy_version = set.version();
  out.entity = target;
  out.action = p.action;
  out.ttl = p.ttl;
  out.shadow = p.mode == Mode::kShadow;
  if (p.delay_max > absl::ZeroDuration()) {
    out.delay = DrawDelay(p.id, target.str(), seed, p.delay_min, p.delay_max);
  }
  out.escalate = p.escalate;
  out.escalation_window = p.escalate_window;
  out.via_related = via_related;
  return out;
}

bool RelatedApplies(const Policy& p, const core::Entity& e) {
  if (p.related_all) return true;
  for (const std::string& t : p.related_types) {
    if (e.type() == t) return true;
  }
  return false;
}

template <typename Candidates>
Evaluation EvaluateDetection(const PolicySet& set, const Detection& d, policy::Environment& env,
                             const Candidates& candidates) {
  Evaluation out;
  char time_buf[32];
  absl::InlinedVector<std::string_view, 8> related;
  related.reserve(d.related.size());
  for (const core::Entity& r : d.related) related.push_back(r.str());

  policy::DetectionInput in;
  // Present-but-empty strings keep a non-null data() (see policy::DetectionInput).
  auto present = [](const std::string& s) { return std::string_view(s.c_str(), s.size()); };
  in.id = present(d.id);
  in.source = present(d.source);
  in.type = present(d.type);
  in.score = d.score;
  in.observed_at = FormatTimeFast(d.observed_at, time_buf);
  in.entity = d.entity.str();
  in.related = absl::MakeConstSpan(related.data(), related.size());
  bool evidence_parsed = false;
  const policy::Input input = policy::Input::ForDetection(in);

  const std::vector<Policy>& policies = set.policies();
  for (uint32_t index : candidates) {
    const Policy& p = policies[index];
    if (p.rollout < 100 && !InRollout(p.id, d.entity.str(), p.rollout)) continue;
    if (p.uses_evidence && !evidence_parsed) {
      Arena().Parse(d.evidence_json, &in.evidence);
      evidence_parsed = true;
    }
    ++out.policies_evaluated;
    policy::Result r = p.program->Eval(input, env);
    if (r.outcome == policy::Outcome::kError) {
      ++out.eval_errors;
      out.errors.emplace_back("condition", &p.id);
    }
    if (!r.matched()) continue;

    Proposal first = MakeProposal(set, p, d.entity, d.id, false);
    first.reason = absl::StrCat("policy ", p.id, " (v", set.version(), ") matched detection ", d.id,
                                " (", d.type, ", score ", d.score, ")");
    out.proposals.push_back(std::move(first));
    if (!p.propagates()) continue;
    size_t begin = out.proposals.size() - 1;
    for (const core::Entity& r : d.related) {
      if (!RelatedApplies(p, r)) continue;
      bool seen = false;
      for (size_t i = begin; i < out.proposals.size() && !seen; ++i) {
        seen = out.proposals[i].entity == r;
      }
      if (seen) continue;
      Proposal rp = MakeProposal(set, p, r, d.id, true);
      rp.reason = absl::StrCat("policy ", p.id, " (v", set.version(), ") matched detection ", d.id,
                               " on ", d.entity.str(), "; related ", AV(r.type()));
      out.proposals.push_back(std::move(rp));
    }
  }
  return out;
}

}  // namespace

bool InRollout(std::string_view policy_id, std::string_view entity, int percent) {
  if (percent >= 100) return true;
  if (percent <= 0) return false;
  uint64_t h = Fnv(kFnvOffset, policy_id);
  h = Fnv(h, "|");
  h = Fnv(h, entity);
  return Mix(h) % 100 < static_cast<uint64_t>(percent);
}

absl::Duration DrawDelay(std::string_view policy_id, std::string_view entity, std::string_view seed,
                         absl::Duration min, absl::Duration max) {
  if (max <= min) return min;
  uint64_t h = Fnv(kFnvOffset, policy_id);
  h = Fnv(h, "|");
  h = Fnv(h, entity);
  h = Fnv(h, "|");
  h = Fnv(h, seed);
  int64_t lo = absl::ToInt64Microseconds(min);
  uint64_t span = static_cast<uint64_t>(absl::ToInt64Microseconds(max) - lo);
  uint64_t pick = span == UINT64_MAX ? Mix(h) : Mix(h) % (span + 1);
  return absl::Microseconds(lo + static_cast<int64_t>(pick));
}

Evaluation Evaluate(const policy::PolicySet& set, const Detection& d, policy::Environment& env,
                    absl::Time now) {
  return EvaluateDetection(set, d, env, set.DetectionCandidates(d.type));
}

Evaluation EvaluateWithoutIndexForTest(const policy::PolicySet& set, const Detection& d,
                                       policy::Environment& env, absl::Time now) {
  return EvaluateDetection(set, d, env, set.DetectionPolicies());
}

Evaluation EvaluateEvent(const policy::PolicySet& set, const Event& e, policy::Environment& env,
                         absl::Time now) {
  Evaluation out;
  absl::Span<const uint32_t> candidates = set.EventCandidates(e.type);
  if (candidates.empty()) return out;
  char time_buf[32];
  policy::EventInput in;
  in.type = std::string_view(e.type.c_str(), e.type.size());
  in.at = FormatTimeFast(e.at, time_buf);
  in.entity = e.entity.str();
  bool attrs_parsed = false;
  const policy::Input input = policy::Input::ForEvent(in);
  std::string at_seed;

  const std::vector<Policy>& policies = set.policies();
  for (uint32_t index : candidates) {
    const Policy& p = policies[index];
    if ((p.uses_evidence || !p.target_attr.empty()) && !attrs_parsed) {
      Arena().Parse(e.attrs_json, &in.attrs);
      attrs_parsed = true;
    }
    // `target: attrs.x` is parsed (an IP canonicalised) only when it is needed: before
    // the condition for a partial rollout (membership hashes the target), else only
    // once the condition matched. Most events match nothing, and the condition does not
    // read the target.
    absl::StatusOr<core::Entity> parsed_target;
    auto parse_target = [&]() -> const core::Entity* {
      const policy::Value* v = in.attrs.Find(p.target_attr);
      parsed_target = v != nullptr && v->kind() == policy::ValueKind::kString
                          ? core::Entity::Parse(v->string_value())
                          : absl::InvalidArgumentError("absent");
      if (!parsed_target.ok()) {
        ++out.target_errors;
        out.errors.emplace_back("target", &p.id);
        return nullptr;
      }
      return &*parsed_target;
    };
    const core::Entity* target = &e.entity;
    const bool has_target = !p.target_attr.empty();
    if (p.rollout < 100) {
      if (has_target && (target = parse_target()) == nullptr) continue;
      if (!InRollout(p.id, target->str(), p.rollout)) continue;
    }
    policy::Result r = p.program->Eval(input, env);
    if (r.matched() && has_target && p.rollout >= 100 && (target = parse_target()) == nullptr) {
      continue;  // no proposal without a target; not counted as evaluated
    }
    ++out.policies_evaluated;
    if (r.outcome == policy::Outcome::kError) {
      ++out.eval_errors;
      out.errors.emplace_back("condition", &p.id);
    }
    if (!r.matched()) continue;
    std::string_view seed = e.id;
    if (seed.empty()) {
      if (at_seed.empty()) at_seed = absl::StrCat(absl::ToUnixMicros(e.at));
      seed = at_seed;
    }
    Proposal prop = MakeProposal(set, p, *target, seed, false);
    prop.reason = absl::StrCat("policy ", p.id, " (v", set.version(), ") matched ", e.type,
                               " event of ", e.entity.str());
    out.proposals.push_back(std::move(prop));
  }
  return out;
}

const std::string& EscalatedAction(const Proposal& p, int64_t prior) {
  const std::string* action = &p.action;
  for (const EscalationStep& s : p.escalate) {
    if (s.after <= prior) action = &s.action;
  }
  return *action;
}

absl::Duration EscalatedTtl(const Proposal& p, int64_t prior) {
  absl::Duration ttl = p.ttl;
  for (const EscalationStep& s : p.escalate) {
    if (s.after <= prior) ttl = s.ttl;
  }
  return ttl;
}

}  // namespace quell::engine
