#include "counters/in_process_store.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "core/strings.h"
#include "counters/internal/hll.h"

namespace quell::counters {
namespace internal {
namespace {

template <typename P>
struct Slot {
  int64_t bucket;
  P value;
};

// How many slots an entry keeps inline before it allocates: a count entry of up to three
// windows, each holding only its current bucket, fits in the hash map's slot (one cache
// miss per write instead of one per window ring); a distinct entry keeps its one sketch.
template <typename P>
constexpr size_t kInlineSlots = 1;
template <>
constexpr size_t kInlineSlots<int64_t> = 4;

// Every window's ring of one (counter, key), sparse: only buckets that saw events and may
// still be read, in one vector, window after window, each window's slots sorted by bucket.
// Window w holds slots [begin(w), ends[w]).
template <typename P>
struct Entry {
  int64_t newest_at_us = std::numeric_limits<int64_t>::min();
  int64_t touched_us = 0;  // `now` of the last write: the LRU-ish eviction order
  absl::InlinedVector<uint32_t, 3> ends;
  absl::InlinedVector<Slot<P>, kInlineSlots<P>> slots;

  size_t begin(size_t w) const { return w == 0 ? 0 : ends[w - 1]; }
  const Slot<P>* window_begin(size_t w) const { return slots.data() + begin(w); }
  const Slot<P>* window_end(size_t w) const { return slots.data() + ends[w]; }
};

// A key with its hash, computed once per observation: the shard is picked by the top bits
// of the hash and the shard's map probes with the same hash (no second hashing pass).
struct HashedKey {
  std::string_view key;
  uint64_t hash;
};
struct KeyHash {
  using is_transparent = void;
  size_t operator()(const std::string& s) const { return HashValue(s); }
  size_t operator()(const HashedKey& k) const { return k.hash; }
};
struct KeyEq {
  using is_transparent = void;
  static std::string_view View(const std::string& s) { return s; }
  static std::string_view View(const HashedKey& k) { return k.key; }
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return View(a) == View(b);
  }
};

template <typename P>
using Map = absl::flat_hash_map<std::string, Entry<P>, KeyHash, KeyEq>;

int DenseIn(const Slot<int64_t>&) { return 0; }
int DenseIn(const Slot<Hll>& s) { return s.value.dense() ? 1 : 0; }

template <typename P>
int DenseIn(const Entry<P>& e) {
  int n = 0;
  for (const auto& s : e.slots) n += DenseIn(s);
  return n;
}

}  // namespace

// A plain std::mutex with annotations for clang's -Wthread-safety. (This abseil's
// absl::Mutex runs deadlock-cycle bookkeeping on every Lock(); a shard's critical section
// is a few hundred nanoseconds, so that cost showed up in the profile.)
class ABSL_LOCKABLE ShardMutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE ShardLock {
 public:
  explicit ShardLock(ShardMutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~ShardLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  ShardLock(const ShardLock&) = delete;
  ShardLock& operator=(const ShardLock&) = delete;

 private:
  ShardMutex* mu_;
};

struct alignas(64) Shard {
  ShardMutex mu;
  std::vector<Map<int64_t>> counts ABSL_GUARDED_BY(mu);  // by counter index
  std::vector<Map<Hll>> sketches ABSL_GUARDED_BY(mu);    // by counter index
  int64_t keys ABSL_GUARDED_BY(mu) = 0;
  int64_t dense ABSL_GUARDED_BY(mu) = 0;
  int64_t evicted_expired ABSL_GUARDED_BY(mu) = 0;
  int64_t evicted_cap ABSL_GUARDED_BY(mu) = 0;
  int64_t last_sweep_us ABSL_GUARDED_BY(mu) = 0;  // the epoch: a first batch sweeps
};

namespace {

// The slot for bucket `b` of window `w`, created if missing; first drops that window's
// slots older than `oldest` (no read at or after now can see them). `dense` tracks dense
// sketches dropped.
template <typename P>
Slot<P>& SlotFor(Entry<P>& e, size_t w, int64_t b, int64_t oldest, int64_t& dense) {
  auto& slots = e.slots;
  const size_t first = e.begin(w);
  size_t last = e.ends[w];
  if (first < last && slots[first].bucket < oldest) {
    size_t keep = first;
    while (keep < last && slots[keep].bucket < oldest) dense -= DenseIn(slots[keep++]);
    const uint32_t dropped = static_cast<uint32_t>(keep - first);
    slots.erase(slots.begin() + first, slots.begin() + keep);
    for (size_t v = w; v < e.ends.size(); ++v) e.ends[v] -= dropped;
    last -= dropped;
  }
  if (first < last && slots[last - 1].bucket == b) return slots[last - 1];
  size_t at = last;
  if (first < last && slots[last - 1].bucket > b) {
    // A late event: its bucket is older than the newest one held.
    auto it = std::lower_bound(slots.begin() + first, slots.begin() + last, b,
                               [](const Slot<P>& s, int64_t v) { return s.bucket < v; });
    if (it->bucket == b) return *it;
    at = static_cast<size_t>(it - slots.begin());
  }
  for (size_t v = w; v < e.ends.size(); ++v) ++e.ends[v];
  return *slots.insert(slots.begin() + at, Slot<P>{b, P{}});
}

void AddTo(Slot<int64_t>& s, const Observation&, int64_t&) { ++s.value; }
void AddTo(Slot<Hll>& s, const Observation& o, int64_t& dense) {
  const bool was_dense = s.value.dense();
  s.value.Add(HashValue(o.value));
  if (!was_dense && s.value.dense()) ++dense;
}

}  // namespace
}  // namespace internal

using internal::Hll;
using internal::Shard;

namespace {

// Drops the shard's expired entries (see the header). Returns how many.
int64_t SweepShard(Shard& shard, int64_t now_us, const std::vector<int64_t>& expiry_us)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
  int64_t dropped = 0;
  auto sweep = [&](auto& maps) {
    for (size_t c = 0; c < maps.size(); ++c) {
      auto& map = maps[c];
      for (auto it = map.begin(); it != map.end();) {
        if (it->second.newest_at_us < now_us - expiry_us[c]) {
          shard.dense -= internal::DenseIn(it->second);
          map.erase(it++);
          ++dropped;
        } else {
          ++it;
        }
      }
    }
  };
  sweep(shard.counts);
  sweep(shard.sketches);
  shard.keys -= dropped;
  shard.evicted_expired += dropped;
  shard.last_sweep_us = now_us;
  return dropped;
}

// Makes room for one more entry in a full shard: expired entries first, then the least
// recently written eighth of the cap.
void MakeRoom(Shard& shard, int64_t cap, int64_t now_us, const std::vector<int64_t>& expiry_us)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
  SweepShard(shard, now_us, expiry_us);
  if (shard.keys < cap) return;
  std::vector<int64_t> touched;
  touched.reserve(static_cast<size_t>(shard.keys));
  for (const auto& map : shard.counts) {
    for (const auto& [key, entry] : map) touched.push_back(entry.touched_us);
  }
  for (const auto& map : shard.sketches) {
    for (const auto& [key, entry] : map) touched.push_back(entry.touched_us);
  }
  const int64_t target = std::max<int64_t>(1, std::min<int64_t>(cap / 8, shard.keys));
  std::nth_element(touched.begin(), touched.begin() + (target - 1), touched.end());
  const int64_t cutoff = touched[target - 1];
  int64_t evicted = 0;
  auto evict = [&](auto& maps) {
    for (auto& map : maps) {
      for (auto it = map.begin(); it != map.end() && evicted < target;) {
        if (it->second.touched_us <= cutoff) {
          shard.dense -= internal::DenseIn(it->second);
          map.erase(it++);
          ++evicted;
        } else {
          ++it;
        }
      }
    }
  };
  evict(shard.counts);
  evict(shard.sketches);
  shard.keys -= evicted;
  shard.evicted_cap += evicted;
}

}  // namespace

absl::StatusOr<std::unique_ptr<InProcessCounterStore>> InProcessCounterStore::Create(
    std::vector<CounterSpec> specs, InProcessOptions options) {
  if (options.shards < 1 || options.shards > 4096 || (options.shards & (options.shards - 1)) != 0) {
    return absl::InvalidArgumentError("shards must be a power of two in 1..4096");
  }
  if (options.max_keys < 1) return absl::InvalidArgumentError("max_keys must be >= 1");
  auto set = CounterSet::Create(std::move(specs), options.time);
  if (!set.ok()) return set.status();
  return std::unique_ptr<InProcessCounterStore>(
      new InProcessCounterStore(*std::move(set), options));
}

InProcessCounterStore::InProcessCounterStore(CounterSet set, InProcessOptions options)
    : set_(std::move(set)),
      options_(options),
      per_shard_cap_((options.max_keys + options.shards - 1) / options.shards),
      sweep_interval_us_(absl::ToInt64Microseconds(options.sweep_interval)),
      shards_(std::make_unique<Shard[]>(options.shards)) {
  window_base_.push_back(0);
  for (int c = 0; c < set_.size(); ++c) {
    window_base_.push_back(window_base_.back() + set_.geometry(c).size());
    int64_t widest = 0;
    for (const auto& g : set_.geometry(c)) widest = std::max(widest, g.width_us);
    expiry_us_.push_back(absl::ToInt64Microseconds(set_.longest_window(c)) + widest);
  }
  for (int s = 0; s < options.shards; ++s) {
    Shard& shard = shards_[s];
    internal::ShardLock lock(&shard.mu);
    shard.counts.resize(set_.size());
    shard.sketches.resize(set_.size());
  }
}

InProcessCounterStore::~InProcessCounterStore() = default;

// The top bits pick the shard: the map inside uses the low bits (its control bytes), so
// the two stay independent.
size_t InProcessCounterStore::ShardIndex(uint64_t hash) const {
  const int bits = __builtin_ctz(static_cast<unsigned>(options_.shards));
  return bits == 0 ? 0 : static_cast<size_t>(hash >> (64 - bits));
}

Shard& InProcessCounterStore::ShardOf(uint64_t hash) { return shards_[ShardIndex(hash)]; }

absl::StatusOr<RecordSummary> InProcessCounterStore::Record(absl::Span<const Observation> batch,
                                                            absl::Time now,
                                                            absl::Span<RecordOutcome> outcomes) {
  if (!outcomes.empty() && outcomes.size() != batch.size()) {
    return absl::InvalidArgumentError("outcomes must be empty or as long as the batch");
  }
  RecordSummary summary;
  // Per window: the oldest bucket a read at `now` sums (the same for the whole batch) and
  // the bucket of the last `at` seen.
  thread_local BatchBuckets bb;
  bb.oldest.resize(window_base_.back());
  bb.at_bucket.resize(window_base_.back());
  bb.at_us.assign(set_.size(), std::numeric_limits<int64_t>::min());
  for (int c = 0; c < set_.size(); ++c) {
    const auto& geometry = set_.geometry(c);
    for (size_t w = 0; w < geometry.size(); ++w) {
      bb.oldest[window_base_[c] + w] = geometry[w].OldestBucket(now);
    }
  }
  // Classify, and hash each counted key once. Counted observations are then applied
  // shard by shard (in batch order within a shard): one lock per shard touched instead of
  // one per observation, and while one is applied the hash-map slot of the next few is
  // prefetched under the same lock, so their cache misses overlap.
  thread_local std::vector<uint64_t> hashes;
  thread_local std::vector<uint32_t> group_end;
  thread_local std::vector<uint32_t> order;
  hashes.resize(batch.size());
  group_end.assign(static_cast<size_t>(options_.shards) + 1, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    const RecordOutcome outcome = internal::Classify(set_, batch[i], now);
    switch (outcome) {
      case RecordOutcome::kCounted:
        hashes[i] = internal::HashValue(batch[i].key);
        ++group_end[ShardIndex(hashes[i]) + 1];
        ++summary.counted;
        break;
      case RecordOutcome::kTooLate:
        ++summary.too_late;
        break;
      case RecordOutcome::kTooEarly:
        ++summary.too_early;
        break;
      case RecordOutcome::kInvalid:
        ++summary.invalid;
        break;
    }
    if (!outcomes.empty()) outcomes[i] = outcome;
  }
  for (size_t s = 1; s < group_end.size(); ++s) group_end[s] += group_end[s - 1];
  order.resize(static_cast<size_t>(summary.counted));
  for (size_t i = 0; i < batch.size(); ++i) {
    // Counted observations: the ones with a hash slot reserved above. Re-classifying is
    // cheaper than keeping a second array.
    if (internal::Classify(set_, batch[i], now) != RecordOutcome::kCounted) continue;
    order[group_end[ShardIndex(hashes[i])]++] = static_cast<uint32_t>(i);
  }
  // group_end[s] is now the end of shard s's group; its begin is group_end[s - 1].
  const int64_t now_us = absl::ToUnixMicros(now);
  constexpr size_t kAhead = 4;
  for (int s = 0; s < options_.shards; ++s) {
    const size_t begin = s == 0 ? 0 : group_end[s - 1];
    const size_t end = group_end[s];
    if (begin == end) continue;
    Shard& shard = shards_[s];
    internal::ShardLock lock(&shard.mu);
    if (now_us - shard.last_sweep_us >= sweep_interval_us_) {
      SweepShard(shard, now_us, expiry_us_);
    }
    for (size_t k = begin; k < std::min(end, begin + kAhead); ++k)
      Prefetch(shard, batch[order[k]], hashes[order[k]]);
    for (size_t k = begin; k < end; ++k) {
      if (k + kAhead < end) Prefetch(shard, batch[order[k + kAhead]], hashes[order[k + kAhead]]);
      ApplyLocked(shard, batch[order[k]], hashes[order[k]], now_us, bb);
    }
  }
  if (summary.counted) counted_.fetch_add(summary.counted, std::memory_order_relaxed);
  if (summary.too_late) too_late_.fetch_add(summary.too_late, std::memory_order_relaxed);
  if (summary.too_early) too_early_.fetch_add(summary.too_early, std::memory_order_relaxed);
  if (summary.invalid) invalid_.fetch_add(summary.invalid, std::memory_order_relaxed);
  return summary;
}

// Both called with shard.mu held (Record); the header cannot name the lock.
void InProcessCounterStore::Prefetch(Shard& shard, const Observation& o,
                                     uint64_t hash) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const internal::HashedKey hk{o.key, hash};
  if (set_.spec(o.counter).is_distinct()) {
    shard.sketches[o.counter].prefetch(hk);
  } else {
    shard.counts[o.counter].prefetch(hk);
  }
}

void InProcessCounterStore::ApplyLocked(Shard& shard, const Observation& o, uint64_t hash,
                                        int64_t now_us,
                                        BatchBuckets& bb) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const int64_t at_us = absl::ToUnixMicros(o.at);
  const auto& geometry = set_.geometry(o.counter);
  const size_t base = window_base_[o.counter];
  // Buckets of `at` per window, recomputed only when `at` changes (events of a batch
  // mostly share a few timestamps).
  if (bb.at_us[o.counter] != at_us) {
    bb.at_us[o.counter] = at_us;
    for (size_t w = 0; w < geometry.size(); ++w)
      bb.at_bucket[base + w] = geometry[w].BucketOf(o.at);
  }
  const internal::HashedKey hk{o.key, hash};
  auto apply = [&](auto& map) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    auto it = map.find(hk);
    if (it == map.end()) {
      if (shard.keys >= per_shard_cap_) MakeRoom(shard, per_shard_cap_, now_us, expiry_us_);
      it = map.try_emplace(std::string(o.key)).first;
      it->second.ends.assign(geometry.size(), 0);
      ++shard.keys;
    }
    auto& entry = it->second;
    entry.touched_us = std::max(entry.touched_us, now_us);
    entry.newest_at_us = std::max(entry.newest_at_us, at_us);
    for (size_t w = 0; w < geometry.size(); ++w) {
      const int64_t oldest = bb.oldest[base + w];
      const int64_t b = bb.at_bucket[base + w];
      if (b < oldest) continue;  // late, and already out of this (shorter) window
      auto& slot = internal::SlotFor(entry, w, b, oldest, shard.dense);
      internal::AddTo(slot, o, shard.dense);
    }
  };
  if (set_.spec(o.counter).is_distinct()) {
    apply(shard.sketches[o.counter]);
  } else {
    apply(shard.counts[o.counter]);
  }
}

int64_t InProcessCounterStore::ReadOne(int counter, int window, std::string_view key,
                                       absl::Time now, const Hll* extra) {
  const WindowGeometry& g = set_.geometry(counter)[window];
  const int64_t newest = g.BucketOf(now);
  const int64_t oldest = newest - g.buckets + 1;
  const internal::HashedKey hk{key, internal::HashValue(key)};
  Shard& shard = ShardOf(hk.hash);
  if (!set_.spec(counter).is_distinct()) {
    internal::ShardLock lock(&shard.mu);
    const auto& map = shard.counts[counter];
    auto it = map.find(hk);
    if (it == map.end()) return 0;
    int64_t sum = 0;
    const auto& e = it->second;
    for (auto* s = e.window_begin(window); s != e.window_end(window); ++s) {
      if (s->bucket >= oldest && s->bucket <= newest) sum += s->value;
    }
    return sum;
  }
  const bool more = extra != nullptr && !extra->empty();
  thread_local internal::HllMerger merger;
  merger.Reset();
  {
    internal::ShardLock lock(&shard.mu);
    const auto& map = shard.sketches[counter];
    auto it = map.find(hk);
    if (it == map.end()) return more ? extra->Estimate() : 0;
    const auto& e = it->second;
    const Hll* only = nullptr;
    int in_window = 0;
    for (auto* s = e.window_begin(window); s != e.window_end(window); ++s) {
      if (s->bucket >= oldest && s->bucket <= newest) {
        only = &s->value;
        ++in_window;
      }
    }
    if (in_window == 0) return more ? extra->Estimate() : 0;
    // One bucket in the window: its own estimate is the union's (same registers), without
    // copying it into the merger.
    if (in_window == 1 && !more) return only->Estimate();
    for (auto* s = e.window_begin(window); s != e.window_end(window); ++s) {
      if (s->bucket >= oldest && s->bucket <= newest) merger.Merge(s->value);
    }
  }
  // The values not recorded: the union with them is what recording them would estimate
  // (an HLL register only grows, whichever sketch a value is added to).
  if (more) merger.Merge(*extra);
  return merger.Estimate();
}

absl::StatusOr<int64_t> InProcessCounterStore::Count(std::string_view counter, std::string_view key,
                                                     absl::Duration window, absl::Time now) {
  int c;
  auto w = internal::ResolveRead(set_, counter, /*want_distinct=*/false, window, &c);
  if (!w.ok()) return w.status();
  return ReadOne(c, *w, key, now);
}

absl::StatusOr<int64_t> InProcessCounterStore::Distinct(std::string_view counter,
                                                        std::string_view key, absl::Duration window,
                                                        absl::Time now) {
  int c;
  auto w = internal::ResolveRead(set_, counter, /*want_distinct=*/true, window, &c);
  if (!w.ok()) return w.status();
  return ReadOne(c, *w, key, now);
}

absl::Status InProcessCounterStore::Read(absl::Span<const ReadRequest> reads, absl::Time now,
                                         absl::Span<int64_t> values) {
  return ReadWith(reads, {}, now, values);
}

absl::Status InProcessCounterStore::ReadWith(absl::Span<const ReadRequest> reads,
                                             absl::Span<const Observation> pending, absl::Time now,
                                             absl::Span<int64_t> values) {
  if (values.size() != reads.size()) {
    return absl::InvalidArgumentError("values must be as long as reads");
  }
  absl::InlinedVector<int, 8> windows;
  for (const ReadRequest& r : reads) {
    auto w = internal::ResolveRead(set_, r);
    if (!w.ok()) return w.status();
    windows.push_back(*w);
  }
  std::vector<const Observation*> seen;
  for (size_t i = 0; i < reads.size(); ++i) {
    const ReadRequest& r = reads[i];
    seen.clear();
    internal::PendingSeen(set_, pending, r, windows[i], now, &seen);
    if (seen.empty()) {
      values[i] = ReadOne(r.counter, windows[i], r.key, now);
    } else if (!set_.spec(r.counter).is_distinct()) {
      values[i] = ReadOne(r.counter, windows[i], r.key, now) + static_cast<int64_t>(seen.size());
    } else {
      Hll extra;
      for (const Observation* o : seen) extra.Add(internal::HashValue(o->value));
      values[i] = ReadOne(r.counter, windows[i], r.key, now, &extra);
    }
  }
  return absl::OkStatus();
}

void InProcessCounterStore::Sweep(absl::Time now) {
  const int64_t now_us = absl::ToUnixMicros(now);
  for (int s = 0; s < options_.shards; ++s) {
    internal::ShardLock lock(&shards_[s].mu);
    SweepShard(shards_[s], now_us, expiry_us_);
  }
}

StoreStats InProcessCounterStore::Stats() const {
  StoreStats st;
  for (int s = 0; s < options_.shards; ++s) {
    Shard& shard = shards_[s];
    internal::ShardLock lock(&shard.mu);
    st.keys += shard.keys;
    st.dense_sketches += shard.dense;
    st.evicted_expired += shard.evicted_expired;
    st.evicted_cap += shard.evicted_cap;
  }
  st.counted = counted_.load(std::memory_order_relaxed);
  st.rejected_too_late = too_late_.load(std::memory_order_relaxed);
  st.rejected_too_early = too_early_.load(std::memory_order_relaxed);
  st.rejected_invalid = invalid_.load(std::memory_order_relaxed);
  return st;
}

}  // namespace quell::counters
