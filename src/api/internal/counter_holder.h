// The velocity counters of the active policy set. Builds a counters::CounterStore (in
// process or Redis, per CounterOptions) from the set's `counters:` declarations and swaps
// it when a newly published set changes them; a set whose declarations are unchanged
// keeps the same store, so counts survive policy edits that do not touch counters.
//
// Thread-safety: thread-safe. Stores are shared_ptr snapshots: a request keeps the store
// it started with even if a swap happens meanwhile.
#ifndef QUELL_API_INTERNAL_COUNTER_HOLDER_H_
#define QUELL_API_INTERNAL_COUNTER_HOLDER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "api/api.h"
#include "counters/counter_store.h"
#include "policy/policy_set.h"

namespace quell::api::internal {

class CounterHolder {
 public:
  explicit CounterHolder(CounterOptions options) : options_(std::move(options)) {}

  //! The store serving `set`'s counters (null when the set declares none). Errors:
  //! kInvalidArgument when the declarations do not make a valid CounterSet.
  absl::StatusOr<std::shared_ptr<counters::CounterStore>> For(
      const std::shared_ptr<const policy::PolicySet>& set);

  //! The store in use (the one For() last returned) if it serves exactly `set`'s
  //! declarations, else null (a set declaring none, or other counters: For() would build
  //! a new, empty store for it). Never builds or swaps a store: for dry runs, which must
  //! not reset the live counts.
  std::shared_ptr<counters::CounterStore> Peek(const policy::PolicySet& set) const;

  //! Stats of the current store, summed with the retired stores' evictions.
  counters::StoreStats Stats() const;

  const CounterOptions& options() const { return options_; }

  //! The CounterSpecs declared by `set` (exposed for tests and benchmarks).
  static std::vector<counters::CounterSpec> SpecsOf(const policy::PolicySet& set);
  //! Builds a store for `specs` as `options` say.
  static absl::StatusOr<std::shared_ptr<counters::CounterStore>> Build(
      std::vector<counters::CounterSpec> specs, const CounterOptions& options);

 private:
  const CounterOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const policy::PolicySet> set_;   // guarded by mu_: last set seen
  std::vector<counters::CounterSpec> specs_;       // guarded by mu_
  std::shared_ptr<counters::CounterStore> store_;  // guarded by mu_
  int64_t retired_evictions_ = 0;                  // guarded by mu_
};

//! True when both declare the same counters (names, events, keys, windows), in order.
bool SameCounters(const std::vector<counters::CounterSpec>& a,
                  const std::vector<counters::CounterSpec>& b);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_COUNTER_HOLDER_H_
