#include "counters/internal/hll.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quell::counters::internal {
namespace {

double RelativeError(int64_t estimate, int64_t truth) {
  return std::abs(static_cast<double>(estimate) - static_cast<double>(truth)) /
         static_cast<double>(truth);
}

TEST(HashValueTest, DeterministicAndSpread) {
  EXPECT_EQ(HashValue("track:t1"), HashValue("track:t1"));
  EXPECT_NE(HashValue("track:t1"), HashValue("track:t2"));
  EXPECT_NE(HashValue(""), HashValue(std::string_view("\0", 1)));
  // Each output bit is set about half the time over sequential inputs.
  int ones[64] = {};
  constexpr int kN = 20000;
  for (int i = 0; i < kN; ++i) {
    uint64_t h = HashValue(absl::StrCat("user:", i));
    for (int b = 0; b < 64; ++b) ones[b] += (h >> b) & 1;
  }
  for (int b = 0; b < 64; ++b) {
    EXPECT_NEAR(ones[b], kN / 2, kN / 20) << "bit " << b;
  }
}

TEST(HllTest, EmptyIsZero) {
  Hll h;
  EXPECT_EQ(h.Estimate(), 0);
  HllMerger m;
  m.Reset();
  m.Merge(h);
  EXPECT_EQ(m.Estimate(), 0);
}

TEST(HllTest, SmallCardinalitiesAreNearlyExact) {
  for (int n : {1, 2, 5, 20, 21, 100, 1000}) {
    Hll h;
    for (int i = 0; i < n; ++i) {
      h.Add(HashValue(absl::StrCat("ip:10.0.0.", i)));
      h.Add(HashValue(absl::StrCat("ip:10.0.0.", i)));  // duplicates change nothing
    }
    EXPECT_EQ(h.dense(), n > static_cast<int>(Hll::kSparseLimit));
    EXPECT_NEAR(h.Estimate(), n, std::max(1.0, n * 0.01)) << n;
  }
}

TEST(HllTest, TurnsDenseAndStaysAccurate) {
  for (int64_t n : {5000, 30000, 100000, 1000000}) {
    Hll h;
    for (int64_t i = 0; i < n; ++i) h.Add(HashValue(absl::StrCat("track:", i)));
    EXPECT_TRUE(h.dense());
    EXPECT_LE(RelativeError(h.Estimate(), n), 0.02) << n << " -> " << h.Estimate();
  }
}

TEST(HllMergerTest, UnionOfOverlappingSketches) {
  // 60 buckets, 2000 values each, each overlapping half of the previous one: 61000 values.
  std::vector<Hll> buckets(60);
  for (int b = 0; b < 60; ++b) {
    for (int i = 0; i < 2000; ++i) buckets[b].Add(HashValue(absl::StrCat("v", b * 1000 + i)));
  }
  HllMerger m;
  m.Reset();
  for (const Hll& h : buckets) m.Merge(h);
  EXPECT_LE(RelativeError(m.Estimate(), 61000), 0.02) << m.Estimate();
  // Sparse-only merge path.
  m.Reset();
  for (int b = 0; b < 3; ++b) m.Merge(buckets[b]);
  EXPECT_LE(RelativeError(m.Estimate(), 4000), 0.02) << m.Estimate();
  // A merge equals the sketch of the union.
  Hll all;
  for (int i = 0; i < 4000; ++i) all.Add(HashValue(absl::StrCat("v", i)));
  m.Reset();
  for (int b = 0; b < 3; ++b) m.Merge(buckets[b]);
  EXPECT_EQ(m.Estimate(), all.Estimate());
}

}  // namespace
}  // namespace quell::counters::internal

namespace quell::counters::internal {
namespace {

// A sketch of v1..vn built in one go: its first Estimate has no cache history.
int64_t FreshEstimate(int n) {
  Hll h;
  for (int i = 1; i <= n; ++i) h.Add(HashValue(absl::StrCat("v", i)));
  return h.Estimate();
}

// The cached estimate follows every Add that changes a register, sparse and dense: after
// each step it equals the estimate of a sketch that never cached one.
TEST(HllTest, CachedEstimateFollowsAdds) {
  Hll h;
  EXPECT_EQ(h.Estimate(), 0);
  for (int n = 1; n <= 3000; ++n) {
    h.Add(HashValue(absl::StrCat("v", n)));
    if (n % 250 == 0 || n < 10) {
      const int64_t e = h.Estimate();
      EXPECT_EQ(e, FreshEstimate(n)) << n;
      EXPECT_NEAR(e, n, std::max(1.0, n * 0.02)) << n;
    }
  }
  EXPECT_TRUE(h.dense());
  const int64_t before = h.Estimate();
  h.Add(HashValue("v1"));  // already counted: no register changes
  EXPECT_EQ(h.Estimate(), before);
  Hll moved = std::move(h);
  EXPECT_EQ(moved.Estimate(), before);
  EXPECT_EQ(h.Estimate(), 0);  // NOLINT(bugprone-use-after-move): a moved-from sketch is empty
}

}  // namespace
}  // namespace quell::counters::internal
