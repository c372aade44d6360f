// Actions: what a mitigation does, from the configured catalog (SPEC "Names").
//
// Thread-safety: ActionCatalog is immutable after construction and safe to share
// (`std::shared_ptr<const ActionCatalog>`).
#ifndef QUELL_CORE_ACTION_H_
#define QUELL_CORE_ACTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::core {

// The effect of an action on `check`. Ordered: a higher value wins.
enum class Verdict : uint8_t { kAllow = 0, kThrottle = 1, kChallenge = 2, kDeny = 3 };
std::string_view VerdictName(Verdict v);
std::optional<Verdict> ParseVerdict(std::string_view name);

enum class Severity : uint8_t { kLow = 0, kMedium = 1, kHigh = 2, kCritical = 3 };
std::string_view SeverityName(Severity s);
std::optional<Severity> ParseSeverity(std::string_view name);

struct Action {
  std::string name;
  Verdict verdict = Verdict::kAllow;
  Severity severity = Severity::kLow;
  absl::Duration default_ttl = absl::Hours(24);
  // Surfaces the action applies to (payout, charts, login, stream...). Empty: all.
  std::vector<std::string> surfaces;

  // True if the action applies to `surface` ("" means the caller asked about every surface).
  bool AppliesTo(std::string_view surface) const;
  // The longest surface a check may name, on every path (HTTP GET and POST, gRPC).
  static constexpr size_t kMaxSurfaceBytes = 64;
};

// The action catalog. Each action has a small dense id (its position) so that hot
// structures can store a uint16_t instead of a name.
class ActionCatalog {
 public:
  // Validates names ([a-z][a-z0-9_]{0,63}, unique) and builds the catalog.
  // kInvalidArgument names the offending action.
  static absl::StatusOr<std::shared_ptr<const ActionCatalog>> Create(std::vector<Action> actions);
  // The music-streaming example catalog of SPEC, used when no configuration is given.
  static std::shared_ptr<const ActionCatalog> Default();

  const std::vector<Action>& actions() const { return actions_; }
  // nullptr if unknown.
  const Action* Find(std::string_view name) const;
  std::optional<uint16_t> IdOf(std::string_view name) const;
  const Action& at(uint16_t id) const { return actions_[id]; }
  size_t size() const { return actions_.size(); }

 private:
  std::vector<Action> actions_;
  absl::flat_hash_map<std::string, uint16_t> by_name_;
};

}  // namespace quell::core

#endif  // QUELL_CORE_ACTION_H_
