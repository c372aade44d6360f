#include "auth/keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/utf8.h"

namespace quell::auth {
namespace {

constexpr std::string_view kRoleNames[] = {"admin", "detector", "enforcer", "reviewer", "viewer"};

std::string Sha256Hex(std::string_view s) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '\0');
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}

}  // namespace

std::string_view RoleName(Role r) { return kRoleNames[static_cast<int>(r)]; }

std::string RoleWithArticle(Role r) {
  std::string_view name = RoleName(r);
  const bool vowel =
      !name.empty() && std::string_view("aeiou").find(name[0]) != std::string_view::npos;
  return absl::StrCat(vowel ? "an " : "a ", AV(name));
}

std::optional<Role> ParseRole(std::string_view name) {
  for (size_t i = 0; i < std::size(kRoleNames); ++i) {
    if (kRoleNames[i] == name) return static_cast<Role>(i);
  }
  return std::nullopt;
}

bool Allows(Role role, Permission p) {
  switch (role) {
    case Role::kAdmin:
      return true;
    case Role::kDetector:
      return p == Permission::kSubmit;
    case Role::kEnforcer:
      return p == Permission::kCheck;
    case Role::kReviewer:
      return p == Permission::kCheck || p == Permission::kRead || p == Permission::kMitigate;
    case Role::kViewer:
      return p == Permission::kCheck || p == Permission::kRead;
  }
  return false;
}

bool Principal::MaySubmitAs(std::string_view source) const {
  if (role == Role::kAdmin) return true;
  if (role != Role::kDetector) return false;
  for (const std::string& s : sources) {
    if (s == source) return true;
  }
  return false;
}

absl::StatusOr<NewKey> MakeKey(Role role, std::vector<std::string> sources, std::string name,
                               absl::Time now) {
  if (role == Role::kDetector && sources.empty()) {
    return absl::InvalidArgumentError(
        "a detector key needs at least one source (--source on the command line, \"sources\" in "
        "the API)");
  }
  if (role != Role::kDetector && !sources.empty()) {
    return absl::InvalidArgumentError(
        "only detector keys are bound to sources (--source, \"sources\")");
  }
  // As detections' own fields are checked: a source a detection cannot carry would make
  // a key that can never submit, and a control character garbles `keys list`.
  for (size_t i = 0; i < sources.size(); ++i) {
    const std::string& s = sources[i];
    if (s.empty() || s.size() > 128 || core::HasControlCharacter(s)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sources[", i, "]: a source name is 1-128 bytes without control characters"));
    }
    if (s.starts_with(core::kRuleSourcePrefix)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sources[", i, "]: rule:… is reserved for the detections real-time rules make"));
    }
    if (std::find(sources.begin(), sources.begin() + static_cast<std::ptrdiff_t>(i), s) !=
        sources.begin() + static_cast<std::ptrdiff_t>(i)) {
      return absl::InvalidArgumentError(absl::StrCat("sources[", i, "]: ", s, " is given twice"));
    }
  }
  if (core::HasControlCharacter(name)) {
    return absl::InvalidArgumentError("name: a key's name has no control characters");
  }
  NewKey k;
  k.record.id = core::NewId("k_", now);
  std::string secret = core::RandomHex(32);
  k.record.secret_hash = Sha256Hex(secret);
  k.record.role = std::string(RoleName(role));
  k.record.sources = std::move(sources);
  k.record.name = std::move(name);
  k.record.created_at = now;
  k.token = absl::StrCat(k.record.id, ".", secret);
  return k;
}

absl::StatusOr<std::unique_ptr<KeyRing>> KeyRing::Create(ledger::Store* store, core::Clock* clock) {
  std::unique_ptr<KeyRing> ring(new KeyRing(store, clock));
  QUELL_RETURN_IF_ERROR(ring->Reload());
  return ring;
}

std::shared_ptr<const KeyRing::Map> KeyRing::keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_;
}

absl::Status KeyRing::Reload() {
  // Read the version first: a change racing with the list is caught by the next Refresh.
  QUELL_ASSIGN_OR_RETURN(int64_t version, store_->KeysVersion());
  QUELL_ASSIGN_OR_RETURN(std::vector<ledger::ApiKey> list, store_->ListKeys());
  auto map = std::make_shared<Map>();
  for (ledger::ApiKey& k : list) {
    auto role = ParseRole(k.role);
    if (!role) continue;  // a role this binary does not know grants nothing
    Entry e;
    // Kept, refused: a revoked id is answered from memory, never by a reload (which
    // would tell it apart from a live one while the store is down: 503 against 401).
    e.revoked = k.revoked_at.has_value();
    e.secret_hash = std::move(k.secret_hash);
    e.principal.key_id = k.id;
    e.principal.role = *role;
    e.principal.sources = std::move(k.sources);
    map->emplace(std::move(k.id), std::move(e));
  }
  std::lock_guard<std::mutex> lock(mu_);
  keys_ = std::move(map);
  version_ = version;
  return absl::OkStatus();
}

absl::Status KeyRing::Refresh() {
  QUELL_ASSIGN_OR_RETURN(int64_t version, store_->KeysVersion());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (version == version_) return absl::OkStatus();
  }
  return Reload();
}

absl::StatusOr<Principal> KeyRing::AuthenticateBearer(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(AV(authorization.substr(0, kScheme.size())), AV(kScheme))) {
    return absl::UnauthenticatedError("missing or invalid API key");
  }
  return Authenticate(authorization.substr(kScheme.size()));
}

absl::StatusOr<Principal> KeyRing::Authenticate(std::string_view credential) {
  auto denied = [] { return absl::UnauthenticatedError("missing or invalid API key"); };
  while (!credential.empty() && credential.front() == ' ') credential.remove_prefix(1);
  while (!credential.empty() && credential.back() == ' ') credential.remove_suffix(1);
  size_t dot = credential.find('.');
  if (credential.empty() || dot == std::string_view::npos || credential.size() > 200) {
    return denied();
  }
  std::string_view id = credential.substr(0, dot);
  std::string hash = Sha256Hex(credential.substr(dot + 1));
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::shared_ptr<const Map> map = keys();
    auto it = map->find(AV(id));
    if (it != map->end()) {
      if (it->second.revoked) return denied();  // from memory, store down or not
      const std::string& want = it->second.secret_hash;
      if (want.size() == hash.size() && CRYPTO_memcmp(want.data(), hash.data(), hash.size()) == 0) {
        return it->second.principal;
      }
      return denied();
    }
    // Unknown id: maybe a key created a moment ago by another process. Reload, but at
    // most every 10 ms, so a flood of bad keys cannot hammer the store. A store that
    // cannot be read leaves the key unchecked, not refused: kUnavailable (a 503 the
    // client retries; a 401 would tell it its valid key is wrong), for any unknown id.
    auto unavailable = [] {
      return absl::UnavailableError("cannot check the API key: the store is unavailable");
    };
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Time now = clock_->Now();
      if (attempt > 0) return denied();
      // A reload in flight (it may wait out a connect timeout) has not answered yet:
      // unchecked, as when it fails, rather than refused or waited for.
      if (miss_reloading_) return unavailable();
      if (now - last_miss_reload_ < absl::Milliseconds(10)) {
        return last_miss_failed_ ? unavailable() : denied();
      }
      last_miss_reload_ = now;
      miss_reloading_ = true;
    }
    const absl::Status reloaded = Refresh();
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_miss_failed_ = !reloaded.ok();
      miss_reloading_ = false;
    }
    if (!reloaded.ok()) return unavailable();
  }
  return denied();
}

}  // namespace quell::auth
