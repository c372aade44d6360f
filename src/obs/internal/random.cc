#include "obs/internal/random.h"

#include <random>

namespace quell::obs::internal {
namespace {

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

struct Xoshiro {
  uint64_t s[4];

  Xoshiro() {
    // A random_device read per thread start (a syscall), never per id.
    std::random_device rd;
    for (uint64_t& w : s) w = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    if ((s[0] | s[1] | s[2] | s[3]) == 0) s[0] = 0x9e3779b97f4a7c15ULL;
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = Rotl(s[3], 45);
    return result;
  }
};

}  // namespace

uint64_t RandomU64() {
  thread_local Xoshiro gen;
  return gen.Next();
}

}  // namespace quell::obs::internal
