// The in-process CounterStore (the default backend): counters live in this process's
// memory, so each Quell node counts only the events it receives.
//
// Layout. (counter, key) entries are spread over `shards` shards (by a hash of the key),
// each a mutex and one hash map per counter. A read locks one shard for a few hundred
// nanoseconds; Record() sorts its batch by shard and locks each shard once for that
// shard's observations (prefetching their hash-map slots), so a batch of n observations
// takes at most `shards` locks, each held for about n / shards writes. An entry holds
// one ring per declared window (see counters/counter_store.h for the bucket geometry),
// all in one slot vector (window after window; small entries inline, without a heap
// allocation). A ring is stored sparsely: (bucket, value) slots sorted by bucket holding
// only buckets that saw events and can still be read (older ones are dropped on the next
// write), so an idle key costs little and a busy one at most
// buckets + max_future_skew / width + 1 slots per window.
// Count slots hold an int64; distinct slots hold a HyperLogLog sketch (p = 14, 0.81%
// standard error; counters/internal/hll.h), and a window read merges its buckets'
// sketches.
//
// Memory bound. An entry whose newest event is older than its counter's longest window
// (plus one bucket) can never be read again: it is *expired* and dropped by a sweep of
// its shard, which runs inline at most once per `sweep_interval` per shard (or when
// Sweep() is called). A cap, `max_keys`, bounds the entries: each shard holds at most
// ceil(max_keys / shards); inserting into a full shard first sweeps it, then evicts the
// least recently written eighth of its cap (LRU-ish, by the `now` of the last write).
// Both kinds of eviction are counted in Stats() (evicted_expired, evicted_cap).
//
// Thread-safety: thread-safe. Reads lock one shard; Stats() locks each in turn.
#ifndef QUELL_COUNTERS_IN_PROCESS_STORE_H_
#define QUELL_COUNTERS_IN_PROCESS_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "counters/counter_store.h"

namespace quell::counters {

struct InProcessOptions {
  TimeOptions time;
  int64_t max_keys = 1'000'000;                       // cap on (counter, key) entries
  int shards = 64;                                    // a power of two, 1..4096
  absl::Duration sweep_interval = absl::Seconds(30);  // per-shard expiry sweep period
};

namespace internal {
struct Shard;
class Hll;
}  // namespace internal

class InProcessCounterStore final : public CounterStore {
 public:
  // kInvalidArgument for bad specs or options.
  static absl::StatusOr<std::unique_ptr<InProcessCounterStore>> Create(
      std::vector<CounterSpec> specs, InProcessOptions options = {});
  ~InProcessCounterStore() override;

  const CounterSet& counters() const override { return set_; }
  absl::StatusOr<RecordSummary> Record(absl::Span<const Observation> batch, absl::Time now,
                                       absl::Span<RecordOutcome> outcomes = {}) override;
  absl::StatusOr<int64_t> Count(std::string_view counter, std::string_view key,
                                absl::Duration window, absl::Time now) override;
  absl::StatusOr<int64_t> Distinct(std::string_view counter, std::string_view key,
                                   absl::Duration window, absl::Time now) override;
  absl::Status Read(absl::Span<const ReadRequest> reads, absl::Time now,
                    absl::Span<int64_t> values) override;
  absl::Status ReadWith(absl::Span<const ReadRequest> reads, absl::Span<const Observation> pending,
                        absl::Time now, absl::Span<int64_t> values) override;
  StoreStats Stats() const override;

  // Drops expired entries in every shard now (a scheduler may call this periodically).
  void Sweep(absl::Time now);

 private:
  InProcessCounterStore(CounterSet set, InProcessOptions options);
  // Per-batch bucket numbers, indexed by window_base_[counter] + window.
  struct BatchBuckets {
    std::vector<int64_t> oldest;     // the oldest bucket a read at `now` sums
    std::vector<int64_t> at_bucket;  // the bucket of at_us[counter]
    std::vector<int64_t> at_us;      // by counter: the `at` at_bucket was computed for
  };
  size_t ShardIndex(uint64_t key_hash) const;
  internal::Shard& ShardOf(uint64_t key_hash);
  // Both require the shard's lock (annotated in the .cc, where Shard is complete).
  void Prefetch(internal::Shard& shard, const Observation& o, uint64_t hash);
  void ApplyLocked(internal::Shard& shard, const Observation& o, uint64_t hash, int64_t now_us,
                   BatchBuckets& bb);
  // `extra` (distinct counters; may be null): values not recorded, read as if they were.
  int64_t ReadOne(int counter, int window, std::string_view key, absl::Time now,
                  const internal::Hll* extra = nullptr);

  const CounterSet set_;
  const InProcessOptions options_;
  const int64_t per_shard_cap_;
  const int64_t sweep_interval_us_;
  std::vector<size_t> window_base_;  // [counter]: index of its first window; back(): total
  std::vector<int64_t> expiry_us_;   // per counter: longest window + widest bucket
  std::unique_ptr<internal::Shard[]> shards_;
  std::atomic<int64_t> counted_{0};
  std::atomic<int64_t> too_late_{0};
  std::atomic<int64_t> too_early_{0};
  std::atomic<int64_t> invalid_{0};
};

}  // namespace quell::counters

#endif  // QUELL_COUNTERS_IN_PROCESS_STORE_H_
