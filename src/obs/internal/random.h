// Fast non-cryptographic random numbers for request, trace and span ids.
//
// Thread-safety: thread-safe; each thread has its own generator, seeded from
// std::random_device, so ids from different threads and processes do not collide
// in practice. Not for secrets: core::RandomHex is.
#ifndef QUELL_OBS_INTERNAL_RANDOM_H_
#define QUELL_OBS_INTERNAL_RANDOM_H_

#include <cstdint>

namespace quell::obs::internal {

//! 64 random bits (xoshiro256**).
uint64_t RandomU64();

}  // namespace quell::obs::internal

#endif  // QUELL_OBS_INTERNAL_RANDOM_H_
