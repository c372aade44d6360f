// Backtesting (SPEC POST /v1/policies/backtest, `quell policy backtest`): replay the stored
// detections of a time window against a candidate policy set and compare, per policy, what
// the candidate would decide with what was decided when each detection arrived (the
// stored per-item reply).
//
//   engine::Backtester bt(candidate, std::move(lists), {.from = f, .to = t});
//   store.ScanDetections(f, t, [&](const ledger::StoredDetection& d) {
//     return bt.Add(engine::ReplayRecordOf(d)); });
//   engine::BacktestReport report = bt.Finish();
//
// or, in one call over a ledger store, RunBacktest(store, candidate, options).
//
// What is compared, for each detection, at the level of (entity, action) pairs:
//   - stored: the decisions of the stored reply in state active, scheduled or
//     pending_approval (shadow, suppressed and rejected ones enforce nothing);
//   - candidate: the proposals of engine::Evaluate, escalated in the replay (below);
//   - newly mitigated: a candidate enforce decision (P, e, a) where the stored reply had
//     no enforcing decision on (e, a) — counted for the candidate policy P;
//   - no longer mitigated: a stored enforcing decision of policy P on (e, a) where the
//     candidate makes no enforce decision on (e, a) — counted for the stored policy P
//     (which may be absent from the candidate: a removed policy gets its own row);
//   - unchanged: a candidate enforce decision on (e, a) that the stored reply also had;
//   - shadow: a candidate decision of a shadow-mode policy (never enforced).
// Each bucket has `decisions` (detection-level hits) and `entities` (distinct entities,
// counted by a 64-bit hash of the entity text), `protected_entities` (of those, how many
// are on a protected list) and up to `samples` example entities.
//
// The replay is pure over its inputs: the candidate set, the records, and the lists. Its
// clock is each detection's observed_at. The policy::Environment it evaluates with
// answers from the replay's own state, never from the live system:
//   - in_list(): the lists given (loaded once, before the replay), matched as live
//     (core::EntityList: an ip: or cidr: inside a cidr: entry is on the list);
//   - active(e, a): an enforce decision of the replay on (e, a) whose [start, expiry)
//     covers observed_at (start = observed_at + delay; a decision on a live pair extends
//     its expiry, the later one wins);
//   - prior(e, a, w): enforce decisions of the replay that created (not extended) a
//     mitigation (e, a) within w before observed_at;
//   - count()/distinct(): 0 (counters are not stored).
// Escalation (`escalate:`) counts the replay's own non-shadow hits of the same policy on
// the entity within the escalation window, in observed_at order. This is an
// approximation: history before `from` (and the mitigations it left) is not replayed, so
// an entity whose earlier hits fell before the window escalates later in the backtest
// than it did live. Seeding each proposal from the store (workflow::PriorHitsCommitted)
// would cost a query per proposal, too slow for a million detections.
//
// Thread-safety: a Backtester is confined to one thread; distinct Backtesters may run
// concurrently (the PolicySet is shared and immutable). RunBacktest is thread-safe for a
// thread-safe Store (its reads are).
#ifndef QUELL_ENGINE_BACKTEST_H_
#define QUELL_ENGINE_BACKTEST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/entity_list.h"
#include "ledger/store.h"
#include "policy/policy_set.h"
#include "safeguards/protected.h"

namespace quell::engine {

// One stored detection as the replay reads it. Views are valid during Add() only.
struct ReplayRecord {
  std::string_view source;
  std::string_view id;
  std::string_view type;
  std::string_view entity;  // normalised entity text
  double score = 0;
  absl::Time observed_at;
  std::string_view json;   // the stored normalised detection (evidence, related, batch)
  std::string_view reply;  // the stored per-item reply: {"decisions": [...], ...}
};

//! A view of a ledger::StoredDetection (borrows `d`).
ReplayRecord ReplayRecordOf(const ledger::StoredDetection& d);

// The entity lists the replay's in_list() reads, and which entities are protected.
struct ReplayLists {
  // list name -> entities (normalised text), matched as core::EntityList matches.
  absl::flat_hash_map<std::string, core::EntityList> entries;
  // Every entity of every protected list.
  absl::flat_hash_set<std::string> protected_entities;
  // The same, matched as the server's safeguard matches (an ip inside a protected cidr,
  // a cidr over a protected ip): LoadReplayLists builds it; null: exact matches only.
  std::shared_ptr<const safeguards::ProtectedSet> protected_set;

  //! Whether a decision on `entity` would wait for review (a protected list covers it).
  bool IsProtected(std::string_view entity) const;
};

struct BacktestOptions {
  absl::Time from = absl::InfinitePast();  // [from, to): observed_at window
  absl::Time to = absl::InfiniteFuture();
  size_t samples = 5;  // example entities kept per policy and bucket
};

struct BacktestBucket {
  int64_t decisions = 0;           // (detection, entity, action) hits
  int64_t entities = 0;            // distinct entities
  int64_t protected_entities = 0;  // of those, on a protected list
  std::vector<std::string> samples;
};

struct BacktestPolicyRow {
  std::string policy;
  std::string mode;          // enforce | shadow | off | absent (only in the stored replies)
  int64_t matched = 0;       // detections the candidate policy matched
  BacktestBucket newly;      // would newly be mitigated
  BacktestBucket no_longer;  // would no longer be mitigated
  BacktestBucket unchanged;
  BacktestBucket shadow;
};

struct BacktestReport {
  absl::Time from;
  absl::Time to;
  int64_t version = 0;      // the candidate set's version (0 for an unpublished candidate)
  int64_t detections = 0;   // replayed
  int64_t skipped = 0;      // records whose entity, JSON or reply could not be read
  int64_t eval_errors = 0;  // `when` conditions that hit a runtime error (counted false)
  // Distinct entities over every policy, per bucket (decisions are summed).
  BacktestBucket newly;
  BacktestBucket no_longer;
  BacktestBucket unchanged;
  BacktestBucket shadow;
  // Candidate policies in file order, then policies seen only in stored replies (by name).
  std::vector<BacktestPolicyRow> policies;
};

//! The report as JSON: {"from", "to", "version", "detections", "skipped", "eval_errors",
//! "totals": {"newly": B, "no_longer": B, "unchanged": B, "shadow": B},
//! "policies": [{"policy", "mode", "matched", "newly": B, ...}]} with
//! B = {"decisions", "entities", "protected_entities", "samples": [...]}.
std::string BacktestReportToJson(const BacktestReport& report);

//! The report as an aligned text table for people (CLI).
std::string BacktestReportToText(const BacktestReport& report);

// A replay in progress. See the file comment. Not thread-safe.
class Backtester {
 public:
  Backtester(std::shared_ptr<const policy::PolicySet> candidate, ReplayLists lists,
             BacktestOptions options);
  ~Backtester();
  Backtester(const Backtester&) = delete;
  Backtester& operator=(const Backtester&) = delete;

  //! Replays one record. Records must come in observed_at order (kInvalidArgument
  //! otherwise); records outside [from, to) are ignored. An unreadable record (bad entity,
  //! malformed JSON or reply) is counted as skipped, not an error.
  absl::Status Add(const ReplayRecord& record);

  //! The report so far (may be called more than once).
  BacktestReport Finish() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

//! Loads the lists `candidate` declares plus every protected list of `store` (one read
//! each); a list is protected if the store or the candidate flags it.
absl::StatusOr<ReplayLists> LoadReplayLists(ledger::Store& store,
                                            const policy::PolicySet& candidate);

//! Loads the lists, streams the stored detections of [options.from, options.to) from
//! `store` (ScanDetections) through a Backtester and returns its report.
absl::StatusOr<BacktestReport> RunBacktest(ledger::Store& store,
                                           std::shared_ptr<const policy::PolicySet> candidate,
                                           const BacktestOptions& options);

}  // namespace quell::engine

#endif  // QUELL_ENGINE_BACKTEST_H_
