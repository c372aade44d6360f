// HyperLogLog sketch for the in-process backend's distinct counters.
//
// Precision p = 14: m = 16384 registers, standard error 1.04 / sqrt(m) = 0.81%, so the
// 2% bar is ~2.5 standard errors. Hashes are 64-bit (HashValue below): the top p bits
// pick the register, the remaining q = 50 bits give the rank (leading zeros + 1, 1..51).
// Estimation uses Ertl's improved raw estimator ("New cardinality estimation algorithms
// for HyperLogLog sketches", 2017), which is nearly unbiased from 0 to far beyond 2^32
// without empirical bias tables or a switch to linear counting.
//
// Memory: a sketch starts *sparse* (a sorted vector of 4-byte register/rank entries, so
// a bucket that saw 10 distinct values costs ~40 bytes) and turns *dense* (one byte per
// register, 16 KiB) past 512 entries (2 KiB): sorted inserts into a longer vector cost
// more than they save, and only buckets with many distinct values pay the 16 KiB.
//
// Thread-safety: a Hll is a plain value; callers synchronise. HllMerger is per thread.
#ifndef QUELL_COUNTERS_INTERNAL_HLL_H_
#define QUELL_COUNTERS_INTERNAL_HLL_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

namespace quell::counters::internal {

// A 64-bit hash of a byte string with good avalanche (8-byte multiply-fold rounds and a
// 64-bit finaliser). Deterministic across processes and runs.
uint64_t HashValue(std::string_view bytes);

// A HyperLogLog sketch (precision 14), sparse until kSparseLimit registers are set.
// Estimate() caches its result until an Add() changes a register (as Redis does), so
// repeated reads of a quiet sketch cost nothing. Thread-compatible: callers serialise
// every call, Estimate() included (it writes the cache).
class Hll {
 public:
  static constexpr int kPrecision = 14;
  static constexpr int kRegisters = 1 << kPrecision;
  static constexpr int kQ = 64 - kPrecision;  // rank bits
  static constexpr int kMaxRank = kQ + 1;
  static constexpr size_t kSparseLimit = 512;

  Hll() = default;
  Hll(Hll&& o) noexcept
      : sparse_(std::move(o.sparse_)),
        dense_(std::move(o.dense_)),
        estimate_(std::exchange(o.estimate_, -1)) {
    o.sparse_.clear();
  }
  Hll& operator=(Hll&& o) noexcept {
    sparse_ = std::move(o.sparse_);
    o.sparse_.clear();
    dense_ = std::move(o.dense_);
    estimate_ = std::exchange(o.estimate_, -1);
    return *this;
  }

  void Add(uint64_t hash);
  bool dense() const { return dense_ != nullptr; }
  bool empty() const { return !dense_ && sparse_.empty(); }
  // Approximate heap bytes held.
  size_t MemoryBytes() const;
  // Estimated distinct values added.
  int64_t Estimate() const;

  // Register index and rank of a hash.
  static uint32_t IndexOf(uint64_t hash) { return static_cast<uint32_t>(hash >> kQ); }
  static uint8_t RankOf(uint64_t hash) {
    uint64_t w = hash << kPrecision;
    return w == 0 ? kMaxRank : static_cast<uint8_t>(__builtin_clzll(w) + 1);
  }
  // Ertl's estimator from the register-value histogram counts[0..kMaxRank].
  static double EstimateFromHistogram(const int* counts);

 private:
  friend class HllMerger;
  void ToDense();

  std::vector<uint32_t> sparse_;  // sorted by index; entry = index << 8 | rank
  std::unique_ptr<uint8_t[]> dense_;
  mutable int64_t estimate_ = -1;  // the last Estimate(), -1 once a register changed
};

// Merges several sketches (the buckets of a window) and estimates the union. Reusable;
// keeps its buffers between uses. Confined to one thread at a time.
class HllMerger {
 public:
  void Reset();
  void Merge(const Hll& h);
  int64_t Estimate();

 private:
  void ToDense();
  bool dense_ = false;
  std::vector<uint32_t> entries_;  // unsorted sparse entries while !dense_
  std::vector<uint8_t> registers_;
};

}  // namespace quell::counters::internal

#endif  // QUELL_COUNTERS_INTERNAL_HLL_H_
