// Blast-radius breakers (issue 5 item 2). A breaker counts the automatic decisions in its
// scope (every decision, one policy, one action or one source) over a sliding window.
// When the count exceeds `limit` — and, with a relative limit, also `factor` times the
// average count of one window over the trailing baseline (e.g. 7d) — the breaker opens:
// that decision and every further one in scope are held for approval until an admin
// resets it. So at most `limit` decisions per window pass a closed breaker.
//
// Windows are approximated with buckets of window/16 (wider for a relative breaker whose
// baseline needs more than 20,000 of them): the count covers the current bucket and the
// whole ones before it that span the window, so it may include up to one bucket of
// decisions older than the window, never fewer than the window's.
//
// With several nodes (docs/cluster.md) each node's bank also counts the decisions the
// other nodes made (CountRemote, from the ledger's change feed), so the limit applies to
// the cluster's decisions in all.
//
// Thread-safety: BreakerBank is not thread-safe; its owner serialises access (the
// commit thread, under workflow::Safeguards' mutex). Pure: time comes from the caller.
#ifndef QUELL_SAFEGUARDS_BREAKERS_H_
#define QUELL_SAFEGUARDS_BREAKERS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace quell::safeguards {

struct BreakerSpec {
  enum class Scope : uint8_t { kGlobal, kPolicy, kAction, kSource };
  std::string name;
  Scope scope = Scope::kGlobal;
  std::string scope_value;  // policy id, action or source; "" for global
  int64_t limit = 0;
  absl::Duration window = absl::Minutes(10);
  double factor = 0;                               // > 0: relative limit on
  absl::Duration baseline = absl::ZeroDuration();  // trailing period for the relative limit
};
std::string_view ScopeName(BreakerSpec::Scope s);

// What a decision is, for scoping.
struct DecisionKey {
  std::string_view policy, action, source;
};

struct BreakerStatus {
  BreakerSpec spec;
  bool open = false;
  int64_t count = 0;  // decisions in the current window
  absl::Time opened_at = absl::InfinitePast();
  std::string reason;  // why it opened
};

class BreakerBank {
 public:
  //! Installs the declared breakers; a breaker whose name survives keeps its state and
  //! counts (its spec is updated), others are dropped. Returns the names of those that
  //! start with no counts: new ones, and those whose window, baseline, factor or scope
  //! changed (their counts were of another shape). CountIn fills them again.
  std::vector<std::string> Configure(std::vector<BreakerSpec> specs);

  struct Outcome {
    std::string held_by;              // "" = no breaker holds it; else the (first) open one
    std::vector<std::string> opened;  // breakers this very decision opened
  };
  //! Counts one decision at `now` in every breaker in scope and says whether a breaker
  //! holds it: one already open in scope, or one this decision would take past its limit
  //! (it opens). A held decision creates nothing and is counted in no breaker.
  Outcome Record(const DecisionKey& key, absl::Time now);
  //! The first open breaker in scope of `key`, or "": for a decision that is held by an
  //! open breaker but would not be counted by a closed one.
  std::string HeldBy(const DecisionKey& key) const;
  //! Counts one decision made elsewhere (another node, read from the ledger) at `at` in
  //! every closed breaker in scope, in the bucket of `at` (older than every window kept:
  //! not counted). Never opens a breaker: the next Record in scope sees the count past
  //! the limit and opens it.
  void CountRemote(const DecisionKey& key, absl::Time at);
  //! As CountRemote, in the breaker `name` only (if closed and `key` is in its scope).
  void CountIn(std::string_view name, const DecisionKey& key, absl::Time at);
  //! Whether counting one decision of `key` at `now` plus `more` others could take a
  //! closed breaker in scope past its limit (the plain limit: a relative breaker may
  //! still stay closed). Cheap; for deciding whether unseen decisions must be read first.
  bool MayTrip(const DecisionKey& key, absl::Time now, int64_t more) const;

  //! Forces a breaker's state (ledger replay at start, admin reset). Reset clears the
  //! counts. An open breaker shows `count`, the count it opened at (the ledger's change
  //! has it; -1: unknown, its window's count). Returns false if there is no such breaker.
  bool SetOpen(std::string_view name, bool open, absl::Time at, std::string reason,
               int64_t count = -1);
  //! Every breaker, by name.
  std::vector<BreakerStatus> Status(absl::Time now) const;
  std::optional<BreakerStatus> Find(std::string_view name, absl::Time now) const;
  bool any_open() const;
  bool empty() const { return breakers_.empty(); }

  static bool InScope(const BreakerSpec& spec, const DecisionKey& key);

 private:
  struct State {
    BreakerSpec spec;
    bool open = false;
    absl::Time opened_at = absl::InfinitePast();
    std::string reason;
    int64_t opened_count = -1;  // open: the count it opened at, shown while open (-1: none)
    absl::Duration bucket;      // bucket width
    std::deque<std::pair<int64_t, int64_t>> buckets;  // (bucket index, count), ascending
    int64_t total = 0;                                // sum of `buckets`
  };
  static void Init(State& s);
  static int64_t KeepBuckets(const State& s);
  static void Evict(State& s, int64_t now_idx);
  static void CountAt(State& s, absl::Time at);  // CountRemote's count in one breaker
  static int64_t WindowCount(const State& s, int64_t now_idx);
  static BreakerStatus ToStatus(const State& s, absl::Time now);

  std::map<std::string, State, std::less<>> breakers_;
};

}  // namespace quell::safeguards

#endif  // QUELL_SAFEGUARDS_BREAKERS_H_
