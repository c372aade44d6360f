#include "core/ids.h"

#include <openssl/rand.h>

#include <cstdint>
#include <cstring>

#include "absl/random/random.h"
#include "core/status.h"

namespace quell::core {
namespace {

void RandomBytes(uint8_t* out, size_t n) {
  // RAND_bytes only fails when the OS entropy source is unusable; no id is safe then.
  QUELL_CHECK(RAND_bytes(out, static_cast<int>(n)) == 1);
}

}  // namespace

constexpr std::string_view kIdAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

bool IsId(std::string_view id, std::string_view prefix) {
  if (id.size() != prefix.size() + 26 || id.substr(0, prefix.size()) != prefix) return false;
  for (char c : id.substr(prefix.size())) {
    if (kIdAlphabet.find(c) == std::string_view::npos) return false;
  }
  return true;
}

std::string NewId(std::string_view prefix, absl::Time now) {
  // Ids are unique, not secret: a per-thread generator seeded from the OS (absl::BitGen)
  // instead of the CSPRNG, whose call cost a few percent of the commit thread per id.
  thread_local absl::BitGen gen;
  const uint64_t hi = absl::Uniform<uint64_t>(gen) & 0xFFFF;  // 16 bits
  const uint64_t lo = absl::Uniform<uint64_t>(gen);           // 64 bits
  // 128 bits: 48 of time, 80 of randomness, written 5 bits at a time (26 chars, 130 bits).
  unsigned __int128 v = static_cast<uint64_t>(absl::ToUnixMillis(now)) & ((1ULL << 48) - 1);
  v = (v << 16) | hi;
  v = (v << 64) | lo;
  std::string out(prefix);
  out.resize(prefix.size() + 26);
  for (int i = 25; i >= 0; --i) {
    out[prefix.size() + i] = kIdAlphabet[static_cast<size_t>(v & 31)];
    v >>= 5;
  }
  return out;
}

std::string RandomHex(size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string bytes(n, '\0');
  RandomBytes(reinterpret_cast<uint8_t*>(bytes.data()), n);
  std::string out(2 * n, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[static_cast<uint8_t>(bytes[i]) >> 4];
    out[2 * i + 1] = kHex[static_cast<uint8_t>(bytes[i]) & 15];
  }
  return out;
}

}  // namespace quell::core
