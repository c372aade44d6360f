#include "ledger/change.h"

#include <openssl/evp.h>

#include <set>

#include "gtest/gtest.h"

namespace quell::ledger {
namespace {

Change Sample(std::string actor = "k_admin", std::string subject = "m_01") {
  Change c;
  c.seq = 7;
  c.at = absl::FromUnixMicros(1767225600123456);
  c.kind = ChangeKind::kMitigation;
  c.actor = std::move(actor);
  c.subject = std::move(subject);
  c.entity = "user:u1";
  c.payload = R"({"id":"m_01"})";
  c.prev_hash = std::string(kGenesisHash);
  return c;
}

// The encoding as documented in change.h, built independently of change.cc.
std::string DocumentedHash(const Change& c) {
  std::string b;
  auto u64 = [&](uint64_t v) {
    for (int i = 7; i >= 0; --i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto str = [&](std::string_view s) {
    u64(s.size());
    b.append(s);
  };
  str("quell.ledger.v1");
  str(c.prev_hash);
  u64(c.seq);
  u64(absl::ToUnixMicros(c.at));
  u64(static_cast<uint64_t>(c.kind));
  str(c.actor);
  str(c.subject);
  str(c.entity);
  str(c.payload);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(b.data(), b.size(), md, &n, EVP_sha256(), nullptr);
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(2 * n, ' ');
  for (unsigned int i = 0; i < n; ++i) {
    hex[2 * i] = kDigits[md[i] / 16];
    hex[2 * i + 1] = kDigits[md[i] % 16];
  }
  return hex;
}

TEST(ChainHash, MatchesTheDocumentedEncoding) {
  Change c = Sample();
  EXPECT_EQ(ChainHash(c), DocumentedHash(c));
  EXPECT_EQ(ChainHash(c).size(), 64u);
}

TEST(ChainHash, IgnoresStoredHashAndIsDeterministic) {
  Change a = Sample();
  Change b = Sample();
  b.hash = "whatever";
  EXPECT_EQ(ChainHash(a), ChainHash(b));
}

TEST(ChainHash, EveryFieldMatters) {
  std::set<std::string> hashes;
  hashes.insert(ChainHash(Sample()));
  auto vary = [&](auto mutate) {
    Change c = Sample();
    mutate(c);
    EXPECT_TRUE(hashes.insert(ChainHash(c)).second);
  };
  vary([](Change& c) { c.seq = 8; });
  vary([](Change& c) { c.at += absl::Microseconds(1); });
  vary([](Change& c) { c.kind = ChangeKind::kList; });
  vary([](Change& c) { c.actor = "k_other"; });
  vary([](Change& c) { c.subject = "m_02"; });
  vary([](Change& c) { c.entity = "user:u2"; });
  vary([](Change& c) { c.payload = "{}"; });
  vary([](Change& c) { c.prev_hash[0] = '1'; });
}

TEST(ChainHash, FieldBoundariesAreUnambiguous) {
  Change a = Sample("ab", "c");
  Change b = Sample("a", "bc");
  EXPECT_NE(ChainHash(a), ChainHash(b));
}

TEST(ChangeKind, NamesRoundTrip) {
  for (ChangeKind k : {ChangeKind::kMitigation, ChangeKind::kPolicySet, ChangeKind::kList,
                       ChangeKind::kBreaker, ChangeKind::kReview}) {
    auto parsed = ParseChangeKind(ChangeKindName(k));
    ASSERT_TRUE(parsed.has_value()) << ChangeKindName(k);
    EXPECT_EQ(*parsed, k);
  }
  EXPECT_EQ(ChangeKindName(ChangeKind::kPolicySet), "policy_set");
  EXPECT_EQ(ChangeKindName(static_cast<ChangeKind>(99)), "unknown");
  EXPECT_FALSE(ParseChangeKind("unknown").has_value());
  EXPECT_FALSE(ParseChangeKind("").has_value());
}

}  // namespace
}  // namespace quell::ledger
