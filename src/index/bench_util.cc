#include "index/bench_util.h"

#include <unistd.h>

#include <array>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "index/index.h"

namespace quell::index::bench {

std::string Generator::EntityText() {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  const uint64_t r = rng_();
  if (r % 10 == 0) {
    const uint64_t a = rng_();
    return absl::StrCat("ip:", a & 255, ".", (a >> 8) & 255, ".", (a >> 16) & 255, ".",
                        (a >> 24) & 255);
  }
  std::string s = "user:";
  uint64_t bits = rng_();
  for (int i = 0; i < 12; ++i) {
    s.push_back(kChars[bits % 36]);
    bits /= 36;
  }
  return s;
}

std::string Generator::MitigationId() {
  std::array<uint8_t, 16> b;
  const uint64_t a = rng_();
  const uint64_t c = rng_();
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<uint8_t>(a >> (8 * i));
    b[8 + i] = static_cast<uint8_t>(c >> (8 * i));
  }
  return DecodeId(b);
}

core::Mitigation Generator::Active(absl::Time now, absl::Duration ttl) {
  core::Mitigation m;
  m.id = MitigationId();
  auto e = core::Entity::Parse(EntityText());
  QUELL_CHECK(e.ok());
  m.entity = *std::move(e);
  m.action = (rng_() % 4 == 0) ? "challenge" : "block";
  m.state = core::MitigationState::kActive;
  m.expires_at = now + ttl;
  return m;
}

size_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  QUELL_CHECK(f != nullptr);
  unsigned long size = 0, resident = 0;  // NOLINT(runtime/int): statm's format
  QUELL_CHECK(std::fscanf(f, "%lu %lu", &size, &resident) == 2);
  std::fclose(f);
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

size_t AnonHugePageBytes() {
  FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (f == nullptr) return 0;
  char line[256];
  size_t kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "AnonHugePages: %zu kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

}  // namespace quell::index::bench
