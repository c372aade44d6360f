// Index memory per active mitigation: resident set growth while loading N (default 10M)
// synthetic mitigations (90% "user:<12 chars>", 10% "ip:" IPv4), read from /proc/self/statm.
//
//   index_memory_bench [N]
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "index/bench_util.h"
#include "index/index.h"

int main(int argc, char** argv) {
  using quell::index::bench::ResidentBytes;
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000'000;
  const absl::Time now = absl::Now();
  quell::index::bench::Generator gen(1);
  const size_t before = ResidentBytes();
  quell::index::Index index;
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    const absl::Status st = index.Apply(gen.Active(now, absl::Hours(24)));
    if (!st.ok()) {
      std::fprintf(stderr, "apply: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t after = ResidentBytes();
  const double per = static_cast<double>(after - before) / static_cast<double>(index.size());
  std::printf("mitigations:            %zu\n", index.size());
  std::printf("load:                   %.1f s (%.0f applies/s, incl. generating them)\n", secs,
              static_cast<double>(n) / secs);
  std::printf("rss growth:             %.1f MiB\n", (after - before) / 1048576.0);
  std::printf("rss bytes/mitigation:   %.1f (bar: <= 100) %s\n", per, per <= 100 ? "OK" : "OVER");
  std::printf("MemoryBytes/mitigation: %.1f\n",
              static_cast<double>(index.MemoryBytes()) / static_cast<double>(index.size()));
  std::printf("anon huge pages:        %.1f MiB\n",
              quell::index::bench::AnonHugePageBytes() / 1048576.0);
  return 0;
}
