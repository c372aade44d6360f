#include "core/action.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::core {

std::string_view VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kAllow:
      return "allow";
    case Verdict::kThrottle:
      return "throttle";
    case Verdict::kChallenge:
      return "challenge";
    case Verdict::kDeny:
      return "deny";
  }
  return "allow";
}

std::optional<Verdict> ParseVerdict(std::string_view name) {
  for (Verdict v : {Verdict::kAllow, Verdict::kThrottle, Verdict::kChallenge, Verdict::kDeny}) {
    if (VerdictName(v) == name) return v;
  }
  return std::nullopt;
}

std::string_view SeverityName(Severity s) {
  switch (s) {
    case Severity::kLow:
      return "low";
    case Severity::kMedium:
      return "medium";
    case Severity::kHigh:
      return "high";
    case Severity::kCritical:
      return "critical";
  }
  return "low";
}

std::optional<Severity> ParseSeverity(std::string_view name) {
  for (Severity s : {Severity::kLow, Severity::kMedium, Severity::kHigh, Severity::kCritical}) {
    if (SeverityName(s) == name) return s;
  }
  return std::nullopt;
}

bool Action::AppliesTo(std::string_view surface) const {
  return surface.empty() || surfaces.empty() ||
         std::find(surfaces.begin(), surfaces.end(), surface) != surfaces.end();
}

absl::StatusOr<std::shared_ptr<const ActionCatalog>> ActionCatalog::Create(
    std::vector<Action> actions) {
  auto catalog = std::shared_ptr<ActionCatalog>(new ActionCatalog());
  if (actions.empty()) return absl::InvalidArgumentError("the action catalog is empty");
  if (actions.size() > 1000) return absl::InvalidArgumentError("more than 1000 actions");
  for (size_t i = 0; i < actions.size(); ++i) {
    const std::string& n = actions[i].name;
    bool ok = !n.empty() && n.size() <= 64 && n[0] >= 'a' && n[0] <= 'z';
    for (char c : n) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("action name \"", n, "\" must match [a-z][a-z0-9_]{0,63}"));
    }
    if (actions[i].default_ttl <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat("action ", n, ": ttl must be positive"));
    }
    if (!catalog->by_name_.emplace(n, static_cast<uint16_t>(i)).second) {
      return absl::InvalidArgumentError(absl::StrCat("action ", n, " is declared twice"));
    }
  }
  catalog->actions_ = std::move(actions);
  return std::shared_ptr<const ActionCatalog>(std::move(catalog));
}

std::shared_ptr<const ActionCatalog> ActionCatalog::Default() {
  static const auto* catalog = [] {
    auto d = [](int days) { return absl::Hours(24 * days); };
    std::vector<Action> a = {
        {"exclude_royalties", Verdict::kAllow, Severity::kMedium, d(90), {"payout"}},
        {"remove_from_charts", Verdict::kAllow, Severity::kMedium, d(30), {"charts"}},
        {"flag", Verdict::kAllow, Severity::kLow, d(7), {}},
        {"challenge", Verdict::kChallenge, Severity::kLow, d(1), {"login", "stream"}},
        {"throttle", Verdict::kThrottle, Severity::kLow, absl::Hours(6), {"stream", "login"}},
        {"force_password_reset", Verdict::kChallenge, Severity::kHigh, d(1), {"login"}},
        {"shadow_ban", Verdict::kAllow, Severity::kHigh, d(30), {"charts", "payout"}},
        {"suspend", Verdict::kDeny, Severity::kCritical, d(30), {}},
        {"block", Verdict::kDeny, Severity::kHigh, d(7), {}},
    };
    return new std::shared_ptr<const ActionCatalog>(*Create(std::move(a)));
  }();
  return *catalog;
}

const Action* ActionCatalog::Find(std::string_view name) const {
  auto it = by_name_.find(AV(name));
  return it == by_name_.end() ? nullptr : &actions_[it->second];
}

std::optional<uint16_t> ActionCatalog::IdOf(std::string_view name) const {
  auto it = by_name_.find(AV(name));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

}  // namespace quell::core
