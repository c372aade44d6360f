// Velocity counters: sliding-window counts and distinct counts per key, behind one small
// interface (CounterStore) with two backends: in process (counters/in_process_store.h, the
// default) and Redis (counters/redis_store.h, shared by several Quell nodes).
//
// A policy set declares its counters (SPEC "Policies", `counters:`):
//
//   - {name: plays, on: play, key: entity, windows: [1m, 1h, 24h]}
//   - {name: accounts_per_ip, on: login, key: attrs.ip, distinct: entity, windows: [1h]}
//
// Writing (the event route): resolve the counters of an event type once with
// CounterSet::ForEvent(type), build one Observation per counter (key = the event's entity
// or attribute named by CounterSpec::key; value = the one named by `distinct`), and call
// Record() with the whole batch (the Redis backend sends it in one pipelined round trip).
// Reading (policy count()/distinct()): Count(name, key, window, now) or
// Distinct(name, key, window, now); Read() batches many reads into one round trip.
//
// Windows and buckets. Every declared window W is a ring of buckets of width
// w = max(1ms, W / buckets_per_window) (default 60 buckets: 1m -> 1s, 1h -> 1min,
// 24h -> 24min), aligned to the Unix epoch, and a read at `now` sums the ceil(W / w)
// buckets that end with the one holding `now`. So an event older than W never counts, an
// event younger than W - w always counts, and in between it depends on where `now` sits in
// its bucket: counts are *exact within one bucket's width*. Both backends use the same
// geometry (WindowGeometry), so they agree bucket for bucket.
//
// Time. Events carry their own time `at`. Record() compares it with `now`:
//   at < now - max_lateness           -> kTooLate (rejected, not counted)
//   at > now + max_future_skew        -> kTooEarly (rejected, not counted)
//   otherwise                         -> counted in the bucket of `at` in every window
//                                        whose read at `now` can still see that bucket
//                                        (a late event older than a short window is
//                                        accepted but only changes the longer windows).
// A late event therefore lands in the bucket it belongs to, not in the current one.
//
// Errors: kInvalidArgument for an unknown counter or undeclared window and for calling
// Count() on a distinct counter (or Distinct() on a count counter); kUnavailable when the
// backend (Redis) is down or slower than its configured timeout — the caller applies
// fail_open / fail_closed. After a kUnavailable from Record(), some of the batch may have
// been applied (at most once; never retried by the store).
//
// Thread-safety: CounterSet is immutable after construction and thread-safe. Every
// CounterStore implementation is thread-safe (any method from any thread).
#ifndef QUELL_COUNTERS_COUNTER_STORE_H_
#define QUELL_COUNTERS_COUNTER_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace quell::counters {

// One declared counter, as written in the policy set's `counters:`.
struct CounterSpec {
  std::string name;                     // [A-Za-z0-9_.-]{1,64}, unique in the set
  std::string on;                       // event type ("play", "login")
  std::string key;                      // "entity" or "attrs.<name>"
  std::string distinct;                 // "" for a count; else "entity" or "attrs.<name>"
  std::vector<absl::Duration> windows;  // each > 0, no duplicates

  bool is_distinct() const { return !distinct.empty(); }
};

// Which field of an event a counter reads: the entity, or one attribute.
struct FieldRef {
  enum class Kind : uint8_t { kNone, kEntity, kAttr };
  Kind kind = Kind::kNone;
  std::string attr;  // for kAttr: the attribute name ("ip" for "attrs.ip")

  // "entity" or "attrs.<name>"; "" -> kNone. Anything else is kInvalidArgument.
  static absl::StatusOr<FieldRef> Parse(std::string_view text);
};

// How one window is cut into buckets (see the file comment). Plain value.
struct WindowGeometry {
  absl::Duration window;
  int64_t width_us = 0;  // bucket width, microseconds
  int64_t buckets = 0;   // buckets a read sums: ceil(window / width)

  static WindowGeometry Of(absl::Duration window, int buckets_per_window);
  // The bucket holding time `t` (floor division; buckets are aligned to the epoch).
  int64_t BucketOf(absl::Time t) const;
  // The oldest bucket a read at `now` sums (the newest is BucketOf(now)).
  int64_t OldestBucket(absl::Time now) const { return BucketOf(now) - buckets + 1; }
  absl::Duration width() const { return absl::Microseconds(width_us); }
};

// Options every backend honours.
struct TimeOptions {
  absl::Duration max_lateness = absl::Minutes(5);
  absl::Duration max_future_skew = absl::Seconds(5);
  int buckets_per_window = 60;  // 1..3600
};

// The validated, immutable set of counters a store serves. Thread-safe.
class CounterSet {
 public:
  // Validates names, keys, distinct fields and windows. kInvalidArgument with the
  // offending counter's name on error.
  static absl::StatusOr<CounterSet> Create(std::vector<CounterSpec> specs, TimeOptions options);

  const std::vector<CounterSpec>& specs() const { return specs_; }
  const TimeOptions& options() const { return options_; }
  int size() const { return static_cast<int>(specs_.size()); }
  const CounterSpec& spec(int counter) const { return specs_[counter]; }
  const FieldRef& key_field(int counter) const { return key_fields_[counter]; }
  const FieldRef& distinct_field(int counter) const { return distinct_fields_[counter]; }
  const std::vector<WindowGeometry>& geometry(int counter) const { return geometry_[counter]; }
  // The longest window of the counter.
  absl::Duration longest_window(int counter) const { return longest_[counter]; }

  // Index of the counter named `name`, or -1.
  int Find(std::string_view name) const;
  // Index of `window` among the counter's windows, or -1.
  int FindWindow(int counter, absl::Duration window) const;
  // Indices of the counters declared `on: event_type` (empty if none).
  absl::Span<const int> ForEvent(std::string_view event_type) const;

 private:
  CounterSet() = default;
  std::vector<CounterSpec> specs_;
  TimeOptions options_;
  std::vector<FieldRef> key_fields_;
  std::vector<FieldRef> distinct_fields_;
  std::vector<std::vector<WindowGeometry>> geometry_;
  std::vector<absl::Duration> longest_;
  absl::flat_hash_map<std::string, int> by_name_;
  absl::flat_hash_map<std::string, std::vector<int>> by_event_;
};

// One event seen by one counter. Views are borrowed for the duration of Record().
struct Observation {
  int counter = -1;        // index in the store's CounterSet
  std::string_view key;    // non-empty
  std::string_view value;  // the distinct value (non-empty) for distinct counters; else ""
  absl::Time at;           // when the event happened
};

enum class RecordOutcome : uint8_t {
  kCounted,   // applied to every window that can still see it
  kTooLate,   // at < now - max_lateness
  kTooEarly,  // at > now + max_future_skew
  kInvalid,   // unknown counter, empty key, missing/unexpected distinct value
};
// "counted", "too_late", "too_early", "invalid": stable, for replies and metric labels.
std::string_view RecordOutcomeName(RecordOutcome outcome);

// How a batch went, item by item summed up.
struct RecordSummary {
  int64_t counted = 0;
  int64_t too_late = 0;
  int64_t too_early = 0;
  int64_t invalid = 0;
};

// One read of a batched Read(): a count for count counters, the distinct estimate for
// distinct counters.
struct ReadRequest {
  int counter = -1;
  std::string_view key;
  absl::Duration window;
};

// Operational figures, cumulative since construction (gauges where noted). Fields a
// backend does not have stay 0.
struct StoreStats {
  int64_t keys = 0;             // gauge: (counter, key) entries held (in process)
  int64_t evicted_expired = 0;  // entries dropped because every window had passed
  int64_t evicted_cap = 0;      // entries dropped early to stay under max_keys
  int64_t counted = 0;          // observations counted
  int64_t rejected_too_late = 0;
  int64_t rejected_too_early = 0;
  int64_t rejected_invalid = 0;
  int64_t dense_sketches = 0;  // gauge: HyperLogLog buckets in dense form (in process)
  int64_t unavailable = 0;     // calls that returned kUnavailable (Redis)
  int64_t reconnects = 0;      // successful (re)connections (Redis)
  int64_t commands = 0;        // commands sent (Redis)
};

// The counter store seam. Implementations are thread-safe.
class CounterStore {
 public:
  virtual ~CounterStore() = default;

  // The counters this store serves.
  virtual const CounterSet& counters() const = 0;

  // Applies a batch of observations judged against `now`. If `outcomes` is not empty it
  // must have batch.size() elements and receives each item's outcome. Rejected items are
  // reported, never an error for the batch. Errors: kInvalidArgument if `outcomes` has
  // the wrong size; kUnavailable (backend down or slow; see the file comment).
  virtual absl::StatusOr<RecordSummary> Record(absl::Span<const Observation> batch, absl::Time now,
                                               absl::Span<RecordOutcome> outcomes = {}) = 0;

  // Observations of count counter `counter` for `key` within `window` (a declared one).
  virtual absl::StatusOr<int64_t> Count(std::string_view counter, std::string_view key,
                                        absl::Duration window, absl::Time now) = 0;
  // Estimated distinct values of distinct counter `counter` for `key` within `window`.
  virtual absl::StatusOr<int64_t> Distinct(std::string_view counter, std::string_view key,
                                           absl::Duration window, absl::Time now) = 0;
  // Many reads at once (one round trip on Redis): `values` must have reads.size()
  // elements and receives each result. Errors: kInvalidArgument (a bad request; nothing
  // is read), kUnavailable.
  virtual absl::Status Read(absl::Span<const ReadRequest> reads, absl::Time now,
                            absl::Span<int64_t> values) = 0;
  // Read() as if `pending` had been Record()ed at `now` just before, recording nothing:
  // the store is left as it was (dry runs: POST /v1/policies/test). Each pending
  // observation is judged as Record() would judge it (a rejected one changes nothing) and
  // seen by the reads of its (counter, key) whose window holds its bucket. A count adds
  // them; a distinct count adds their values as recording them would, a value already
  // counted adding nothing — except on Redis in a window held as HyperLogLog sketches
  // (redis_store.h), which cannot be asked about a value without writing to it: there
  // each distinct pending value counts as new. Errors as Read().
  virtual absl::Status ReadWith(absl::Span<const ReadRequest> reads,
                                absl::Span<const Observation> pending, absl::Time now,
                                absl::Span<int64_t> values) = 0;

  virtual StoreStats Stats() const = 0;
};

namespace internal {
// Shared by backends: the outcome of an observation before it is applied.
RecordOutcome Classify(const CounterSet& set, const Observation& o, absl::Time now);
// Resolves a named read; kInvalidArgument unless `name` is a counter of kind
// `want_distinct` and `window` one of its windows. Returns the window index.
absl::StatusOr<int> ResolveRead(const CounterSet& set, std::string_view name, bool want_distinct,
                                absl::Duration window, int* counter);
absl::StatusOr<int> ResolveRead(const CounterSet& set, const ReadRequest& r);
// The observations of `pending` that a read of `r` (its window's index `window`) at
// `now` would see once recorded: Classify() counts them and their bucket is in the
// window. Appended to *seen.
void PendingSeen(const CounterSet& set, absl::Span<const Observation> pending, const ReadRequest& r,
                 int window, absl::Time now, std::vector<const Observation*>* seen);
}  // namespace internal

}  // namespace quell::counters

#endif  // QUELL_COUNTERS_COUNTER_STORE_H_
