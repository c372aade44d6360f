// The state a live policy evaluation reads: the in-memory index for active(), the store
// for prior(), the velocity counters for count()/distinct() (counters::CounterStore; a
// failed read counts as 0 and is counted in counter_errors(), so the caller applies
// fail_open / fail_closed), and the safeguards' view of the entity lists for in_list().
//
// Thread-safety: one instance per evaluation thread; the borrowed parts are thread-safe.
#ifndef QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_
#define QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_

#include "absl/time/time.h"
#include "counters/counter_store.h"
#include "index/index.h"
#include "ledger/store.h"
#include "policy/expr.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {

class LiveEnvironment final : public policy::Environment {
 public:
  LiveEnvironment(const index::Index* index, ledger::Store* store, absl::Time now)
      : index_(index), store_(store), now_(now) {}

  //! Reads count()/distinct() from `counters` (borrowed; null: every counter reads 0).
  void set_counters(counters::CounterStore* counters) { counters_ = counters; }
  //! Reads in_list() from `lists` (borrowed; null: every list is empty).
  void set_lists(const workflow::Safeguards* lists) { lists_ = lists; }

  int64_t Count(std::string_view counter, std::string_view key, absl::Duration window) override;
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration window) override;
  bool InList(std::string_view list, std::string_view entity) override;
  bool Active(std::string_view entity, std::string_view action) override;
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override;

  //! Store reads that failed (prior() then counts as 0); the caller logs them.
  int64_t store_errors() const { return store_errors_; }
  //! Counter reads that failed with kUnavailable (then read as 0); reset by the caller.
  int64_t counter_errors() const { return counter_errors_; }
  void reset_counter_errors() { counter_errors_ = 0; }

 private:
  const index::Index* index_;
  ledger::Store* store_;
  absl::Time now_;
  counters::CounterStore* counters_ = nullptr;
  const workflow::Safeguards* lists_ = nullptr;
  int64_t store_errors_ = 0;
  int64_t counter_errors_ = 0;
};

// `base`, noting whether the evaluation read ledger state (active(), prior()): an answer
// that the decisions made earlier in the same batch could change. One evaluation's thread.
class TrackingEnvironment final : public policy::ForwardingEnvironment {
 public:
  explicit TrackingEnvironment(policy::Environment& base) : ForwardingEnvironment(base) {}
  bool read_ledger() const { return read_ledger_; }

  bool Active(std::string_view entity, std::string_view action) override {
    read_ledger_ = true;
    return ForwardingEnvironment::Active(entity, action);
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration w) override {
    read_ledger_ = true;
    return ForwardingEnvironment::Prior(entity, action, w);
  }

 private:
  bool read_ledger_ = false;
};

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_
