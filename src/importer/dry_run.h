// The impact preview of `quell import --dry-run`: every row is evaluated against the
// active (or a given) policy set and the state of the data directory, and the would-be
// decisions are tallied — nothing is written.
//
// Counted per (entity, action) once, as the real import would create one mitigation and
// extend it for the repeats: "new" (would be mitigated, per action and per policy),
// "already" (the same action is active on the entity now), "protected" (the entity is on
// a protected list: would go to review), "shadow" (shadow policies: recorded, never
// enforced). Escalation counts earlier hits in the store and in the file, and active() and
// prior() see the mitigations the file's earlier rows would create. Breakers: the
// new mitigations per breaker scope (global, policy, action, source) against the set's
// limits; a breaker "would open" when this import alone exceeds its limit.
//
// Thread-safety: confined to one thread. Borrows the store (may be null: empty state).
#ifndef QUELL_IMPORTER_DRY_RUN_H_
#define QUELL_IMPORTER_DRY_RUN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "core/entity_list.h"
#include "engine/engine.h"
#include "ledger/store.h"
#include "policy/policy_set.h"
#include "safeguards/breakers.h"
#include "safeguards/protected.h"
#include "workflow/safeguards.h"

namespace quell::importer {

struct BreakerImpact {
  std::string name;
  std::string scope;  // "global", "policy bot-x", "action suspend", "source s"
  int64_t limit = 0;
  std::string window;
  int64_t count_now = 0;    // decisions in its window now (the store's)
  bool open_now = false;    // open already: every decision in its scope waits for approval
  int64_t would_add = 0;    // this import's new mitigations counted in it
  bool would_open = false;  // this import would open it
  int64_t would_hold = 0;   // this import's decisions it would hold for approval
};

struct DryRunReport {
  bool policy_set = false;     // false: no policy set (nothing would be mitigated)
  int64_t policy_version = 0;  // 0: none, or a --policies file's (not published)
  int64_t seq = 0;             // the ledger seq seen (unchanged by a dry run)
  int64_t rows = 0;            // valid rows read
  // Rows the import would report duplicate (their (source, id) stored already, or earlier
  // in the input): evaluated by nobody, as the import would not decide them.
  int64_t duplicates = 0;
  int64_t new_total = 0;
  std::map<std::string, int64_t> new_by_action;
  std::map<std::string, int64_t> new_by_policy;
  int64_t already = 0;
  int64_t protected_ = 0;
  std::map<std::string, int64_t> protected_by_list;
  // Decisions held for a person's revocation, rejection or granted appeal of the policy's
  // action on the entity (immunity): pending approvals, one per entity and action.
  int64_t immune = 0;
  int64_t shadow = 0;  // shadow decisions (each recorded: never extended)
  // Decisions a breaker would hold for approval (open now, or opened by this import),
  // as the import would: not among `new`.
  int64_t held = 0;
  std::map<std::string, int64_t> held_by_breaker;
  std::vector<BreakerImpact> breakers;
};

class DryRun {
 public:
  //! `store` may be null (no data directory). Loads list memberships once. `safeguards`:
  //! the options a server on that ledger runs with (immunity, pending_ttl).
  static absl::StatusOr<std::unique_ptr<DryRun>> Create(
      std::shared_ptr<const policy::PolicySet> set, ledger::Store* store,
      const workflow::SafeguardOptions& safeguards);
  void Add(const engine::Detection& d);
  DryRunReport Report() const;

 private:
  class Env;
  DryRun(std::shared_ptr<const policy::PolicySet> set, ledger::Store* store);
  bool IsProtected(const core::Entity& entity, std::string* list) const;
  // A mitigation of `entity` and `action` in `state`, live now, in the store.
  bool StoreHasLive(const core::Entity& entity, const std::string& action,
                    core::MitigationState state) const;

  std::shared_ptr<const policy::PolicySet> set_;
  ledger::Store* store_;
  absl::Time now_;
  // Every list of the store, for in_list() and the protected lists' exact members.
  absl::flat_hash_map<std::string, core::EntityList> lists_;
  // Each protected list's entries, matched as the safeguard matches (an ip inside a cidr).
  std::vector<std::pair<std::string, std::shared_ptr<const safeguards::ProtectedSet>>>
      protected_sets_;
  std::vector<std::string> protected_lists_;
  // "entity\naction\nstate": live mitigations the file's rows would create (extended by
  // the later ones), and the store's ones counted as "already".
  absl::flat_hash_set<std::string> file_live_, already_;
  absl::flat_hash_map<std::string, int64_t> hits_;  // "entity\npolicy" -> hits in this file
  // What the file's earlier rows would create, for active() and prior() of the later ones
  // ("entity\naction"): active (new, not held) ones, and every creation with its count.
  absl::flat_hash_set<std::string> file_active_;
  absl::flat_hash_map<std::string, int64_t> file_created_;
  // Hashes of the first kMaxKeys (source, id) read, for repeats within the input (a
  // collision counts one row as a duplicate in the preview only). Bounded: the preview's
  // memory must not grow with the file; repeats past that many rows go uncounted.
  static constexpr size_t kMaxKeys = size_t{1} << 21;  // ~40 MB
  absl::flat_hash_set<uint64_t> keys_;
  DryRunReport report_;
  // The store's breakers, counts and states (Safeguards::Load), played on as the import
  // would decide: a decision an open breaker holds creates nothing and counts in none.
  std::optional<safeguards::BreakerBank> bank_;
  std::vector<safeguards::BreakerStatus> breakers_before_;
  std::set<std::string> opened_;
  absl::flat_hash_set<std::string> held_;     // "entity\naction" held (pending), counted once
  std::unique_ptr<workflow::Safeguards> sg_;  // immunity, breakers (as a server starts)
  absl::Duration pending_ttl_;
};

//! Text for people (several lines) and JSON.
std::string DryRunText(const DryRunReport& r);
std::string DryRunJson(const DryRunReport& r);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_DRY_RUN_H_
