#include "ledger/change.h"

#include <openssl/evp.h>

#include <array>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace quell::ledger {
namespace {

constexpr std::string_view kKindNames[] = {"",     "mitigation", "policy_set",
                                           "list", "breaker",    "review"};

// Big-endian so the encoding does not depend on the host.
void AppendU64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

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
  // The digest is fetched once (EVP_sha256() alone makes every EVP_DigestInit look the
  // implementation up again) and each thread reuses its context: the commit thread hashes
  // every change, so this is on the write path.
  static EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  QUELL_CHECK(kSha256 != nullptr);
  struct CtxDeleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  thread_local std::unique_ptr<EVP_MD_CTX, CtxDeleter> ctx(EVP_MD_CTX_new());
  QUELL_CHECK(ctx != nullptr);

  // The fixed-size head in one buffer, then the variable fields streamed in. Every
  // variable-length field is preceded by its length, so no two different changes encode
  // to the same bytes ("ab"+"c" vs "a"+"bc").
  std::string head;
  head.reserve(128);
  // A version tag, so a future encoding can never collide with this one.
  AppendField("quell.ledger.v1", &head);
  AppendField(c.prev_hash, &head);
  AppendU64(static_cast<uint64_t>(c.seq), &head);
  AppendU64(static_cast<uint64_t>(absl::ToUnixMicros(c.at)), &head);
  AppendU64(static_cast<uint64_t>(c.kind), &head);
  // EVP calls fail only on allocation failure or a broken OpenSSL: an invariant.
  QUELL_CHECK(EVP_DigestInit_ex(ctx.get(), kSha256, nullptr) == 1);
  QUELL_CHECK(EVP_DigestUpdate(ctx.get(), head.data(), head.size()) == 1);
  for (const std::string* field : {&c.actor, &c.subject, &c.entity, &c.payload}) {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(field->size() >> (56 - 8 * i));
    QUELL_CHECK(EVP_DigestUpdate(ctx.get(), len, sizeof(len)) == 1);
    QUELL_CHECK(EVP_DigestUpdate(ctx.get(), field->data(), field->size()) == 1);
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int md_len = 0;
  QUELL_CHECK(EVP_DigestFinal_ex(ctx.get(), md.data(), &md_len) == 1);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(md_len * 2, '0');
  for (unsigned int i = 0; i < md_len; ++i) {
    hex[2 * i] = kHex[md[i] >> 4];
    hex[2 * i + 1] = kHex[md[i] & 15];
  }
  return hex;
}

absl::StatusOr<const core::Mitigation*> MitigationOf(const Change& c, core::Mitigation* scratch) {
  if (c.mitigation != nullptr) return c.mitigation.get();
  absl::StatusOr<core::Mitigation> m = core::MitigationFromJson(c.payload);
  if (!m.ok()) {
    return absl::DataLossError(
        absl::StrCat("change ", c.seq, ": mitigation does not parse: ", m.status().message()));
  }
  *scratch = *std::move(m);
  return scratch;
}

}  // namespace quell::ledger
