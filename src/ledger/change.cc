#include "ledger/change.h"

#include <openssl/evp.h>

#include <array>
#include <memory>

#include "core/status.h"

namespace quell::ledger {
namespace {

constexpr std::string_view kKindNames[] = {"",     "mitigation", "policy_set",
                                           "list", "breaker",    "review"};

// Big-endian so the encoding does not depend on the host.
void AppendU64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

// Every variable-length field is preceded by its length, so no two different changes
// encode to the same bytes ("ab"+"c" vs "a"+"bc").
void AppendField(std::string_view s, std::string* out) {
  AppendU64(s.size(), out);
  out->append(s);
}

}  // namespace

std::string_view ChangeKindName(ChangeKind k) {
  auto i = static_cast<size_t>(k);
  if (i == 0 || i >= std::size(kKindNames)) return "unknown";
  return kKindNames[i];
}

std::optional<ChangeKind> ParseChangeKind(std::string_view name) {
  for (size_t i = 1; i < std::size(kKindNames); ++i) {
    if (kKindNames[i] == name) return static_cast<ChangeKind>(i);
  }
  return std::nullopt;
}

std::string ChainHash(const Change& c) {
  std::string buf;
  buf.reserve(64 + 8 * 7 + c.actor.size() + c.subject.size() + c.entity.size() + c.payload.size() +
              32);
  // A version tag, so a future encoding can never collide with this one.
  AppendField("quell.ledger.v1", &buf);
  AppendField(c.prev_hash, &buf);
  AppendU64(static_cast<uint64_t>(c.seq), &buf);
  AppendU64(static_cast<uint64_t>(absl::ToUnixMicros(c.at)), &buf);
  AppendU64(static_cast<uint64_t>(c.kind), &buf);
  AppendField(c.actor, &buf);
  AppendField(c.subject, &buf);
  AppendField(c.entity, &buf);
  AppendField(c.payload, &buf);

  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int md_len = 0;
  // EVP_Digest fails only on allocation failure or a broken OpenSSL: an invariant.
  QUELL_CHECK(EVP_Digest(buf.data(), buf.size(), md.data(), &md_len, EVP_sha256(), nullptr) == 1);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(md_len * 2, '0');
  for (unsigned int i = 0; i < md_len; ++i) {
    hex[2 * i] = kHex[md[i] >> 4];
    hex[2 * i + 1] = kHex[md[i] & 15];
  }
  return hex;
}

}  // namespace quell::ledger
