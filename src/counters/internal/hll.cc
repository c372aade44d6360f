#include "counters/internal/hll.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quell::counters::internal {
namespace {

constexpr uint64_t kK0 = 0x9e3779b97f4a7c15ULL;
constexpr uint64_t kK1 = 0xc2b2ae3d27d4eb4fULL;
constexpr uint64_t kK2 = 0x165667b19e3779f9ULL;

// 64x64 -> 128 multiply, folded: mixes every input bit into the result.
inline uint64_t Fold(uint64_t a, uint64_t b) {
  unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

inline uint64_t Finalize(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// σ(x) = x + Σ_{k>=1} x^(2^k) 2^(k-1), for x in [0, 1).
double Sigma(double x) {
  if (x == 1.0) return std::numeric_limits<double>::infinity();
  double y = 1.0;
  double z = x;
  double previous;
  do {
    x *= x;
    previous = z;
    z += x * y;
    y += y;
  } while (z != previous);
  return z;
}

// τ(x) = (1 - x - Σ_{k>=1} (1 - x^(2^-k))^2 2^-k) / 3, for x in [0, 1].
double Tau(double x) {
  if (x == 0.0 || x == 1.0) return 0.0;
  double y = 1.0;
  double z = 1.0 - x;
  double previous;
  do {
    x = std::sqrt(x);
    previous = z;
    y *= 0.5;
    z -= (1.0 - x) * (1.0 - x) * y;
  } while (z != previous);
  return z / 3.0;
}

inline uint32_t EntryIndex(uint32_t e) { return e >> 8; }
inline uint8_t EntryRank(uint32_t e) { return static_cast<uint8_t>(e & 0xff); }

}  // namespace

uint64_t HashValue(std::string_view bytes) {
  const char* p = bytes.data();
  size_t n = bytes.size();
  uint64_t h = kK0 ^ (static_cast<uint64_t>(n) * kK1);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = Fold(w ^ kK0, h ^ kK2);
    p += 8;
    n -= 8;
  }
  uint64_t tail = 0;
  if (n > 0) std::memcpy(&tail, p, n);
  h = Fold(tail ^ kK1 ^ (static_cast<uint64_t>(n) << 56), h ^ kK0);
  return Finalize(h);
}

void Hll::Add(uint64_t hash) {
  const uint32_t index = IndexOf(hash);
  const uint8_t rank = RankOf(hash);
  if (dense_) {
    if (dense_[index] < rank) {
      dense_[index] = rank;
      estimate_ = -1;
    }
    return;
  }
  const uint32_t entry = index << 8 | rank;
  auto it = std::lower_bound(sparse_.begin(), sparse_.end(), index << 8);
  if (it != sparse_.end() && EntryIndex(*it) == index) {
    if (EntryRank(*it) < rank) {
      *it = entry;
      estimate_ = -1;
    }
    return;
  }
  estimate_ = -1;
  sparse_.insert(it, entry);
  if (sparse_.size() > kSparseLimit) ToDense();
}

void Hll::ToDense() {
  dense_ = std::make_unique<uint8_t[]>(kRegisters);
  std::memset(dense_.get(), 0, kRegisters);
  for (uint32_t e : sparse_) dense_[EntryIndex(e)] = EntryRank(e);
  std::vector<uint32_t>().swap(sparse_);
}

size_t Hll::MemoryBytes() const {
  return dense_ ? kRegisters : sparse_.capacity() * sizeof(uint32_t);
}

int64_t Hll::Estimate() const {
  if (estimate_ >= 0) return estimate_;
  int counts[kMaxRank + 1] = {};
  if (dense_) {
    for (int i = 0; i < kRegisters; ++i) ++counts[dense_[i]];
  } else {
    counts[0] = kRegisters - static_cast<int>(sparse_.size());
    for (uint32_t e : sparse_) ++counts[EntryRank(e)];
  }
  estimate_ = std::llround(EstimateFromHistogram(counts));
  return estimate_;
}

double Hll::EstimateFromHistogram(const int* counts) {
  const double m = kRegisters;
  if (counts[0] == kRegisters) return 0.0;
  double z = m * Tau(1.0 - counts[kMaxRank] / m);
  int k = kQ;
  // While z is 0 and a rank is empty, z stays 0: start at the highest rank in use (the
  // result is bit for bit the same, and a sparse sketch uses only the low ranks).
  if (z == 0.0) {
    while (k >= 1 && counts[k] == 0) --k;
  }
  for (; k >= 1; --k) z = 0.5 * (z + counts[k]);
  z += m * Sigma(counts[0] / m);
  constexpr double kAlphaInf = 0.7213475204444817;  // 1 / (2 ln 2)
  return kAlphaInf * m * m / z;
}

void HllMerger::Reset() {
  dense_ = false;
  entries_.clear();
}

void HllMerger::ToDense() {
  registers_.assign(Hll::kRegisters, 0);
  for (uint32_t e : entries_) {
    uint8_t& r = registers_[EntryIndex(e)];
    r = std::max(r, EntryRank(e));
  }
  entries_.clear();
  dense_ = true;
}

void HllMerger::Merge(const Hll& h) {
  if (h.dense_ && !dense_) ToDense();
  if (dense_) {
    uint8_t* r = registers_.data();
    if (h.dense_) {
      const uint8_t* d = h.dense_.get();
      for (int i = 0; i < Hll::kRegisters; ++i) r[i] = std::max(r[i], d[i]);
    } else {
      for (uint32_t e : h.sparse_) r[EntryIndex(e)] = std::max(r[EntryIndex(e)], EntryRank(e));
    }
    return;
  }
  entries_.insert(entries_.end(), h.sparse_.begin(), h.sparse_.end());
  if (entries_.size() > 4 * Hll::kSparseLimit) ToDense();
}

int64_t HllMerger::Estimate() {
  int counts[Hll::kMaxRank + 1] = {};
  if (dense_) {
    for (int i = 0; i < Hll::kRegisters; ++i) ++counts[registers_[i]];
  } else {
    // Sorted entries group by index with ascending rank: the last of each group wins.
    std::sort(entries_.begin(), entries_.end());
    int used = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (i + 1 < entries_.size() && EntryIndex(entries_[i + 1]) == EntryIndex(entries_[i])) {
        continue;
      }
      ++used;
      ++counts[EntryRank(entries_[i])];
    }
    counts[0] = Hll::kRegisters - used;
  }
  return std::llround(Hll::EstimateFromHistogram(counts));
}

}  // namespace quell::counters::internal
