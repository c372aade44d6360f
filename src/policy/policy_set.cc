#include "policy/policy_set.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "core/utf8.h"
#include "yaml-cpp/yaml.h"

namespace quell::policy {

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kEnforce:
      return "enforce";
    case Mode::kShadow:
      return "shadow";
    case Mode::kOff:
      return "off";
  }
  return "enforce";
}

std::string_view BreakerScopeName(BreakerDef::Scope scope) {
  switch (scope) {
    case BreakerDef::Scope::kGlobal:
      return "global";
    case BreakerDef::Scope::kPolicy:
      return "policy";
    case BreakerDef::Scope::kAction:
      return "action";
    case BreakerDef::Scope::kSource:
      return "source";
  }
  return "global";
}

const Policy* PolicySet::Find(std::string_view id) const {
  auto it = by_id_.find(AV(id));
  return it == by_id_.end() ? nullptr : &policies_[it->second];
}

absl::Span<const uint32_t> PolicySet::DetectionCandidates(std::string_view type) const {
  auto it = detection_by_type_.find(AV(type));
  if (it == detection_by_type_.end()) return detection_unguarded_;
  return it->second;
}

absl::Span<const uint32_t> PolicySet::EventCandidates(std::string_view event_type) const {
  auto it = event_by_type_.find(AV(event_type));
  if (it == event_by_type_.end()) return {};
  return it->second;
}

// Builds a PolicySet from a parsed YAML document, collecting every error with its
// position. yaml-cpp throws; every call into it that can throw is inside the try blocks
// of Load() or guarded by the node checks below.
class PolicySetBuilder {
 public:
  PolicySetBuilder(std::string_view yaml, int64_t version) : yaml_(yaml) {
    set_ = std::shared_ptr<PolicySet>(new PolicySet());
    set_->version_ = version;
    set_->yaml_ = std::string(yaml);
    SplitLines();
  }

  LoadResult Load();

 private:
  static constexpr size_t kMaxErrors = 200;
  static constexpr size_t kMaxItems = 10000;

  struct Pos {
    int line = 1;
    int column = 1;
  };
  // One key: value pair of a mapping, with the key's position (a null value has none).
  struct Entry {
    std::string key;
    Pos key_pos;
    YAML::Node value;
  };
  using Entries = std::vector<Entry>;

  void SplitLines();
  Pos PosOf(const YAML::Node& n, Pos fallback) const;
  void Error(Pos p, std::string message);
  bool Full() const { return errors_.size() >= kMaxErrors; }

  // Reads a mapping's entries, reporting non-scalar keys, duplicates and keys not in
  // `allowed` (with a suggestion). Returns false if `n` is not a mapping.
  bool ReadMap(const YAML::Node& n, Pos where, std::string_view what,
               const std::vector<std::string_view>& allowed, Entries* out);
  static const Entry* Get(const Entries& e, std::string_view key);
  std::optional<std::string> Scalar(const Entry& e, std::string_view what);
  std::optional<int64_t> Int(const Entry& e, std::string_view what);
  std::optional<double> Double(const Entry& e, std::string_view what);
  std::optional<bool> Bool(const Entry& e, std::string_view what);
  std::optional<absl::Duration> Duration(const Entry& e, std::string_view what, bool allow_zero);
  // A sequence; false (with an error) otherwise.
  bool Sequence(const Entry& e, std::string_view what);
  std::optional<std::vector<std::string>> StringList(const Entry& e, std::string_view what);
  void LoadDetectionTypes(const Entry& e);

  void LoadActions(const Entry& e);
  void LoadCounters(const Entry& e);
  void LoadLists(const Entry& e);
  void LoadBreakers(const Entry& e);
  void LoadPolicies(const Entry& e);
  void LoadPolicy(const YAML::Node& n, Pos where, size_t index);
  // The `when` source as the compiler should see it, and where it starts.
  std::string WhenSource(const YAML::Node& n, const std::string& value, Position* base,
                         std::vector<Position>* quoted) const;
  bool QuotedPositions(size_t pos, const std::string& value, std::vector<Position>* out) const;
  void CheckBreakerRefs();
  void BuildIndex();

  std::string_view yaml_;
  std::vector<std::string_view> lines_;
  std::vector<Diagnostic> errors_;
  bool truncated_ = false;
  std::shared_ptr<PolicySet> set_;
  std::vector<Pos> breaker_ref_pos_;  // parallel to set_->breakers_
};

namespace {

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// [a-z0-9][a-z0-9_-]{0,63}: policy ids, list and breaker names.
bool IsId(std::string_view s) {
  if (s.empty() || s.size() > 64 || !(IsLower(s[0]) || IsDigit(s[0]))) return false;
  for (char c : s) {
    if (!(IsLower(c) || IsDigit(c) || c == '_' || c == '-')) return false;
  }
  return true;
}

// [a-z][a-z0-9_]{0,max-1}: event types, entity types.
bool IsSnake(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max || !IsLower(s[0])) return false;
  for (char c : s) {
    if (!(IsLower(c) || IsDigit(c) || c == '_')) return false;
  }
  return true;
}

// [A-Za-z0-9_.-]{1,64}: counter names (counters/counter_store.h).
bool IsCounterName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!(IsLower(c) || IsDigit(c) || (c >= 'A' && c <= 'Z') || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

// "entity" or "attrs.<name>" with a non-empty name of [A-Za-z0-9_-].
bool IsFieldRef(std::string_view s) {
  if (s == "entity") return true;
  if (s.size() <= 6 || s.substr(0, 6) != "attrs.") return false;
  for (char c : s.substr(6)) {
    if (!(IsLower(c) || IsDigit(c) || (c >= 'A' && c <= 'Z') || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest candidate within a small edit distance, or "".
std::string_view Suggest(std::string_view word, const std::vector<std::string_view>& candidates) {
  std::string_view best;
  size_t best_d = std::max<size_t>(1, std::min<size_t>(2, word.size() / 3));
  if (word.size() > 64) return best;
  for (std::string_view c : candidates) {
    size_t d = EditDistance(word, c);
    // A transposition ("wehn") costs 2 edits; still a typo worth naming.
    if (d <= best_d || (d == 2 && word.size() >= 4 && best.empty())) {
      if (best.empty() || d < best_d) {
        best = c;
        best_d = d;
      }
    }
  }
  return best;
}

std::string Quoted(std::string_view s) {
  constexpr size_t kMax = 60;
  if (s.size() > kMax) return absl::StrCat("\"", AV(s.substr(0, kMax)), "...\"");
  return absl::StrCat("\"", AV(s), "\"");
}

std::string OneOf(const std::vector<std::string_view>& names) {
  std::vector<std::string> q;
  for (auto n : names) q.push_back(std::string(n));
  return absl::StrJoin(q, ", ");
}

}  // namespace

void PolicySetBuilder::SplitLines() {
  size_t start = 0;
  for (size_t i = 0; i < yaml_.size(); ++i) {
    if (yaml_[i] == '\n') {
      size_t end = i;
      if (end > start && yaml_[end - 1] == '\r') --end;
      lines_.push_back(yaml_.substr(start, end - start));
      start = i + 1;
    }
  }
  lines_.push_back(yaml_.substr(start));
}

PolicySetBuilder::Pos PolicySetBuilder::PosOf(const YAML::Node& n, Pos fallback) const {
  if (!n.IsDefined()) return fallback;
  YAML::Mark m = n.Mark();
  if (m.line < 0 || m.column < 0 || m.is_null()) return fallback;
  return Pos{m.line + 1, m.column + 1};
}

void PolicySetBuilder::Error(Pos p, std::string message) {
  if (errors_.size() >= kMaxErrors) {
    truncated_ = true;
    return;
  }
  errors_.push_back(Diagnostic{p.line, p.column, std::move(message)});
}

bool PolicySetBuilder::ReadMap(const YAML::Node& n, Pos where, std::string_view what,
                               const std::vector<std::string_view>& allowed, Entries* out) {
  if (!n.IsMap()) {
    Error(PosOf(n, where), absl::StrCat(AV(what), " must be a mapping"));
    return false;
  }
  absl::flat_hash_set<std::string> seen;
  for (auto it = n.begin(); it != n.end(); ++it) {
    if (Full()) break;
    const YAML::Node k = it->first;  // a handle: copying it is cheap, and it owns no temporary
    Pos kp = PosOf(k, where);
    if (!k.IsScalar()) {
      Error(kp, absl::StrCat(AV(what), ": keys must be plain names"));
      continue;
    }
    const std::string& key = k.Scalar();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      std::string_view s = Suggest(key, allowed);
      if (!s.empty()) {
        Error(kp, absl::StrCat("unknown key ", Quoted(key), " in ", AV(what), " — did you mean `",
                               AV(s), "`?"));
      } else {
        Error(kp, absl::StrCat("unknown key ", Quoted(key), " in ", AV(what),
                               " (expected one of: ", OneOf(allowed), ")"));
      }
      continue;
    }
    if (!seen.insert(key).second) {
      Error(kp, absl::StrCat("duplicate key `", key, "` in ", AV(what)));
      continue;
    }
    out->push_back(Entry{key, kp, it->second});
  }
  return true;
}

const PolicySetBuilder::Entry* PolicySetBuilder::Get(const Entries& e, std::string_view key) {
  for (const Entry& x : e) {
    if (x.key == key) return &x;
  }
  return nullptr;
}

std::optional<std::string> PolicySetBuilder::Scalar(const Entry& e, std::string_view what) {
  if (!e.value.IsScalar()) {
    Error(PosOf(e.value, e.key_pos), absl::StrCat(AV(what), " must be a single value"));
    return std::nullopt;
  }
  return e.value.Scalar();
}

std::optional<int64_t> PolicySetBuilder::Int(const Entry& e, std::string_view what) {
  auto s = Scalar(e, what);
  if (!s) return std::nullopt;
  int64_t v = 0;
  if (!absl::SimpleAtoi(*s, &v)) {
    Error(PosOf(e.value, e.key_pos),
          absl::StrCat(AV(what), " must be an integer, not ", Quoted(*s)));
    return std::nullopt;
  }
  return v;
}

std::optional<double> PolicySetBuilder::Double(const Entry& e, std::string_view what) {
  auto s = Scalar(e, what);
  if (!s) return std::nullopt;
  double v = 0;
  if (!absl::SimpleAtod(*s, &v) || !std::isfinite(v)) {
    Error(PosOf(e.value, e.key_pos), absl::StrCat(AV(what), " must be a number, not ", Quoted(*s)));
    return std::nullopt;
  }
  return v;
}

std::optional<bool> PolicySetBuilder::Bool(const Entry& e, std::string_view what) {
  auto s = Scalar(e, what);
  if (!s) return std::nullopt;
  if (*s == "true") return true;
  if (*s == "false") return false;
  Error(PosOf(e.value, e.key_pos), absl::StrCat(AV(what), " must be true or false"));
  return std::nullopt;
}

std::optional<absl::Duration> PolicySetBuilder::Duration(const Entry& e, std::string_view what,
                                                         bool allow_zero) {
  auto s = Scalar(e, what);
  if (!s) return std::nullopt;
  auto d = core::ParseDuration(*s, allow_zero);
  if (!d.ok()) {
    Error(PosOf(e.value, e.key_pos), absl::StrCat(AV(what), ": ", d.status().message(),
                                                  " (durations look like 90s, 15m, 2h, 30d)"));
    return std::nullopt;
  }
  return *d;
}

bool PolicySetBuilder::Sequence(const Entry& e, std::string_view what) {
  if (!e.value.IsSequence()) {
    Error(PosOf(e.value, e.key_pos), absl::StrCat(AV(what), " must be a list"));
    return false;
  }
  if (e.value.size() > kMaxItems) {
    Error(PosOf(e.value, e.key_pos),
          absl::StrCat(AV(what), " has more than ", kMaxItems, " items"));
    return false;
  }
  return true;
}

bool PolicySet::KnowsDetectionType(std::string_view type) const {
  return detection_types_.empty() || std::find(detection_types_.begin(), detection_types_.end(),
                                               type) != detection_types_.end();
}

std::string PolicySet::UnknownDetectionTypeError(std::string_view type) const {
  if (KnowsDetectionType(type)) return "";
  // Version 0: a set read from a file, never published (a dry run's --policies).
  return absl::StrCat("unknown detection type \"", AV(type), "\"; ",
                      version_ > 0 ? absl::StrCat("policy set v", version_) : "the policy set",
                      " declares: ", absl::StrJoin(detection_types_, ", "));
}

std::optional<std::vector<std::string>> PolicySetBuilder::StringList(const Entry& e,
                                                                     std::string_view what) {
  if (!Sequence(e, what)) return std::nullopt;
  std::vector<std::string> out;
  bool ok = true;
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    if (!item.IsScalar()) {
      Error(PosOf(item, e.key_pos), absl::StrCat(AV(what), " items must be single values"));
      ok = false;
      continue;
    }
    out.push_back(item.Scalar());
  }
  if (!ok) return std::nullopt;
  return out;
}

LoadResult PolicySetBuilder::Load() {
  LoadResult result;
  if (yaml_.size() > kMaxPolicySetBytes) {
    Error({1, 1}, absl::StrCat("the policy set is larger than ", kMaxPolicySetBytes, " bytes"));
    result.errors = std::move(errors_);
    return result;
  }
  // Stored in the ledger and served as JSON: text only (yaml-cpp passes any byte through).
  if (std::optional<size_t> bad = core::FindInvalidUtf8(yaml_)) {
    const std::string_view before = std::string_view(yaml_).substr(0, *bad);
    const size_t line_start =
        before.rfind('\n') == std::string_view::npos ? 0 : before.rfind('\n') + 1;
    Error({static_cast<int>(std::count(before.begin(), before.end(), '\n')) + 1,
           static_cast<int>(*bad - line_start) + 1},
          "invalid UTF-8: a policy set is text");
    result.errors = std::move(errors_);
    return result;
  }
  // One document only. yaml-cpp's LoadAll() can loop forever on some malformed input,
  // so a second document is found from its marker instead: a line starting with `---` or
  // `...` after the first content line (block scalars are indented, so cannot hold one).
  bool content = false;
  for (size_t i = 0; i < lines_.size(); ++i) {
    std::string_view l = lines_[i];
    bool marker = (l.substr(0, 3) == "---" || l.substr(0, 3) == "...") &&
                  (l.size() == 3 || l[3] == ' ' || l[3] == '\t');
    if (marker && content) {
      Error({static_cast<int>(i) + 1, 1}, "expected one YAML document, found several");
      break;
    }
    size_t k = l.find_first_not_of(" \t");
    if (!marker && k != std::string_view::npos && l[k] != '#' && l[0] != '%') content = true;
  }
  YAML::Node doc;
  if (errors_.empty()) {
    try {
      doc = YAML::Load(std::string(yaml_));
    } catch (const YAML::Exception& e) {
      Pos p{1, 1};
      if (!e.mark.is_null()) p = Pos{e.mark.line + 1, e.mark.column + 1};
      Error(p, absl::StrCat("YAML syntax error: ", e.msg));
    } catch (const std::exception& e) {
      Error({1, 1}, absl::StrCat("YAML error: ", e.what()));
    }
  }
  if (errors_.empty()) {
    if (!doc.IsDefined() || doc.IsNull()) {
      Error({1, 1}, "the policy set is empty (expected a mapping with `policies:`)");
    } else {
      try {
        Entries top;
        if (ReadMap(doc, {1, 1}, "the policy set",
                    {"actions", "detection_types", "counters", "lists", "breakers", "policies"},
                    &top)) {
          // Order matters: policies are checked against the catalog, counters and lists.
          if (const Entry* e = Get(top, "actions")) {
            LoadActions(*e);
          } else {
            set_->catalog_ = core::ActionCatalog::Default();
          }
          if (const Entry* e = Get(top, "detection_types")) LoadDetectionTypes(*e);
          if (const Entry* e = Get(top, "counters")) LoadCounters(*e);
          if (const Entry* e = Get(top, "lists")) LoadLists(*e);
          if (const Entry* e = Get(top, "breakers")) LoadBreakers(*e);
          Declarations& d = set_->declarations_;
          for (const CounterDef& c : set_->counters_) {
            d.counters.push_back(CounterDecl{c.name, c.window_names, !c.distinct.empty()});
          }
          for (const ListDef& l : set_->lists_) d.lists.push_back(l.name);
          for (const core::Action& a : set_->catalog_->actions()) d.actions.push_back(a.name);
          if (const Entry* e = Get(top, "policies")) {
            LoadPolicies(*e);
          } else {
            // `{}` or a set of only actions would replace every policy with none: say so.
            Error({1, 1}, "the policy set has no `policies:` (write `policies: []` to have none)");
          }
          CheckBreakerRefs();
        }
      } catch (const std::exception& e) {
        // Not expected (every access is checked first); never let it escape.
        Error({1, 1}, absl::StrCat("YAML error: ", e.what()));
      }
    }
  }
  std::stable_sort(errors_.begin(), errors_.end(), [](const Diagnostic& a, const Diagnostic& b) {
    return a.line != b.line ? a.line < b.line : a.column < b.column;
  });
  if (truncated_ || errors_.size() >= kMaxErrors) {
    errors_.push_back(Diagnostic{errors_.back().line, errors_.back().column,
                                 absl::StrCat("too many errors; stopped after ", kMaxErrors,
                                              " (fix these and check again)")});
  }
  if (!errors_.empty()) {
    result.errors = std::move(errors_);
    return result;
  }
  BuildIndex();
  result.set = std::move(set_);
  return result;
}

void PolicySetBuilder::LoadActions(const Entry& e) {
  std::vector<core::Action> actions;
  bool ok = Sequence(e, "actions");
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; ok && i < e.value.size() && !Full(); ++i) {
    const YAML::Node n = e.value[i];
    Pos where = PosOf(n, e.key_pos);
    Entries m;
    if (!ReadMap(n, where, "an action", {"name", "verdict", "severity", "ttl", "surfaces"}, &m)) {
      ok = false;
      continue;
    }
    core::Action a;
    const Entry* name = Get(m, "name");
    if (name == nullptr) {
      Error(where, "an action needs a name");
      ok = false;
      continue;
    }
    if (auto s = Scalar(*name, "action name")) {
      a.name = *s;
      if (!IsSnake(a.name, 64)) {
        Error(PosOf(name->value, where),
              absl::StrCat("action name ", Quoted(a.name), " must match [a-z][a-z0-9_]{0,63}"));
        ok = false;
      } else if (!names.insert(a.name).second) {
        Error(PosOf(name->value, where), absl::StrCat("action ", a.name, " is declared twice"));
        ok = false;
      }
    } else {
      ok = false;
    }
    if (const Entry* v = Get(m, "verdict")) {
      auto s = Scalar(*v, "verdict");
      auto parsed = s ? core::ParseVerdict(*s) : std::nullopt;
      if (!parsed) {
        if (s) {
          Error(
              PosOf(v->value, where),
              absl::StrCat("verdict ", Quoted(*s), " must be allow, throttle, challenge or deny"));
        }
        ok = false;
      } else {
        a.verdict = *parsed;
      }
    } else {
      Error(where, absl::StrCat("action ", a.name,
                                " needs a verdict (allow, throttle, challenge or deny)"));
      ok = false;
    }
    if (const Entry* v = Get(m, "severity")) {
      auto s = Scalar(*v, "severity");
      auto parsed = s ? core::ParseSeverity(*s) : std::nullopt;
      if (!parsed) {
        if (s) {
          Error(PosOf(v->value, where),
                absl::StrCat("severity ", Quoted(*s), " must be low, medium, high or critical"));
        }
        ok = false;
      } else {
        a.severity = *parsed;
      }
    }
    if (const Entry* v = Get(m, "ttl")) {
      if (auto d = Duration(*v, "ttl", false)) {
        a.default_ttl = *d;
      } else {
        ok = false;
      }
    }
    if (const Entry* v = Get(m, "surfaces")) {
      if (auto list = StringList(*v, "surfaces")) {
        for (const std::string& s : *list) {
          if (!IsSnake(s, 32)) {
            Error(PosOf(v->value, where),
                  absl::StrCat("surface ", Quoted(s), " must match [a-z][a-z0-9_]{0,31}"));
            ok = false;
          }
        }
        a.surfaces = *list;
      } else {
        ok = false;
      }
    }
    actions.push_back(std::move(a));
  }
  if (ok && actions.empty()) {
    Error(e.key_pos, "actions: the catalog is empty (omit `actions:` to use the default catalog)");
    ok = false;
  }
  if (ok) {
    auto catalog = core::ActionCatalog::Create(std::move(actions));
    if (catalog.ok()) {
      set_->catalog_ = *catalog;
    } else {
      Error(e.key_pos, std::string(catalog.status().message()));
    }
  }
  if (set_->catalog_ == nullptr) {
    // Keep checking the rest against the names that were declared, so one bad action does
    // not bury every policy under "unknown action" errors.
    std::vector<core::Action> stand_in;
    for (const std::string& n : names) stand_in.push_back(core::Action{n});
    auto c = core::ActionCatalog::Create(std::move(stand_in));
    set_->catalog_ = c.ok() ? *c : core::ActionCatalog::Default();
  }
}

void PolicySetBuilder::LoadCounters(const Entry& e) {
  if (!Sequence(e, "counters")) return;
  for (size_t i = 0; i < e.value.size() && !Full(); ++i) {
    const YAML::Node n = e.value[i];
    Pos where = PosOf(n, e.key_pos);
    Entries m;
    if (!ReadMap(n, where, "a counter", {"name", "on", "key", "distinct", "windows"}, &m)) continue;
    CounterDef c;
    c.line = where.line;
    const Entry* name = Get(m, "name");
    if (name == nullptr) {
      Error(where, "a counter needs a name");
    } else if (auto s = Scalar(*name, "counter name")) {
      c.name = *s;
      if (!IsCounterName(c.name)) {
        Error(PosOf(name->value, where),
              absl::StrCat("counter name ", Quoted(c.name), " must match [A-Za-z0-9_.-]{1,64}"));
      } else {
        for (const CounterDef& o : set_->counters_) {
          if (o.name == c.name) {
            Error(PosOf(name->value, where),
                  absl::StrCat("counter ", c.name, " is declared twice (first on line ", o.line,
                               ")"));
          }
        }
      }
    }
    const Entry* on = Get(m, "on");
    if (on == nullptr) {
      Error(where, absl::StrCat("counter ", c.name, " needs `on:` (an event type such as play)"));
    } else if (auto s = Scalar(*on, "on")) {
      c.on = *s;
      if (!IsSnake(c.on, 64) || c.on == "detection") {
        Error(PosOf(on->value, where), absl::StrCat("counter on: ", Quoted(c.on),
                                                    " must be an event type ([a-z][a-z0-9_]*)"));
      }
    }
    c.key = "entity";
    if (const Entry* k = Get(m, "key")) {
      if (auto s = Scalar(*k, "key")) {
        c.key = *s;
        if (!IsFieldRef(c.key)) {
          Error(PosOf(k->value, where),
                absl::StrCat("counter key ", Quoted(c.key), " must be entity or attrs.<name>"));
        }
      }
    }
    if (const Entry* k = Get(m, "distinct")) {
      if (auto s = Scalar(*k, "distinct")) {
        c.distinct = *s;
        if (!IsFieldRef(c.distinct)) {
          Error(PosOf(k->value, where), absl::StrCat("counter distinct ", Quoted(c.distinct),
                                                     " must be entity or attrs.<name>"));
        }
      }
    }
    const Entry* w = Get(m, "windows");
    if (w == nullptr) {
      Error(where, absl::StrCat("counter ", c.name, " needs windows (e.g. [1m, 1h, 24h])"));
    } else if (auto list = StringList(*w, "windows")) {
      if (list->empty()) Error(PosOf(w->value, where), "windows must not be empty");
      for (size_t j = 0; j < list->size(); ++j) {
        Pos wp = PosOf(w->value[j], where);
        auto d = core::ParseDuration((*list)[j]);
        if (!d.ok()) {
          Error(wp, absl::StrCat("window ", Quoted((*list)[j]), ": ", d.status().message()));
          continue;
        }
        if (std::find(c.windows.begin(), c.windows.end(), *d) != c.windows.end()) {
          Error(wp, absl::StrCat("window ", (*list)[j], " is listed twice"));
          continue;
        }
        // The counter stores' bound (counters::CounterSet::Create): a set they refuse
        // must not publish, or every counter stops and the server cannot start on it.
        if (*d <= absl::ZeroDuration() || *d > absl::Hours(24 * 366)) {
          Error(wp, absl::StrCat("window ", (*list)[j], " must be in (0, 366d]"));
          continue;
        }
        c.windows.push_back(*d);
        c.window_names.push_back((*list)[j]);
      }
    }
    set_->counters_.push_back(std::move(c));
  }
}

void PolicySetBuilder::LoadDetectionTypes(const Entry& e) {
  auto list = StringList(e, "detection_types");
  if (!list) return;
  for (const std::string& t : *list) {
    bool ok = !t.empty() && t.size() <= 64 && t[0] >= 'a' && t[0] <= 'z';
    for (char c : t) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
    if (!ok) {
      Error(PosOf(e.value, e.key_pos),
            absl::StrCat("detection type ", Quoted(t), " must match [a-z][a-z0-9_]{0,63}"));
    } else if (std::find(set_->detection_types_.begin(), set_->detection_types_.end(), t) !=
               set_->detection_types_.end()) {
      Error(PosOf(e.value, e.key_pos), absl::StrCat("detection type ", t, " is listed twice"));
    } else {
      set_->detection_types_.push_back(t);
    }
  }
}

void PolicySetBuilder::LoadLists(const Entry& e) {
  if (!Sequence(e, "lists")) return;
  static const std::vector<std::string_view> kKinds = {"protected", "allow", "deny", "watch"};
  for (size_t i = 0; i < e.value.size() && !Full(); ++i) {
    const YAML::Node n = e.value[i];
    Pos where = PosOf(n, e.key_pos);
    Entries m;
    if (!ReadMap(n, where, "a list", {"name", "protected", "kind", "description"}, &m)) continue;
    ListDef l;
    l.line = where.line;
    const Entry* name = Get(m, "name");
    if (name == nullptr) {
      Error(where, "a list needs a name");
    } else if (auto s = Scalar(*name, "list name")) {
      l.name = *s;
      if (!IsId(l.name)) {
        Error(PosOf(name->value, where),
              absl::StrCat("list name ", Quoted(l.name), " must match [a-z0-9][a-z0-9_-]{0,63}"));
      }
      for (const ListDef& o : set_->lists_) {
        if (o.name == l.name) {
          Error(PosOf(name->value, where),
                absl::StrCat("list ", l.name, " is declared twice (first on line ", o.line, ")"));
        }
      }
    }
    if (const Entry* p = Get(m, "protected")) {
      if (auto b = Bool(*p, "protected")) l.is_protected = *b;
    }
    if (const Entry* k = Get(m, "kind")) {
      if (auto s = Scalar(*k, "kind")) {
        if (std::find(kKinds.begin(), kKinds.end(), *s) == kKinds.end()) {
          Error(PosOf(k->value, where),
                absl::StrCat("list kind ", Quoted(*s), " must be one of: ", OneOf(kKinds)));
        } else if (l.is_protected && *s != "protected") {
          Error(PosOf(k->value, where),
                absl::StrCat("list ", l.name, " says protected: true but kind: ", *s));
        } else {
          l.kind = *s;
          if (l.kind == "protected") l.is_protected = true;
        }
      }
    }
    // `protected: false` with `kind: protected` contradicts itself whichever comes first.
    if (const Entry* p = Get(m, "protected"); p != nullptr && l.kind == "protected") {
      if (auto b = Bool(*p, "protected"); b && !*b) {
        Error(PosOf(p->value, where),
              absl::StrCat("list ", l.name, " says protected: false but kind: protected"));
      }
    }
    if (l.kind.empty()) l.kind = l.is_protected ? "protected" : "watch";
    set_->lists_.push_back(std::move(l));
  }
}

void PolicySetBuilder::LoadBreakers(const Entry& e) {
  if (!Sequence(e, "breakers")) return;
  for (size_t i = 0; i < e.value.size() && !Full(); ++i) {
    const YAML::Node n = e.value[i];
    Pos where = PosOf(n, e.key_pos);
    Entries m;
    if (!ReadMap(
            n, where, "a breaker",
            {"name", "policy", "action", "source", "limit", "window", "relative", "description"},
            &m)) {
      continue;
    }
    BreakerDef b;
    b.line = where.line;
    Pos ref_pos = where;
    const Entry* name = Get(m, "name");
    if (name == nullptr) {
      Error(where, "a breaker needs a name");
    } else if (auto s = Scalar(*name, "breaker name")) {
      b.name = *s;
      if (!IsId(b.name)) {
        Error(PosOf(name->value, where), absl::StrCat("breaker name ", Quoted(b.name),
                                                      " must match [a-z0-9][a-z0-9_-]{0,63}"));
      }
      for (const BreakerDef& o : set_->breakers_) {
        if (o.name == b.name) {
          Error(
              PosOf(name->value, where),
              absl::StrCat("breaker ", b.name, " is declared twice (first on line ", o.line, ")"));
        }
      }
    }
    int scopes = 0;
    for (auto [key, scope] : {std::pair{"policy", BreakerDef::Scope::kPolicy},
                              std::pair{"action", BreakerDef::Scope::kAction},
                              std::pair{"source", BreakerDef::Scope::kSource}}) {
      const Entry* s = Get(m, key);
      if (s == nullptr) continue;
      if (++scopes > 1) {
        Error(s->key_pos,
              "a breaker has one scope: policy:, action: or source: (or none for global)");
        continue;
      }
      if (auto v = Scalar(*s, key)) {
        b.scope = scope;
        b.scope_value = *v;
        ref_pos = PosOf(s->value, s->key_pos);
        if (scope == BreakerDef::Scope::kSource && v->empty()) {
          Error(ref_pos, "breaker source must not be empty");
        }
      }
    }
    const Entry* limit = Get(m, "limit");
    if (limit == nullptr) {
      Error(where, absl::StrCat("breaker ", b.name, " needs a limit"));
    } else if (auto v = Int(*limit, "limit")) {
      if (*v < 1) Error(PosOf(limit->value, where), "breaker limit must be at least 1");
      b.limit = *v;
    }
    const Entry* window = Get(m, "window");
    if (window == nullptr) {
      Error(where, absl::StrCat("breaker ", b.name, " needs a window (e.g. 10m)"));
    } else if (auto d = Duration(*window, "window", false)) {
      b.window = *d;
    }
    if (const Entry* r = Get(m, "relative")) {
      Entries rm;
      if (ReadMap(r->value, r->key_pos, "relative", {"factor", "baseline"}, &rm)) {
        BreakerDef::Relative rel;
        rel.baseline = absl::Hours(24 * 7);
        const Entry* f = Get(rm, "factor");
        if (f == nullptr) {
          Error(r->key_pos, "relative needs a factor (e.g. 3: open at 3x the baseline)");
        } else if (auto v = Double(*f, "factor")) {
          if (*v <= 1) Error(PosOf(f->value, r->key_pos), "relative factor must be greater than 1");
          rel.factor = *v;
        }
        const Entry* bl = Get(rm, "baseline");
        if (bl != nullptr) {
          if (auto d = Duration(*bl, "baseline", false)) rel.baseline = *d;
        }
        // The default (7d) too: a window of 8d has no trailing average to compare with.
        if (rel.baseline <= b.window) {
          Error(
              bl != nullptr ? PosOf(bl->value, r->key_pos) : r->key_pos,
              absl::StrCat("relative baseline (", bl != nullptr ? "" : "the default ",
                           absl::FormatDuration(rel.baseline), ") must be longer than the window"));
        }
        b.relative = rel;
      }
    }
    set_->breakers_.push_back(std::move(b));
    breaker_ref_pos_.push_back(ref_pos);
  }
}

void PolicySetBuilder::LoadPolicies(const Entry& e) {
  if (!Sequence(e, "policies")) return;
  for (size_t i = 0; i < e.value.size() && !Full(); ++i) {
    const YAML::Node n = e.value[i];
    LoadPolicy(n, PosOf(n, e.key_pos), i);
  }
}

// A quoted scalar's value rebuilt from its source as YAML reads it (escapes, '' in single
// quotes, line folding), noting where each byte of it comes from, and one more position
// for its end (the closing quote): `out` maps an offset in the value to the file. False,
// with `out` untouched, if the rebuilt value is not `value` (a form this reader does not
// follow): the caller falls back to the scalar's start.
bool PolicySetBuilder::QuotedPositions(size_t pos, const std::string& value,
                                       std::vector<Position>* out) const {
  auto position = [&](size_t at) {
    // lines_ are views into yaml_: the line holding `at`, by binary search.
    auto it = std::upper_bound(lines_.begin(), lines_.end(), at, [&](size_t a, std::string_view l) {
      return a < static_cast<size_t>(l.data() - yaml_.data());
    });
    const size_t line = static_cast<size_t>(it - lines_.begin()) - 1;
    // The column in characters, as the file's other positions count them.
    int column = 1;
    for (size_t k = static_cast<size_t>(lines_[line].data() - yaml_.data()); k < at; ++k) {
      if ((static_cast<unsigned char>(yaml_[k]) & 0xC0) != 0x80) ++column;
    }
    return Position{static_cast<int>(line) + 1, column, 0};
  };
  const char quote = yaml_[pos];
  std::string text;
  std::vector<size_t> from;  // source offset of each byte of `text`
  size_t keep = 0;           // text.size() after the last byte a line break must not trim
  auto emit = [&](std::string_view bytes, size_t at, bool trimmable) {
    text.append(bytes);
    from.insert(from.end(), bytes.size(), at);
    if (!trimmable) keep = text.size();
  };
  size_t i = pos + 1;
  while (true) {
    if (i >= yaml_.size()) return false;
    const char c = yaml_[i];
    if (c == quote) {
      if (quote == '\'' && i + 1 < yaml_.size() && yaml_[i + 1] == '\'') {
        emit("'", i, false);
        i += 2;
        continue;
      }
      break;
    }
    if (c == '\n' || c == '\r') {
      // Folding: white space before the break goes; the break and the next line's
      // leading white space become one space, or a newline per empty line between.
      text.resize(keep);
      from.resize(keep);
      int empty = 0;
      while (i < yaml_.size() && (yaml_[i] == '\n' || yaml_[i] == '\r')) {
        if (yaml_[i] == '\r' && i + 1 < yaml_.size() && yaml_[i + 1] == '\n') ++i;
        ++i;
        while (i < yaml_.size() && (yaml_[i] == ' ' || yaml_[i] == '\t')) ++i;
        if (i < yaml_.size() && (yaml_[i] == '\n' || yaml_[i] == '\r')) ++empty;
      }
      emit(empty == 0 ? std::string(" ") : std::string(static_cast<size_t>(empty), '\n'), i, true);
      continue;
    }
    if (quote == '"' && c == '\\') {
      if (i + 1 >= yaml_.size()) return false;
      const char e = yaml_[i + 1];
      if (e == '\n' || e == '\r') {  // an escaped line break: nothing, nor the next indent
        i += (e == '\r' && i + 2 < yaml_.size() && yaml_[i + 2] == '\n') ? 3 : 2;
        while (i < yaml_.size() && (yaml_[i] == ' ' || yaml_[i] == '\t')) ++i;
        keep = text.size();
        continue;
      }
      static constexpr std::pair<char, char> kSimple[] = {
          {'n', '\n'}, {'t', '\t'}, {'\t', '\t'}, {'"', '"'},  {'\\', '\\'},
          {'/', '/'},  {'0', '\0'}, {'a', '\a'},  {'b', '\b'}, {'e', '\x1b'},
          {'f', '\f'}, {'r', '\r'}, {'v', '\v'},  {' ', ' '}};
      bool done = false;
      for (const auto& [k, v] : kSimple) {
        if (e == k) {
          emit(std::string_view(&v, 1), i, false);
          i += 2;
          done = true;
          break;
        }
      }
      if (done) continue;
      int digits = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
      uint32_t cp = e == 'N' ? 0x85 : e == '_' ? 0xA0 : e == 'L' ? 0x2028 : e == 'P' ? 0x2029 : 0;
      if (digits == 0 && cp == 0) return false;
      if (digits > 0) {
        if (i + 2 + static_cast<size_t>(digits) > yaml_.size()) return false;
        for (int d = 0; d < digits; ++d) {
          const char h = yaml_[i + 2 + static_cast<size_t>(d)];
          const int v = h >= '0' && h <= '9'   ? h - '0'
                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                               : -1;
          if (v < 0) return false;
          cp = cp << 4 | static_cast<uint32_t>(v);
        }
      }
      std::string utf8;
      if (cp < 0x80) {
        utf8 += static_cast<char>(cp);
      } else if (cp < 0x800) {
        utf8 += static_cast<char>(0xC0 | cp >> 6);
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        utf8 += static_cast<char>(0xE0 | cp >> 12);
        utf8 += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        utf8 += static_cast<char>(0xF0 | cp >> 18);
        utf8 += static_cast<char>(0x80 | (cp >> 12 & 0x3F));
        utf8 += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      }
      emit(utf8, i, false);
      i += 2 + static_cast<size_t>(digits);
      continue;
    }
    emit(std::string_view(&c, 1), i, c != ' ' && c != '\t' ? false : true);
    ++i;
  }
  if (text != value) return false;
  out->clear();
  out->reserve(from.size() + 1);
  for (size_t at : from) out->push_back(position(at));
  out->push_back(position(i));  // the closing quote
  return true;
}

std::string PolicySetBuilder::WhenSource(const YAML::Node& n, const std::string& value,
                                         Position* base, std::vector<Position>* quoted) const {
  YAML::Mark m = n.Mark();
  *base = Position{m.line + 1, m.column + 1, 0};
  if (m.is_null() || m.pos < 0 || static_cast<size_t>(m.pos) >= yaml_.size() ||
      static_cast<size_t>(m.line) >= lines_.size()) {
    return value;
  }
  // The mark is the node's, properties included: a tag (`!!str`) or an anchor (`&a`)
  // comes before the scalar itself, maybe on the line above. Step over them.
  while (yaml_[static_cast<size_t>(m.pos)] == '!' || yaml_[static_cast<size_t>(m.pos)] == '&') {
    auto step = [&] {
      if (yaml_[static_cast<size_t>(m.pos)] == '\n') {
        ++m.line;
        m.column = 0;
      } else {
        ++m.column;
      }
      ++m.pos;
    };
    while (static_cast<size_t>(m.pos) < yaml_.size() &&
           std::string_view(" \t\r\n").find(yaml_[static_cast<size_t>(m.pos)]) ==
               std::string_view::npos) {
      step();
    }
    // Then blanks, line breaks and comments (`!!str  # why` with the scalar below).
    while (static_cast<size_t>(m.pos) < yaml_.size()) {
      const char c = yaml_[static_cast<size_t>(m.pos)];
      if (c == '#') {
        while (static_cast<size_t>(m.pos) < yaml_.size() &&
               yaml_[static_cast<size_t>(m.pos)] != '\n') {
          step();
        }
      } else if (std::string_view(" \t\r\n").find(c) != std::string_view::npos) {
        step();
      } else {
        break;
      }
    }
    if (static_cast<size_t>(m.pos) >= yaml_.size() ||
        static_cast<size_t>(m.line) >= lines_.size()) {
      return value;
    }
    *base = Position{m.line + 1, m.column + 1, 0};
  }
  char first = yaml_[static_cast<size_t>(m.pos)];
  if (first == '"' || first == '\'') {
    // Escapes and folded lines move later characters: positions come from the map (the
    // caller compiles against line 1, column 1 and maps each error back), or, for a form
    // the map does not follow, from just after the quote.
    if (!QuotedPositions(static_cast<size_t>(m.pos), value, quoted)) base->column += 1;
    return value;
  }
  if (first == '|' || first == '>') {
    // A block scalar: take the raw lines so that line:column inside the expression maps
    // back to the file (a folded `>` scalar would otherwise join them).
    size_t line = static_cast<size_t>(m.line) + 1;
    while (line < lines_.size() &&
           lines_[line].find_first_not_of(" \t") == std::string_view::npos) {
      ++line;
    }
    if (line >= lines_.size()) return value;
    size_t indent = lines_[line].find_first_not_of(' ');
    if (indent == 0 || indent == std::string_view::npos) return value;
    std::string text;
    size_t first_line = line;
    for (; line < lines_.size(); ++line) {
      std::string_view l = lines_[line];
      bool blank = l.find_first_not_of(" \t") == std::string_view::npos;
      if (!blank && l.find_first_not_of(' ') < indent) break;
      if (line > first_line) text += '\n';
      if (!blank) text += std::string(l.substr(indent));
    }
    *base = Position{static_cast<int>(first_line) + 1, static_cast<int>(indent) + 1,
                     static_cast<int>(indent)};
    return text;
  }
  // A plain scalar: on one line it is the source text itself.
  std::string_view rest = yaml_.substr(static_cast<size_t>(m.pos));
  if (rest.substr(0, value.size()) == value) return value;
  // A plain scalar folded over several lines: rebuild it with its line breaks. Later lines
  // lose the indentation common to them (reported back through continuation_indent).
  auto squeeze = [](std::string_view s) {
    std::string out;
    for (char c : s) {
      if (c != ' ' && c != '\t' && c != '\n') out += c;
    }
    return out;
  };
  const std::string want = squeeze(value);
  std::vector<std::string_view> parts;
  std::string got;
  size_t line = static_cast<size_t>(m.line);
  parts.push_back(lines_[line].substr(static_cast<size_t>(m.column)));
  got += squeeze(parts.back());
  while (got.size() < want.size() && ++line < lines_.size()) {
    parts.push_back(lines_[line]);
    got += squeeze(lines_[line]);
  }
  if (got != want || parts.size() < 2) return value;
  size_t indent = std::string_view::npos;
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t k = parts[i].find_first_not_of(' ');
    if (k != std::string_view::npos) indent = std::min(indent, k);
  }
  if (indent == std::string_view::npos) indent = 0;
  std::string text(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    text += '\n';
    if (parts[i].size() > indent) text += std::string(parts[i].substr(indent));
  }
  base->continuation_indent = static_cast<int>(indent);
  return text;
}

void PolicySetBuilder::LoadPolicy(const YAML::Node& n, Pos where, size_t index) {
  static const std::vector<std::string_view> kKeys = {"id",         "mode",     "on",
                                                      "when",       "action",   "ttl",
                                                      "rollout",    "escalate", "escalate_window",
                                                      "related",    "delay",    "target",
                                                      "description"};
  Entries m;
  if (!ReadMap(n, where, "a policy", kKeys, &m)) return;
  Policy p;
  p.line = where.line;
  std::string label = absl::StrCat("policy #", index + 1);
  bool ok = true;

  const Entry* id = Get(m, "id");
  if (id == nullptr) {
    Error(where, absl::StrCat(label, " needs an id"));
    ok = false;
  } else if (auto s = Scalar(*id, "id")) {
    p.id = *s;
    label = absl::StrCat("policy ", p.id);
    if (!IsId(p.id)) {
      Error(PosOf(id->value, where),
            absl::StrCat("policy id ", Quoted(p.id), " must match [a-z0-9][a-z0-9_-]{0,63}"));
      ok = false;
    } else if (auto it = set_->by_id_.find(p.id); it != set_->by_id_.end()) {
      Error(PosOf(id->value, where), absl::StrCat("duplicate policy id ", p.id, " (first on line ",
                                                  set_->policies_[it->second].line, ")"));
      ok = false;
    }
  } else {
    ok = false;
  }

  if (const Entry* e = Get(m, "mode")) {
    if (auto s = Scalar(*e, "mode")) {
      if (*s == "enforce") {
        p.mode = Mode::kEnforce;
      } else if (*s == "shadow") {
        p.mode = Mode::kShadow;
      } else if (*s == "off") {
        p.mode = Mode::kOff;
      } else {
        Error(PosOf(e->value, where),
              absl::StrCat("mode ", Quoted(*s), " must be enforce, shadow or off"));
      }
    }
  }

  const Entry* on = Get(m, "on");
  bool on_ok = false;
  if (on == nullptr) {
    Error(where, absl::StrCat(label, " needs `on:` (detection, or an event type such as login)"));
  } else if (auto s = Scalar(*on, "on")) {
    p.on = *s;
    p.on_detection = p.on == "detection";
    on_ok = p.on_detection || IsSnake(p.on, 64);
    if (!on_ok) {
      Error(PosOf(on->value, where),
            absl::StrCat("on: ", Quoted(p.on),
                         " must be detection or an event type ([a-z][a-z0-9_]*)"));
    }
  }

  const core::ActionCatalog& catalog = *set_->catalog_;
  auto check_action = [&](const Entry& e, std::string_view what) -> std::optional<std::string> {
    auto s = Scalar(e, what);
    if (!s) return std::nullopt;
    if (catalog.Find(*s) == nullptr) {
      std::vector<std::string_view> names;
      for (const core::Action& a : catalog.actions()) names.push_back(a.name);
      std::string_view sug = Suggest(*s, names);
      Error(PosOf(e.value, where),
            sug.empty()
                ? absl::StrCat("unknown action ", Quoted(*s), " (the catalog has: ", OneOf(names),
                               ")")
                : absl::StrCat("unknown action ", Quoted(*s), " — did you mean ", AV(sug), "?"));
      return std::nullopt;
    }
    return *s;
  };

  const Entry* action = Get(m, "action");
  if (action == nullptr) {
    Error(where, absl::StrCat(label, " needs an action"));
  } else if (auto a = check_action(*action, "action")) {
    p.action = *a;
    p.ttl = catalog.Find(p.action)->default_ttl;
  }

  if (const Entry* e = Get(m, "ttl")) {
    if (auto d = Duration(*e, "ttl", false)) {
      p.ttl = *d;
      p.ttl_explicit = true;
    }
  }

  if (const Entry* e = Get(m, "rollout")) {
    auto s = Scalar(*e, "rollout");
    if (s) {
      std::string t = *s;
      if (!t.empty() && t.back() == '%') t.pop_back();
      int64_t v = -1;
      if (!absl::SimpleAtoi(t, &v) || v < 0 || v > 100) {
        Error(PosOf(e->value, where),
              absl::StrCat("rollout ", Quoted(*s), " must be a whole percentage from 0 to 100"));
      } else {
        p.rollout = static_cast<int>(v);
      }
    }
  }

  if (const Entry* e = Get(m, "escalate")) {
    if (Sequence(*e, "escalate")) {
      for (size_t i = 0; i < e->value.size(); ++i) {
        const YAML::Node step = e->value[i];
        Pos sp = PosOf(step, e->key_pos);
        Entries sm;
        if (!ReadMap(step, sp, "an escalation step", {"after", "action", "ttl"}, &sm)) continue;
        EscalationStep st;
        const Entry* after = Get(sm, "after");
        const Entry* act = Get(sm, "action");
        if (after == nullptr || act == nullptr) {
          Error(sp, "an escalation step needs `after: N` and `action: A`");
          continue;
        }
        auto a = Int(*after, "after");
        auto name = check_action(*act, "escalation action");
        if (!a || !name) continue;
        if (*a < 1) {
          Error(PosOf(after->value, sp), "escalate after: must be at least 1 (prior hits)");
          continue;
        }
        if (!p.escalate.empty() && *a <= p.escalate.back().after) {
          Error(PosOf(after->value, sp),
                absl::StrCat("escalate steps must be in ascending order of after: ", *a,
                             " follows ", p.escalate.back().after));
          continue;
        }
        st.after = *a;
        st.action = *name;
        st.ttl = catalog.Find(st.action)->default_ttl;
        if (const Entry* t = Get(sm, "ttl")) {
          auto d = Duration(*t, "ttl", false);
          if (!d) continue;
          st.ttl = *d;
        }
        p.escalate.push_back(std::move(st));
      }
    }
  }
  if (const Entry* e = Get(m, "escalate_window")) {
    if (auto d = Duration(*e, "escalate_window", false)) p.escalate_window = *d;
    if (Get(m, "escalate") == nullptr) {
      Error(e->key_pos, "escalate_window without escalate");
    }
  }

  if (const Entry* e = Get(m, "related")) {
    if (on_ok && !p.on_detection) {
      Error(e->key_pos,
            "related: applies to detection policies only (events have no related entities)");
    } else if (e->value.IsScalar()) {
      if (auto b = Bool(*e, "related (true, or a list of entity types)")) p.related_all = *b;
    } else if (auto list = StringList(*e, "related")) {
      for (size_t i = 0; i < list->size(); ++i) {
        if (!IsSnake((*list)[i], 32)) {
          Error(PosOf(e->value[i], e->key_pos),
                absl::StrCat("related: ", Quoted((*list)[i]),
                             " is not an entity type ([a-z][a-z0-9_]{0,31})"));
        } else {
          p.related_types.push_back((*list)[i]);
        }
      }
      if (list->empty())
        Error(PosOf(e->value, e->key_pos), "related: the list of entity types is empty");
    }
  }

  if (const Entry* e = Get(m, "delay")) {
    if (e->value.IsMap()) {
      Entries dm;
      if (ReadMap(e->value, e->key_pos, "delay", {"min", "max"}, &dm)) {
        const Entry* mn = Get(dm, "min");
        const Entry* mx = Get(dm, "max");
        if (mn == nullptr || mx == nullptr) {
          Error(PosOf(e->value, e->key_pos), "delay needs both min and max (or a single duration)");
        } else {
          auto a = Duration(*mn, "delay min", true);
          auto b = Duration(*mx, "delay max", false);
          if (a && b) {
            if (*a > *b) {
              Error(PosOf(mx->value, e->key_pos), "delay max must not be less than min");
            } else {
              p.delay_min = *a;
              p.delay_max = *b;
            }
          }
        }
      }
    } else if (auto d = Duration(*e, "delay", false)) {
      p.delay_min = p.delay_max = *d;
    }
  }

  if (const Entry* e = Get(m, "target")) {
    if (auto s = Scalar(*e, "target")) {
      if (*s == "entity") {
        p.target_attr.clear();
      } else if (on_ok && p.on_detection) {
        Error(PosOf(e->value, where),
              absl::StrCat("target ", Quoted(*s),
                           ": detection policies act on the detection's entity (target: entity); "
                           "use related: to reach linked entities"));
      } else if (!IsFieldRef(*s)) {
        Error(PosOf(e->value, where),
              absl::StrCat("target ", Quoted(*s), " must be entity or attrs.<name>"));
      } else {
        p.target_attr = s->substr(6);
      }
    }
  }

  if (const Entry* e = Get(m, "description")) {
    if (auto s = Scalar(*e, "description")) p.description = *s;
  }

  const Entry* when = Get(m, "when");
  if (when == nullptr) {
    Error(where, absl::StrCat(label, " needs `when:` (write `when: true` to match everything)"));
  } else if (!when->value.IsScalar()) {
    Error(PosOf(when->value, when->key_pos), "when must be an expression (a string)");
  } else if (on_ok) {
    Position base;
    std::vector<Position> quoted;  // for a quoted scalar: the file position of each byte
    p.when = WhenSource(when->value, when->value.Scalar(), &base, &quoted);
    Compilation c =
        CompileWithDiagnostics(p.when, p.on_detection ? Schema::Detection() : Schema::Event(),
                               set_->declarations_, quoted.empty() ? base : Position{});
    for (Diagnostic& d : c.errors) {
      if (Full()) break;
      Pos at{d.line, d.column};
      if (!quoted.empty()) {  // line:column in the value -> its byte -> the file
        size_t offset = 0;
        for (int line = 1; line < d.line && offset < p.when.size(); ++offset) {
          if (p.when[offset] == '\n') ++line;
        }
        // Columns count characters (the lexer's), offsets bytes: step over UTF-8 ones.
        for (int col = 1; col < d.column && offset < p.when.size(); ++col) {
          ++offset;
          while (offset < p.when.size() &&
                 (static_cast<unsigned char>(p.when[offset]) & 0xC0) == 0x80) {
            ++offset;
          }
        }
        at = Pos{quoted[offset].line, quoted[offset].column};
      }
      Error(at, absl::StrCat("when: ", d.message));
    }
    p.program = std::move(c.program);
    p.uses_evidence = p.when.find(p.on_detection ? "evidence" : "attrs") != std::string::npos;
    // `detection.type == "bto"` with types declared: a typo the set would never let match
    // (such a detection is refused at the door), so the policy could never fire.
    if (p.program != nullptr && p.on_detection && !set_->detection_types_.empty() &&
        p.program->detection_types().has_value()) {
      for (const std::string& t : *p.program->detection_types()) {
        if (std::find(set_->detection_types_.begin(), set_->detection_types_.end(), t) ==
            set_->detection_types_.end()) {
          Error(PosOf(when->value, when->key_pos),
                absl::StrCat("when: detection type ", Quoted(t), " is not in detection_types (",
                             absl::StrJoin(set_->detection_types_, ", "),
                             "): such detections are refused, so this could never match"));
        }
      }
    }
  }

  if (ok) set_->by_id_.emplace(p.id, static_cast<uint32_t>(set_->policies_.size()));
  set_->policies_.push_back(std::move(p));
}

void PolicySetBuilder::CheckBreakerRefs() {
  for (size_t i = 0; i < set_->breakers_.size(); ++i) {
    const BreakerDef& b = set_->breakers_[i];
    if (b.scope == BreakerDef::Scope::kPolicy &&
        set_->by_id_.find(b.scope_value) == set_->by_id_.end()) {
      Error(breaker_ref_pos_[i],
            absl::StrCat("breaker ", b.name, ": unknown policy ", Quoted(b.scope_value)));
    }
    if (b.scope == BreakerDef::Scope::kAction && set_->catalog_->Find(b.scope_value) == nullptr) {
      Error(breaker_ref_pos_[i],
            absl::StrCat("breaker ", b.name, ": unknown action ", Quoted(b.scope_value)));
    }
  }
}

void PolicySetBuilder::BuildIndex() {
  PolicySet& s = *set_;
  absl::flat_hash_set<std::string> types;
  for (uint32_t i = 0; i < s.policies_.size(); ++i) {
    const Policy& p = s.policies_[i];
    if (p.mode == Mode::kOff) continue;
    if (!p.on_detection) {
      s.event_by_type_[p.on].push_back(i);
      continue;
    }
    s.detection_all_.push_back(i);
    const auto& guard = p.program->detection_types();
    if (!guard.has_value()) {
      s.detection_unguarded_.push_back(i);
    } else {
      for (const std::string& t : *guard) types.insert(t);
    }
  }
  for (const std::string& t : types) {
    std::vector<uint32_t>& v = s.detection_by_type_[t];
    for (uint32_t i : s.detection_all_) {
      const auto& guard = s.policies_[i].program->detection_types();
      if (!guard.has_value() || std::binary_search(guard->begin(), guard->end(), t)) {
        v.push_back(i);
      }
    }
  }
}

LoadResult LoadPolicySetWithDiagnostics(std::string_view yaml, int64_t version) {
  PolicySetBuilder builder(yaml, version);
  return builder.Load();
}

absl::StatusOr<std::shared_ptr<const PolicySet>> LoadPolicySet(std::string_view yaml,
                                                               int64_t version) {
  LoadResult r = LoadPolicySetWithDiagnostics(yaml, version);
  if (r.set != nullptr) return std::shared_ptr<const PolicySet>(std::move(r.set));
  std::vector<std::string> lines;
  for (const Diagnostic& d : r.errors) lines.push_back(d.ToString());
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

}  // namespace quell::policy
