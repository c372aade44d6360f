#include "engine/policy_cases.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/entity_json.h"
#include "core/entity_list.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "safeguards/protected.h"
#include "yaml-cpp/yaml.h"

namespace quell::engine {
namespace {

// Reads a case file's YAML, collecting errors with positions. Every yaml-cpp call that can
// throw is either guarded by a type check or inside ParseCase's try block.
class CaseReader {
 public:
  std::vector<std::string> errors;

  void Error(const YAML::Node& n, std::string_view message) {
    YAML::Mark m = n.IsDefined() ? n.Mark() : YAML::Mark::null_mark();
    if (m.is_null()) {
      errors.push_back(std::string(message));
    } else {
      errors.push_back(absl::StrCat(m.line + 1, ":", m.column + 1, ": ", AV(message)));
    }
  }

  bool CheckKeys(const YAML::Node& n, std::string_view what,
                 const std::vector<std::string_view>& allowed) {
    if (!n.IsMap()) {
      Error(n, absl::StrCat(AV(what), " must be a mapping"));
      return false;
    }
    for (auto it = n.begin(); it != n.end(); ++it) {
      std::string key = it->first.IsScalar() ? it->first.Scalar() : "";
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::vector<std::string> a(allowed.begin(), allowed.end());
        Error(it->first, absl::StrCat("unknown key \"", key, "\" in ", AV(what),
                                      " (expected one of: ", absl::StrJoin(a, ", "), ")"));
      }
    }
    return true;
  }

  std::optional<std::string> Str(const YAML::Node& map, const char* key, bool required,
                                 std::string_view what) {
    YAML::Node v = map[key];
    if (!v.IsDefined() || v.IsNull()) {
      if (required) Error(map, absl::StrCat(AV(what), " needs `", key, "`"));
      return std::nullopt;
    }
    if (!v.IsScalar()) {
      Error(v, absl::StrCat(AV(what), ".", key, " must be a single value"));
      return std::nullopt;
    }
    return v.Scalar();
  }

  std::optional<absl::Time> Time(const YAML::Node& map, const char* key, std::string_view what) {
    auto s = Str(map, key, false, what);
    if (!s) return std::nullopt;
    auto t = core::ParseRfc3339(*s);
    if (!t.ok()) {
      Error(map[key], absl::StrCat(AV(what), ".", key, ": ", t.status().message()));
      return std::nullopt;
    }
    return *t;
  }

  std::optional<core::Entity> Ent(const YAML::Node& map, const char* key, std::string_view what) {
    auto s = Str(map, key, true, what);
    if (!s) return std::nullopt;
    auto e = core::Entity::Parse(*s);
    if (!e.ok()) {
      Error(map[key], absl::StrCat(AV(what), ".", key, ": ", e.status().message()));
      return std::nullopt;
    }
    return *e;
  }

  std::optional<int64_t> Int(const YAML::Node& map, const char* key, std::string_view what) {
    auto s = Str(map, key, true, what);
    if (!s) return std::nullopt;
    int64_t v = 0;
    if (!absl::SimpleAtoi(*s, &v)) {
      Error(map[key], absl::StrCat(AV(what), ".", key, " must be an integer"));
      return std::nullopt;
    }
    return v;
  }

  // A YAML node as JSON. Plain scalars that read as numbers, booleans or null keep that
  // type; quoted scalars are strings.
  bool ToJson(const YAML::Node& n, std::string* out, int depth) {
    if (depth > 16) {
      Error(n, "nested too deeply");
      return false;
    }
    if (n.IsMap()) {
      out->push_back('{');
      bool first = true;
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (!it->first.IsScalar()) {
          Error(it->first, "keys must be plain names");
          return false;
        }
        if (!first) out->push_back(',');
        first = false;
        core::AppendJsonString(it->first.Scalar(), out);
        out->push_back(':');
        if (!ToJson(it->second, out, depth + 1)) return false;
      }
      out->push_back('}');
      return true;
    }
    if (n.IsSequence()) {
      out->push_back('[');
      for (size_t i = 0; i < n.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (!ToJson(n[i], out, depth + 1)) return false;
      }
      out->push_back(']');
      return true;
    }
    if (n.IsNull()) {
      out->append("null");
      return true;
    }
    const std::string& s = n.Scalar();
    if (n.Tag() == "?") {  // plain: typed by its spelling
      int64_t i;
      double d;
      if (s == "true" || s == "false") {
        out->append(s);
        return true;
      }
      if (absl::SimpleAtoi(s, &i)) {
        out->append(absl::StrCat(i));
        return true;
      }
      if (absl::SimpleAtod(s, &d) && std::isfinite(d) &&
          s.find_first_not_of("0123456789.eE+-") == std::string::npos) {
        out->append(absl::StrCat(d));
        return true;
      }
    }
    core::AppendJsonString(s, out);
    return true;
  }

  std::string ObjectJson(const YAML::Node& map, const char* key, std::string_view what) {
    YAML::Node v = map[key];
    if (!v.IsDefined() || v.IsNull()) return "{}";
    if (!v.IsMap()) {
      Error(v, absl::StrCat(AV(what), ".", key, " must be a mapping"));
      return "{}";
    }
    std::string json;
    return ToJson(v, &json, 0) ? json : "{}";
  }
};

template <typename F>
void ForEachItem(CaseReader& r, const YAML::Node& top, const char* key, F f) {
  YAML::Node list = top[key];
  if (!list.IsDefined() || list.IsNull()) return;
  if (!list.IsSequence()) {
    r.Error(list, absl::StrCat(key, " must be a list"));
    return;
  }
  for (size_t i = 0; i < list.size(); ++i) f(list[i], absl::StrCat(key, "[", i, "]"));
}

absl::StatusOr<PolicyCase> ParseNode(const YAML::Node& top) {
  CaseReader r;
  PolicyCase c;
  if (!r.CheckKeys(top, "a case",
                   {"name", "now", "detections", "events", "lists", "prior", "active", "counters",
                    "expect", "description"})) {
    return absl::InvalidArgumentError(absl::StrJoin(r.errors, "\n"));
  }
  if (auto s = r.Str(top, "name", true, "a case")) c.name = *s;
  if (auto t = r.Time(top, "now", "case")) c.now = *t;

  ForEachItem(r, top, "detections", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what,
                     {"id", "source", "type", "entity", "score", "observed_at", "evidence",
                      "related", "batch"})) {
      return;
    }
    Detection d;
    d.id = r.Str(n, "id", false, what).value_or(absl::StrCat("case-d", c.detections.size() + 1));
    d.source = r.Str(n, "source", false, what).value_or("test");
    if (auto s = r.Str(n, "type", true, what)) d.type = *s;
    if (auto e = r.Ent(n, "entity", what)) d.entity = *e;
    if (auto s = r.Str(n, "score", true, what)) {
      if (!absl::SimpleAtod(*s, &d.score) || !(d.score >= 0 && d.score <= 1)) {
        r.Error(n["score"], absl::StrCat(what, ".score must be a number from 0 to 1"));
      }
    }
    d.observed_at = r.Time(n, "observed_at", what).value_or(c.now);
    d.evidence_json = r.ObjectJson(n, "evidence", what);
    YAML::Node rel = n["related"];
    if (rel.IsDefined() && !rel.IsNull()) {
      if (!rel.IsSequence()) {
        r.Error(rel, absl::StrCat(what, ".related must be a list of entities"));
      } else {
        for (size_t i = 0; i < rel.size(); ++i) {
          auto e = rel[i].IsScalar() ? core::Entity::Parse(rel[i].Scalar())
                                     : absl::InvalidArgumentError("not an entity");
          if (!e.ok()) {
            r.Error(rel[i], absl::StrCat(what, ".related: ", e.status().message()));
          } else {
            d.related.push_back(*e);
          }
        }
      }
    }
    if (auto s = r.Str(n, "batch", false, what)) d.batch = *s;
    c.detections.push_back(std::move(d));
  });

  ForEachItem(r, top, "events", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what, {"id", "type", "entity", "at", "attrs"})) return;
    Event e;
    e.id = r.Str(n, "id", false, what).value_or("");
    if (auto s = r.Str(n, "type", true, what)) e.type = *s;
    if (auto x = r.Ent(n, "entity", what)) e.entity = *x;
    e.at = r.Time(n, "at", what).value_or(c.now);
    // In normal form, as POST /v1/events gives them to the rules.
    e.attrs_json = core::NormalizeEntityMembers(r.ObjectJson(n, "attrs", what));
    c.events.push_back(std::move(e));
  });

  YAML::Node lists = top["lists"];
  if (lists.IsDefined() && !lists.IsNull()) {
    if (!lists.IsMap()) {
      r.Error(lists, "lists must map list names to lists of entities");
    } else {
      for (auto it = lists.begin(); it != lists.end(); ++it) {
        std::string name = it->first.IsScalar() ? it->first.Scalar() : "";
        if (!it->second.IsSequence()) {
          r.Error(it->second, absl::StrCat("lists.", name, " must be a list of entities"));
          continue;
        }
        std::vector<std::string>& members = c.lists[name];
        for (size_t i = 0; i < it->second.size(); ++i) {
          YAML::Node m = it->second[i];
          auto e = m.IsScalar() ? core::Entity::Parse(m.Scalar())
                                : absl::InvalidArgumentError("not an entity");
          if (!e.ok()) {
            r.Error(m, absl::StrCat("lists.", name, ": ", e.status().message()));
          } else {
            members.push_back(e->str());
          }
        }
      }
    }
  }

  ForEachItem(r, top, "prior", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what, {"entity", "policy", "action", "count"})) return;
    PolicyCase::Prior p;
    if (auto e = r.Ent(n, "entity", what)) p.entity = e->str();
    if (auto s = r.Str(n, "policy", true, what)) p.policy = *s;
    if (auto s = r.Str(n, "action", false, what)) p.action = *s;
    if (auto v = r.Int(n, "count", what)) p.count = *v;
    c.prior.push_back(std::move(p));
  });
  ForEachItem(r, top, "active", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what, {"entity", "action"})) return;
    PolicyCase::Active a;
    if (auto e = r.Ent(n, "entity", what)) a.entity = e->str();
    if (auto s = r.Str(n, "action", true, what)) a.action = *s;
    c.active.push_back(std::move(a));
  });
  ForEachItem(r, top, "counters", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what, {"counter", "key", "value"})) return;
    PolicyCase::CounterValue v;
    if (auto s = r.Str(n, "counter", true, what)) v.counter = *s;
    if (auto s = r.Str(n, "key", true, what)) v.key = *s;
    if (auto x = r.Int(n, "value", what)) v.value = *x;
    c.counters.push_back(std::move(v));
  });

  YAML::Node expect = top["expect"];
  if (!expect.IsDefined()) {
    r.Error(top, "a case needs `expect:` (write `expect: []` when no decision is expected)");
  }
  ForEachItem(r, top, "expect", [&](const YAML::Node& n, const std::string& what) {
    if (!r.CheckKeys(n, what, {"entity", "action", "state", "policy"})) return;
    CaseDecision d;
    if (auto e = r.Ent(n, "entity", what)) d.entity = e->str();
    if (auto s = r.Str(n, "action", true, what)) d.action = *s;
    d.state = r.Str(n, "state", false, what).value_or("active");
    if (d.state == "suppressed") {
      r.Error(n["state"], absl::StrCat(what,
                                       ".state suppressed: a decision on a protected entity is "
                                       "held for review, as the server does: pending_approval"));
    } else if (d.state != "active" && d.state != "shadow" && d.state != "scheduled" &&
               d.state != "pending_approval") {
      r.Error(n["state"],
              absl::StrCat(what, ".state must be active, shadow, scheduled or pending_approval"));
    }
    if (auto s = r.Str(n, "policy", true, what)) d.policy = *s;
    c.expect.push_back(std::move(d));
  });
  if (!r.errors.empty()) return absl::InvalidArgumentError(absl::StrJoin(r.errors, "\n"));
  return c;
}

// The Environment of one case: its declared state plus the decisions made so far.
class CaseEnvironment final : public policy::Environment {
 public:
  CaseEnvironment(const policy::PolicySet& set, const PolicyCase& c) {
    for (const auto& [name, members] : c.lists) {
      for (const std::string& m : members) lists_[name].Insert(m);
    }
    for (const auto& a : c.active) active_.insert({a.entity, a.action});
    for (const auto& v : c.counters) counters_[{v.counter, v.key}] += v.value;
    for (const auto& p : c.prior) {
      std::string action = p.action;
      if (action.empty()) {
        if (const policy::Policy* pol = set.Find(p.policy)) action = pol->action;
      }
      by_policy_[{p.entity, p.policy}] += p.count;
      by_action_[{p.entity, action}] += p.count;
    }
  }

  int64_t Count(std::string_view counter, std::string_view key, absl::Duration) override {
    auto it = counters_.find({std::string(counter), std::string(key)});
    return it == counters_.end() ? 0 : it->second;
  }
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration w) override {
    return Count(counter, key, w);
  }
  bool InList(std::string_view list, std::string_view entity) override {
    auto it = lists_.find(list);
    if (it == lists_.end()) return false;
    auto e = core::Entity::Parse(entity);  // members are kept in the normal form, as live
    return e.ok() && it->second.Has(*e);
  }
  bool Active(std::string_view entity, std::string_view action) override {
    return active_.count({std::string(entity), std::string(action)}) > 0;
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration) override {
    auto it = by_action_.find({std::string(entity), std::string(action)});
    return it == by_action_.end() ? 0 : it->second;
  }

  int64_t PriorFromPolicy(const std::string& entity, const std::string& policy) const {
    auto it = by_policy_.find({entity, policy});
    return it == by_policy_.end() ? 0 : it->second;
  }
  void Record(const CaseDecision& d) {
    by_policy_[{d.entity, d.policy}] += 1;
    // prior() counts mitigations, as the server does: a decision on an entity that already
    // has a live one of that action extends it (no new mitigation, no count).
    if ((d.state == "active" || d.state == "scheduled") &&
        live_.insert({d.entity, d.action}).second) {
      by_action_[{d.entity, d.action}] += 1;
    }
    if (d.state == "active") active_.insert({d.entity, d.action});
  }

 private:
  using Key = std::pair<std::string, std::string>;
  std::map<std::string, core::EntityList, std::less<>> lists_;
  std::set<Key> active_;
  std::set<Key> live_;  // (entity, action) given a mitigation by this case's decisions
  std::map<Key, int64_t> counters_;
  std::map<Key, int64_t> by_policy_;
  std::map<Key, int64_t> by_action_;
};

}  // namespace

std::string CaseDecision::ToString() const {
  return absl::StrCat(entity, " ", action, " ", state, " (policy ", policy, ")");
}

bool CaseDecision::operator<(const CaseDecision& o) const {
  return std::tie(entity, policy, action, state) < std::tie(o.entity, o.policy, o.action, o.state);
}

absl::StatusOr<PolicyCase> ParseCase(std::string_view yaml) {
  try {
    YAML::Node top = YAML::Load(std::string(yaml));
    return ParseNode(top);
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) return absl::InvalidArgumentError(absl::StrCat("YAML: ", e.msg));
    return absl::InvalidArgumentError(
        absl::StrCat(e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("YAML: ", e.what()));
  }
}

std::string CaseResult::Report() const {
  std::string label =
      name.empty() ? file : (file.empty() ? name : absl::StrCat(name, " (", file, ")"));
  if (passed) return absl::StrCat("PASS ", label);
  std::string out = absl::StrCat("FAIL ", label);
  if (!error.empty()) {
    for (absl::string_view line : absl::StrSplit(error, '\n')) {
      absl::StrAppend(&out, "\n  ", line);
    }
    return out;
  }
  for (const CaseDecision& d : missing) absl::StrAppend(&out, "\n  - missing:    ", d.ToString());
  for (const CaseDecision& d : unexpected) {
    absl::StrAppend(&out, "\n  + unexpected: ", d.ToString());
  }
  return out;
}

// What the case names that the set does not declare: such a case would test nothing (a
// misspelt list or counter reads as empty, a detection of an undeclared type is refused
// by the server). One message per name, or "".
std::string UndeclaredInCase(const policy::PolicySet& set, const PolicyCase& c) {
  std::vector<std::string> errors;
  for (size_t i = 0; i < c.detections.size(); ++i) {
    std::string e = set.UnknownDetectionTypeError(c.detections[i].type);
    if (!e.empty()) errors.push_back(absl::StrCat("detections[", i, "].type: ", e));
  }
  for (const auto& [name, members] : c.lists) {
    bool declared = false;
    for (const policy::ListDef& l : set.lists()) declared = declared || l.name == name;
    if (!declared) errors.push_back(absl::StrCat("lists: ", name, " is not declared by the set"));
  }
  for (size_t i = 0; i < c.counters.size(); ++i) {
    bool declared = false;
    for (const policy::CounterDef& d : set.counters()) {
      declared = declared || d.name == c.counters[i].counter;
    }
    if (!declared) {
      errors.push_back(absl::StrCat("counters[", i, "].counter: ", c.counters[i].counter,
                                    " is not declared by the set"));
    }
  }
  return absl::StrJoin(errors, "\n");
}

CaseResult RunCase(const policy::PolicySet& set, const PolicyCase& c) {
  CaseResult result;
  result.name = c.name;
  result.error = UndeclaredInCase(set, c);
  if (!result.error.empty()) return result;
  CaseEnvironment env(set, c);
  // The protected lists' members, matched as the server's safeguard matches them (an ip
  // inside a protected cidr, a cidr over a protected ip, a related entity of a protected
  // one), not by exact text alone.
  std::vector<std::pair<std::string, std::string>> protected_entries;
  for (const policy::ListDef& l : set.lists()) {
    if (!l.is_protected) continue;
    auto it = c.lists.find(l.name);
    if (it == c.lists.end()) continue;
    for (const std::string& e : it->second) protected_entries.emplace_back(l.name, e);
  }
  const std::shared_ptr<const safeguards::ProtectedSet> prot =
      safeguards::ProtectedSet::Build(protected_entries);
  auto decide = [&](const Evaluation& ev, const core::Entity* source) {
    result.eval_errors += ev.eval_errors;
    for (const Proposal& p : ev.proposals) {
      CaseDecision d;
      d.entity = p.entity.str();
      d.policy = p.policy;
      d.action = EscalatedAction(p, env.PriorFromPolicy(d.entity, d.policy));
      const bool is_protected = prot->Why(p.entity).has_value() ||
                                (p.via_related && source != nullptr && prot->Why(*source));
      if (p.shadow) {
        d.state = "shadow";
      } else if (is_protected) {
        d.state = "pending_approval";  // held for review, as the server's safeguard does
      } else if (p.delay > absl::ZeroDuration()) {
        d.state = "scheduled";
      } else {
        d.state = "active";
      }
      env.Record(d);
      result.actual.push_back(std::move(d));
    }
  };
  for (const Detection& d : c.detections) decide(Evaluate(set, d, env, c.now), &d.entity);
  for (const Event& e : c.events) decide(EvaluateEvent(set, e, env, c.now), nullptr);

  std::sort(result.actual.begin(), result.actual.end());
  std::vector<CaseDecision> expect = c.expect;
  std::sort(expect.begin(), expect.end());
  std::set_difference(expect.begin(), expect.end(), result.actual.begin(), result.actual.end(),
                      std::back_inserter(result.missing));
  std::set_difference(result.actual.begin(), result.actual.end(), expect.begin(), expect.end(),
                      std::back_inserter(result.unexpected));
  result.passed = result.missing.empty() && result.unexpected.empty();
  return result;
}

CaseResult RunCaseText(const policy::PolicySet& set, std::string_view yaml, std::string_view file) {
  absl::StatusOr<PolicyCase> c = ParseCase(yaml);
  CaseResult r;
  if (!c.ok()) {
    r.file = std::string(file);
    r.error = std::string(c.status().message());
    return r;
  }
  r = RunCase(set, *c);
  r.file = std::string(file);
  return r;
}

absl::StatusOr<CaseRun> RunCaseDirectory(const policy::PolicySet& set, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> files;
  fs::directory_iterator it(dir, ec);
  if (ec)
    return absl::NotFoundError(absl::StrCat("cannot read directory ", dir, ": ", ec.message()));
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const fs::path& p = it->path();
    if ((p.extension() == ".yaml" || p.extension() == ".yml") && it->is_regular_file(ec)) {
      files.push_back(p);
    }
  }
  if (files.empty()) return absl::NotFoundError(absl::StrCat("no *.yaml case files in ", dir));
  std::sort(files.begin(), files.end());
  CaseRun run;
  for (const fs::path& p : files) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    CaseResult r;
    if (!in) {
      r.file = p.string();
      r.error = "cannot read the file";
    } else {
      r = RunCaseText(set, text.str(), p.string());
    }
    (r.passed ? run.passed : run.failed) += 1;
    run.results.push_back(std::move(r));
  }
  return run;
}

}  // namespace quell::engine
