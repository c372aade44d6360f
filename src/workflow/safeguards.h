// The safeguards between a decision and its enforcement (issue 5), as the decision path
// uses them inside the ledger transaction: protected entities (lists flagged protected,
// by the store or by the policy set), blast-radius breakers (the policy set's, with their
// open/closed state kept in the ledger as kBreaker changes so it survives restarts), and
// immunity (a human rejected, revoked or granted an appeal against the same policy and
// action on the entity within `immunity`; for an ip: or cidr: entity, on any ip: or cidr:
// entity its network overlaps: a block of 10.0.0.0/24 would re-block the 10.0.0.7 a person
// cleared). A held decision becomes pending_approval.
//
// State is a view of the ledger: Load() reads it at start, OnCommitted() follows every
// committed change. List changes made by the lists routes are also noted at once on the
// commit thread (NoteProtectedAdds), so a decision later in the same commit batch already
// sees a new protected entry; removals take effect once committed (never less protection).
// Breaker window counts live in memory (Load counts the ledger's recent decisions again). They
// count the decisions of every node writing the ledger: this process's own when Screen passes them,
// every other node's when OnCommitted sees their creations (several nodes on one PostgreSQL,
// docs/cluster.md). Screen notes the seq its decision's change will get, so that the change, when
// it comes back through the feed, is recognised and not counted twice; and when the changes
// committed since the last one seen (not delivered yet) could take a breaker past its limit, it
// reads them from the store first.
//
// Thread-safety: thread-safe (one mutex); Screen/ResetBreaker/NoteProtectedAdds run on
// the commit thread, readers (status routes, metrics) on any thread. Near a breaker's
// limit Screen holds the mutex over one read of the store (see Screen).
#ifndef QUELL_WORKFLOW_SAFEGUARDS_H_
#define QUELL_WORKFLOW_SAFEGUARDS_H_

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_set.h"
#include "absl/time/time.h"
#include "core/entity_list.h"
#include "engine/engine.h"
#include "ledger/ledger.h"
#include "policy/policy_set.h"
#include "safeguards/breakers.h"
#include "safeguards/protected.h"
#include "workflow/rollback.h"

namespace quell::obs {
class Logger;
}

namespace quell::workflow {

struct SafeguardOptions {
  absl::Duration immunity = absl::Hours(24 * 30);    // human decisions outrank automatic ones
  absl::Duration pending_ttl = absl::Hours(24 * 7);  // pending approvals expire after it
  // Manual actions over more entities (a network's IPv4 addresses or IPv6 /64s) need
  // approval: by default a /16 passes, a /15 waits.
  int64_t bulk_threshold = 65536;
  absl::Duration sweep_interval = absl::Seconds(30);  // pending expiry + idempotency purge
  absl::Duration idempotency_retention = absl::Hours(24);
};

// The entity the ledger files breaker changes under (their timeline).
inline constexpr std::string_view kBreakerJournal = "quell:breakers";

class Safeguards final : public ledger::ChangeListener {
 public:
  // `logger` may be null.
  Safeguards(SafeguardOptions options, obs::Logger* logger);

  // Whether changes can commit before OnCommitted hears of them.
  enum class Delivery {
    // This object is a kCommitted listener of the only ledger that writes the store: every
    // committed change reaches OnCommitted before the next transaction runs.
    kLocal,
    // Other nodes write the store too and a change feed delivers their changes later:
    // Screen reads the undelivered ones from the store when they could open a breaker.
    kFeed,
  };
  //! Reads lists, breaker states, recent human decisions and rollback requests from the
  //! store. Call before the ledger takes writes. When `set` (the policy set in force; may
  //! be null) has breakers, the decisions of the changes committed within the last 24
  //! hours, or twice its longest breaker window if longer (of the ledger's last 100,000
  //! changes at most), are counted again, so that a restart or a resumed import does not
  //! start the windows empty (decisions before a breaker's last reset are not counted in
  //! it). A breaker a later set adds, or whose window, baseline, factor or scope it
  //! changes, counts the decisions of those 24 hours (or its window; the newest 100,000)
  //! this object has seen again. Relative breakers' baselines restart with what those
  //! hold.
  absl::Status Load(ledger::Store& store, absl::Time now, Delivery delivery,
                    const policy::PolicySet* set = nullptr);
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  struct Hold {
    bool held = false;
    std::string reason;
  };
  //! Decides whether proposal `p` of detection `d`, which would create `action`, must be
  //! held for approval. Counts it in the breakers in scope if it creates a mitigation
  //! (not if it will extend the live one of the same entity and action, found through
  //! txn.FindLive; an open breaker in scope holds it all the same); a breaker that opens
  //! appends its kBreaker change to `txn`. Shadow proposals are never held nor counted.
  //! With Delivery::kFeed, when the changes committed after the last one OnCommitted saw
  //! could take a breaker past its limit, it first reads them from Load's store (one
  //! query). The caller
  //! appends the decision's change next (its seq is txn.NextSeq() on return).
  absl::StatusOr<Hold> Screen(ledger::Txn& txn, const policy::PolicySet& set,
                              const engine::Detection& d, const engine::Proposal& p,
                              std::string_view action, absl::Time now);

  //! The breakers of `set` with their state.
  std::vector<safeguards::BreakerStatus> Breakers(const policy::PolicySet& set, absl::Time now);
  //! A copy of the breakers of `set` with their counts and states, to play decisions on
  //! without deciding them (the import's impact preview).
  safeguards::BreakerBank BreakerBankFor(const policy::PolicySet& set);
  //! Closes breaker `name` (and appends the kBreaker change). kNotFound if `set` has no
  //! such breaker; an already closed one is closed again (recorded, harmless).
  ledger::Mutation ResetBreaker(std::shared_ptr<const policy::PolicySet> set, std::string name,
                                std::string actor, std::shared_ptr<safeguards::BreakerStatus> out);

  //! Notes the immunity a person's revocation or rejection of `m` (its state after it)
  //! gives, from `at`, before the change commits: for a transaction that holds the
  //! decision and then screens others (Context::NotingHumanDecisions). Other states are
  //! ignored.
  void NoteHumanDecisionNow(const core::Mitigation& m, absl::Time at);
  //! Why `e` is protected under `set`, or nullopt.
  std::optional<std::string> WhyProtected(const policy::PolicySet& set, const core::Entity& e);
  //! The lists that hold `e` itself (from the followed ledger), by name.
  std::vector<std::string> Memberships(const core::Entity& e) const;
  //! True if `e` is on list `list` (core::EntityList: held, or an ip:/cidr: inside a cidr:
  //! entry), as of the followed ledger (with the entries noted by NoteProtectedAdds): what
  //! a live evaluation's in_list() reads.
  bool ListHas(std::string_view list, const core::Entity& e) const;
  //! Commit thread, inside a list mutation: entries added to `list` count at once.
  void NoteProtectedAdds(std::string_view list, const std::vector<std::string>& entities);
  //! Why a decision of `policy` / `action` on `entity` is held for immunity running at
  //! `now` (its own, or an overlapping network's), or nullopt: the reason Screen gives,
  //! and the scheduler's hold at a delayed decision's start.
  std::optional<std::string> WhyImmune(std::string_view entity, std::string_view policy,
                                       std::string_view action, absl::Time now) const;

  const SafeguardOptions& options() const { return options_; }
  //! The rollback requests awaiting (or past) approval; loaded and followed with the rest.
  RollbackRequests& rollbacks() { return rollbacks_; }

  struct Metrics {
    std::atomic<int64_t> held_protected{0};
    std::atomic<int64_t> held_breaker{0};
    std::atomic<int64_t> held_immunity{0};
    std::atomic<int64_t> breakers_opened{0};
    std::atomic<int64_t> pending_expired{0};
    std::atomic<int64_t> remote_decisions{0};  // other nodes' creations counted
  };
  Metrics& metrics() { return metrics_; }

 private:
  void ApplyListChange(const ledger::Change& c);                            // mu_ held
  void ApplyBreakerChange(const ledger::Change& c);                         // mu_ held
  void NoteHumanDecision(const core::Mitigation& m, absl::Time at);         // mu_ held
  void NoteHumanDecision(std::string_view entity, std::string_view policy,  // mu_ held
                         std::string_view action, absl::Time at);
  const safeguards::ProtectedSet& ProtectedFor(const policy::PolicySet& set);  // mu_ held
  void ConfigureBreakers(const policy::PolicySet& set);                        // mu_ held
  // `recounted`: read by Load, not another node's news (not in the metrics).
  void NoteMitigationChange(const ledger::Change& c, bool recounted = false);  // mu_ held
  // `noted`: Screen counted it and kept it in recent_.
  void NoteLocal(int64_t seq, const engine::Detection& d, bool noted);  // mu_ held
  void ReplayRecent();  // mu_ held; ConfigureBreakers' first configuration
  void CatchUp(ledger::Txn& txn, const safeguards::DecisionKey& key, absl::Time now);  // mu_

  const SafeguardOptions options_;
  obs::Logger* logger_;
  Metrics metrics_;
  RollbackRequests rollbacks_;  // its own lock

  mutable std::mutex mu_;
  // Lists (all of them: a list may become protected later).
  std::map<std::string, core::EntityList, std::less<>> lists_;
  std::set<std::string, std::less<>> store_protected_;  // lists flagged protected in the store
  int64_t lists_version_ = 0;                           // bumps on every list change
  std::shared_ptr<const safeguards::ProtectedSet> protected_ = safeguards::ProtectedSet::Empty();
  int64_t protected_built_lists_ = -1;  // lists_version_ protected_ was built from
  int64_t protected_built_set_ = -1;    // policy set version it was built for
  // Breakers.
  safeguards::BreakerBank bank_;
  int64_t breakers_set_ = -1;  // policy set version the bank was configured from
  struct Persisted {
    bool open = false;
    absl::Time at;
    std::string reason;
    int64_t count = -1;  // open: the count it opened at (-1: not in the change)
  };
  std::map<std::string, Persisted, std::less<>> persisted_;  // the ledger's latest per breaker
  // Decisions Screen passed (counted, or with no breaker in the set not) whose change
  // has not come back yet, in seq order: the seq it predicted (Txn::NextSeq) and what
  // identifies the creation there; at most kMaxLocal, the newest. An entry goes
  // when OnCommitted reaches its seq, whoever's change that is (a rolled-back decision
  // leaves its seq to another change).
  struct LocalDecision {
    int64_t seq = 0;
    std::string source, detection;
    bool noted = false;  // in recent_ already (counted by Screen)
  };
  std::deque<LocalDecision> local_;
  // The decisions breakers count (creations) of the last recent_horizon_, at most
  // kMaxRecent, the newest, as the ledger brought them: this node's, other nodes', Load's
  // recount of the ledger. The bank counts them when it is first configured (the first set
  // with breakers), and a breaker a later set adds or reshapes counts them again, so that
  // neither starts empty. Their names are interned in names_ (policies, actions, sources:
  // a few dozen).
  struct RecentDecision {
    std::string_view policy, action, source;
    absl::Time at;
  };
  void NoteRecent(std::string_view policy, std::string_view action, std::string_view source,
                  absl::Time at);  // mu_ held
  std::deque<RecentDecision> recent_;
  absl::node_hash_set<std::string> names_;
  size_t names_compact_at_;        // names_ drops the unused names past this many
  absl::Duration recent_horizon_;  // kRecentHorizon, or the set's longest window if longer
  // With Delivery::kFeed, the store Load read (borrowed; the ledger's, which outlives
  // this): Screen reads from it the changes the feed has not delivered yet when they could
  // open a breaker. Null with kLocal: there are none.
  ledger::Store* store_ = nullptr;
  // The last seq whose decisions the breakers have seen (delivered, or read by Screen;
  // the store's last at Load, which counts the recent ones again).
  int64_t seen_ = 0;
  std::optional<std::string> WhyImmuneLocked(std::string_view entity, std::string_view policy,
                                             std::string_view action,
                                             absl::Time now) const;  // mu_ held
  // Immunity of entities other than ip: and cidr:: "entity|policy|action" -> until.
  absl::flat_hash_map<std::string, absl::Time> immunity_;
  // Immunity of ip: and cidr: entities, by "policy|action", as networks (an ip: as a /32
  // or /128) that a decision's network is checked against, its own included; an ended one
  // is dropped when another is noted for the same policy and action.
  struct NetImmunity {
    core::Network net;
    std::string entity;
    absl::Time until;
  };
  absl::flat_hash_map<std::string, std::vector<NetImmunity>> net_immunity_;
};

}  // namespace quell::workflow

#endif  // QUELL_WORKFLOW_SAFEGUARDS_H_
