// Shared by index_bench and index_memory_bench: synthetic mitigations shaped like the
// production mix (mostly "user:<12 random chars>", some "ip:" addresses).
//
// Thread-safety: not thread-safe; one generator per thread.
#ifndef QUELL_INDEX_BENCH_UTIL_H_
#define QUELL_INDEX_BENCH_UTIL_H_

#include <cstdint>
#include <random>
#include <string>

#include "core/mitigation.h"

namespace quell::index::bench {

class Generator {
 public:
  explicit Generator(uint64_t seed) : rng_(seed) {}
  //! A random entity text: 90% "user:" + 12 random [a-z0-9], 10% "ip:" + random IPv4.
  std::string EntityText();
  //! A random, valid mitigation id (as core::NewId would write one).
  std::string MitigationId();
  //! An active mitigation on a random entity, expiring `ttl` after `now`.
  core::Mitigation Active(absl::Time now, absl::Duration ttl);

 private:
  std::mt19937_64 rng_;
};

//! Resident set size of this process, in bytes (from /proc/self/statm).
size_t ResidentBytes();
//! Transparent huge pages backing this process (AnonHugePages of /proc/self/smaps_rollup).
size_t AnonHugePageBytes();

}  // namespace quell::index::bench

#endif  // QUELL_INDEX_BENCH_UTIL_H_
