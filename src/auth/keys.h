// API keys and roles (SPEC "Auth"). A key is shown once as "<id>.<secret>"; the store
// keeps the id, the role and the SHA-256 of the secret. The KeyRing caches the keys of
// a Store in memory and reloads them when any process (a `quell keys` command against the
// same data, another node) changes them.
//
// Thread-safety: KeyRing is thread-safe; Authenticate never blocks on storage except for
// a rate-limited reload when it meets an unknown key id.
#ifndef QUELL_AUTH_KEYS_H_
#define QUELL_AUTH_KEYS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/time.h"
#include "ledger/store.h"

namespace quell::auth {

enum class Role : uint8_t { kAdmin, kDetector, kEnforcer, kReviewer, kViewer };
std::string_view RoleName(Role r);
//! "an admin", "a detector", "an enforcer"...: for messages.
std::string RoleWithArticle(Role r);
std::optional<Role> ParseRole(std::string_view name);

// What a route needs. Each role grants a fixed set (see Allows).
enum class Permission : uint8_t {
  kCheck,     // check, changes, snapshot, CrowdSec decisions
  kRead,      // mitigations, entities, audit, policies, lists, breakers, reviews
  kSubmit,    // detections, events (detector: only as its sources)
  kMitigate,  // manual mitigations, revoke, reviews, appeals
  kAdmin,     // keys, policies PUT, lists PUT, breaker reset, rollbacks
};
bool Allows(Role role, Permission p);

struct Principal {
  std::string key_id;
  Role role = Role::kViewer;
  std::vector<std::string> sources;
  //! True if this principal may submit as `source` (admins may use any).
  bool MaySubmitAs(std::string_view source) const;
};

// A newly made key: `token` is what the user gets (once), `record` what is stored.
struct NewKey {
  std::string token;
  ledger::ApiKey record;
};
//! Makes a key. kInvalidArgument if a detector has no source or a non-detector has some.
absl::StatusOr<NewKey> MakeKey(Role role, std::vector<std::string> sources, std::string name,
                               absl::Time now);

class KeyRing {
 public:
  // Borrows `store` and `clock`. Loads the keys once; kUnavailable if the store fails.
  static absl::StatusOr<std::unique_ptr<KeyRing>> Create(ledger::Store* store, core::Clock* clock);

  //! Checks a key as given (CrowdSec's X-Api-Key), surrounding spaces ignored.
  //! kUnauthenticated (missing, malformed, unknown, revoked) — never says which;
  //! kUnavailable for an id not loaded yet while the store cannot be read (the key may
  //! be valid: unchecked, not refused).
  absl::StatusOr<Principal> Authenticate(std::string_view key);
  //! Checks an Authorization value: "Bearer <key>" (the scheme in any case, RFC 7235).
  //! A bare key or another scheme is kUnauthenticated, as Authenticate's failures are.
  absl::StatusOr<Principal> AuthenticateBearer(std::string_view authorization);

  //! Reloads if the store's keys version moved. Call periodically (the server does every
  //! 200 ms); cheap when nothing changed.
  absl::Status Refresh();

 private:
  struct Entry {
    std::string secret_hash;
    Principal principal;
    bool revoked = false;  // refused whatever the secret
  };
  using Map = absl::flat_hash_map<std::string, Entry>;

  KeyRing(ledger::Store* store, core::Clock* clock) : store_(store), clock_(clock) {}
  absl::Status Reload();
  std::shared_ptr<const Map> keys() const;

  ledger::Store* store_;
  core::Clock* clock_;
  mutable std::mutex mu_;
  std::shared_ptr<const Map> keys_;  // guarded by mu_ (the pointer; the map is immutable)
  int64_t version_ = -1;             // guarded by mu_
  absl::Time last_miss_reload_ = absl::InfinitePast();  // guarded by mu_
  bool last_miss_failed_ = false;  // guarded by mu_: that reload could not read the store
  bool miss_reloading_ = false;    // guarded by mu_: a miss's reload is in flight
};

}  // namespace quell::auth

#endif  // QUELL_AUTH_KEYS_H_
