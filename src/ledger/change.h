// Ledger changes: the one ordered log of every state change (ARCHITECTURE "one writer
// order"). Each change carries a `seq` and the hash of its predecessor, so the log is
// tamper-evident: `hash = SHA-256(prev_hash, seq, at, kind, actor, subject, entity, payload)`.
//
// Thread-safety: value types and pure functions.
#ifndef QUELL_LEDGER_CHANGE_H_
#define QUELL_LEDGER_CHANGE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/mitigation.h"

namespace quell::ledger {

// What a change is about. Stored as its number: never renumber.
enum class ChangeKind : uint8_t {
  kMitigation = 1,  // payload: the mitigation after the change (core::MitigationToJson)
  kPolicySet = 2,   // payload: {"version": N, "yaml": "..."}
  kList = 3,        // payload: the list change
  kBreaker = 4,     // payload: breaker state change
  kReview = 5,      // payload: review/appeal state change
};
// "mitigation", "policy_set", "list", "breaker", "review"; "unknown" for other values.
std::string_view ChangeKindName(ChangeKind k);
std::optional<ChangeKind> ParseChangeKind(std::string_view name);

struct Change {
  int64_t seq = 0;  // assigned by the store on Append; 1, 2, 3... without gaps
  absl::Time at;    // commit-time clock reading, assigned on Append
  ChangeKind kind = ChangeKind::kMitigation;
  std::string actor;      // who: key id, "system", "cli"
  std::string subject;    // the object changed: mitigation id, list name, policy version
  std::string entity;     // the entity concerned ("" if none): timelines read by it
  std::string payload;    // JSON, deterministic bytes
  std::string prev_hash;  // hex SHA-256 of the previous change; 64 zeros before the first
  std::string hash;       // hex SHA-256 over the fields above, see ChainHash
  // Neither stored nor hashed: on a kMitigation change this process has just committed,
  // the record its payload encodes, so that listeners need not parse the payload. Null
  // on changes read back from a store or another node's feed. Read it with MitigationOf.
  std::shared_ptr<const core::Mitigation> mitigation;
};

// The mitigation a kMitigation change carries: the attached record if there is one,
// else the payload parsed into *scratch (kDataLoss if it does not parse). The pointer
// is valid while `c` and *scratch are.
absl::StatusOr<const core::Mitigation*> MitigationOf(const Change& c, core::Mitigation* scratch);

// The hash of the very first link's predecessor.
inline constexpr std::string_view kGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

// Computes the chain hash of `c` from its fields and c.prev_hash (c.hash is ignored):
// lowercase hex SHA-256 over a version tag then prev_hash, seq, at (Unix microseconds),
// kind, actor, subject, entity, payload, integers as 8 big-endian bytes and every string
// preceded by its 8-byte length. Any backend must store `at` with microsecond precision.
std::string ChainHash(const Change& c);

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_CHANGE_H_
