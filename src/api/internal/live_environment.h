// The state a live policy evaluation reads: the in-memory index for active(), the store
// for prior(), the counters for count()/distinct() (empty until the events issue), and
// lists for in_list() (empty until the safeguards issue).
//
// Thread-safety: one instance per evaluation thread; the borrowed parts are thread-safe.
#ifndef QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_
#define QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_

#include "absl/time/time.h"
#include "index/index.h"
#include "ledger/store.h"
#include "policy/expr.h"

namespace quell::api::internal {

class LiveEnvironment final : public policy::Environment {
 public:
  LiveEnvironment(const index::Index* index, ledger::Store* store, absl::Time now)
      : index_(index), store_(store), now_(now) {}

  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view, std::string_view) override { return false; }
  bool Active(std::string_view entity, std::string_view action) override;
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override;

  //! Store reads that failed (prior() then counts as 0); surfaced as a metric.
  int64_t store_errors() const { return store_errors_; }

 private:
  const index::Index* index_;
  ledger::Store* store_;
  absl::Time now_;
  int64_t store_errors_ = 0;
};

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_LIVE_ENVIRONMENT_H_
