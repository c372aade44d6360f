// Floor division for bucket numbers: times before the epoch (negative microseconds) fall
// in the bucket below, as they do above it.
//
// Thread-safety: a pure function.
#ifndef QUELL_COUNTERS_INTERNAL_FLOOR_DIV_H_
#define QUELL_COUNTERS_INTERNAL_FLOOR_DIV_H_

#include <cstdint>

namespace quell::counters::internal {

//! a / b rounded towards negative infinity; b > 0.
inline int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

}  // namespace quell::counters::internal

#endif  // QUELL_COUNTERS_INTERNAL_FLOOR_DIV_H_
