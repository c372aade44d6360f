// Mitigations: an action applied to an entity for a time, and its life cycle (SPEC "Names").
//
//   pending_approval | scheduled -> active -> expired | revoked
//   shadow (recorded, never enforced); rejected (refused at review);
//   suppressed (stopped by a safeguard, with the reason)
//
// Thread-safety: value types; free functions are thread-safe.
#ifndef QUELL_CORE_MITIGATION_H_
#define QUELL_CORE_MITIGATION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/entity.h"

namespace quell::core {

enum class MitigationState : uint8_t {
  kPendingApproval,
  kScheduled,
  kActive,
  kExpired,
  kRevoked,
  kShadow,
  kRejected,
  kSuppressed,
};
std::string_view StateName(MitigationState s);
std::optional<MitigationState> ParseState(std::string_view name);
// True for the states that can still change (pending, scheduled, active).
bool IsLive(MitigationState s);

// The source of the detections real-time rules make from events ("rule:<policy>"):
// reserved (refused from detectors and in detector keys' sources), and left out of
// backtests (events are not stored).
inline constexpr std::string_view kRuleSourcePrefix = "rule:";

// What the hits of one import batch asked of a mitigation they extended: see
// Mitigation::batch_expiries.
struct BatchExpiry {
  std::string batch;                          // "" for every hit not counted apart (below)
  std::string source;                         // the hits' detection source
  std::string policy;                         // the policy whose hits they were
  absl::Time expires_at = absl::UnixEpoch();  // the latest expiry they asked for

  bool operator==(const BatchExpiry&) const = default;
};

struct Mitigation {
  std::string id;  // "m_" + 26-char time-ordered id, see NewId()
  Entity entity;
  std::string action;
  MitigationState state = MitigationState::kActive;
  absl::Time created_at = absl::UnixEpoch();
  absl::Time updated_at = absl::UnixEpoch();
  absl::Time starts_at = absl::UnixEpoch();  // when it became (or becomes) active
  absl::Time expires_at = absl::UnixEpoch();
  std::string reason;  // why it was created (free text from a person or a policy)
  std::string source;  // detection source, or "manual"
  std::string policy;  // policy id; empty for manual mitigations
  int64_t policy_version = 0;
  std::string actor;                    // who caused the last change: key id, "system", reviewer
  std::string batch;                    // import batch, if any
  std::vector<std::string> detections;  // detection ids that caused it
  // The policy whose hit recorded each detection, in the same order, when some are not
  // `policy`'s (another policy's hit extended this mitigation; MergedCreation(P) for the
  // first detection of a mitigation of policy P merged into this one, whose creation
  // counted it; RolledBackHit(P) for a hit of P whose import batch was rolled back; "" in
  // records before that); empty: all are `policy`'s. Escalation counts a
  // policy's hits by it, immunity every policy named. Use DetectionPolicy(), AddDetections().
  std::vector<std::string> detection_policies;
  // Reviewers who approved it (key ids, in order): the two-person rule's record while it
  // is pending (a critical action's first approval), every approver once approved.
  std::vector<std::string> approvals;
  // Kept once a hit from an import batch other than the creation's own (`batch`, `source`
  // and `policy`) reached this mitigation, so that a rollback of that batch can take back
  // just its part (ExpiryWithoutBatch): the latest expiry each such batch, source and
  // policy asked for, and under "" the latest every other hit asked for (the creation's
  // included). expires_at is the latest of them. Empty: no other batch's hit reached it.
  // Use ExtendExpiry.
  std::vector<BatchExpiry> batch_expiries;
  // Hits recorded past kMaxListedDetections, counted instead of listed (AddDetections).
  int64_t unlisted_detections = 0;
  std::string state_reason;  // why the last state change happened (revoke note, safeguard)
  int64_t seq = 0;           // seq of the last ledger change that touched it

  bool operator==(const Mitigation&) const = default;
};

// When a pending approval's window (pending_ttl) starts: its creation, or its start when
// that is later (a delayed decision held at its start, or held before a start to come):
// a hold at the start of a decision scheduled long ago still gets a whole window.
inline absl::Time PendingSince(const Mitigation& m) {
  return m.starts_at > m.created_at ? m.starts_at : m.created_at;
}

// Live at `now`: IsLive, and not an active mitigation past its expiry whose `expired`
// change the scheduler has yet to write (it stops being enforced at expires_at, and is
// not revoked, appealed or extended after that).
bool LiveAt(const Mitigation& m, absl::Time now);
// The same, and not a pending approval created `pending_ttl` or more ago (it can no longer
// be approved; the sweeper writes its expiry): what a person can still act on.
bool LiveAt(const Mitigation& m, absl::Time now, absl::Duration pending_ttl);
// When a mitigation of a live state is over by that rule: a pending approval's end of its
// approval window, else its expiry.
absl::Time OverAt(const Mitigation& m, absl::Duration pending_ttl);

// How the state_reason of a pending approval that expired unapproved begins (the sweeper's
// and CreateOrExtend's, workflow::PendingExpiredReason): such a decision was never enforced.
inline constexpr std::string_view kPendingExpiredReasonPrefix = "pending approval expired";
// The state_reason the scheduler writes on a scheduled decision whose start it reached
// only after its expiry (it was down for the whole window): expired, never enforced.
// Such a decision was written "scheduled start reached" before 2026-12-02, and expired
// with exactly that reason it is the same case (started, it would say more).
inline constexpr std::string_view kStartAfterExpiryReason =
    "scheduled start reached after its expiry: never enforced";
inline constexpr std::string_view kStartAfterExpiryReasonBefore = "scheduled start reached";
//! Expired without ever being enforced: a pending approval nobody approved in time
//! (kPendingExpiredReasonPrefix), or a scheduled decision whose start came after its expiry.
bool ExpiredUnenforced(const Mitigation& m);
//! Whether `m` counts as a prior offence of its entity (escalation, `prior()`): live,
//! or expired after it was enforced. Not one a person undid (revoked, rejected, appeal
//! granted, rolled back), not one expired unenforced (ExpiredUnenforced), not a suppressed one,
//! and not a shadow one when `exclude_shadow` (a shadow policy counts its own).
bool CountsAsPrior(const Mitigation& m, bool exclude_shadow);

//! The policy whose hit recorded m.detections[i] (i < m.detections.size()), as recorded:
//! MergedCreation(P) for a merged mitigation's creation, which is not a hit of P on `m`.
std::string_view DetectionPolicy(const Mitigation& m, size_t i);
//! How the creation of a mitigation of `policy`, merged into another, is recorded in that
//! one's detection_policies: "merged:" + policy ("" for a manual one). Policy ids hold no ':'.
std::string MergedCreation(std::string_view policy);
//! How a hit of `policy` that a rollback of its import batch took back is recorded in
//! detection_policies: "rolled_back:" + policy. Evidence still, no longer a hit of it.
std::string RolledBackHit(std::string_view policy);
//! Whether a detection_policies entry is a MergedCreation.
bool IsMergedCreation(std::string_view entry);
//! The policy a detection_policies entry names: P for MergedCreation(P) and
//! RolledBackHit(P), else the entry.
std::string_view EntryPolicy(std::string_view entry);
//! Records m.detections[i] (i < m.detections.size()) as RolledBackHit of the policy it was
//! recorded for.
void TakeBackHit(Mitigation& m, size_t i);
// How many detection ids a mitigation lists (detections) before it counts further hits in
// unlisted_detections instead. Every hit rewrites the whole record into the ledger, so an
// entity that a real-time rule hits on every event (a bot's plays, thousands an hour) made
// each write larger than the last. A policy's first hit is listed past the bound all the
// same: its entry names the policy (immunity, escalation). Escalation counts listed hits
// only: a ladder step after more than kMaxListedDetections - 1 hits of one policy on one
// mitigation is reached through several mitigations or not at all.
inline constexpr size_t kMaxListedDetections = 100;
//! Records `ids` on `m` as hits of `policy` (keeps detection_policies in step): listed
//! while fewer than kMaxListedDetections are (or while none is `policy`'s), else counted
//! in unlisted_detections.
void AddDetections(Mitigation& m, const std::vector<std::string>& ids, std::string_view policy);

// A hit asking a live mitigation to last until `expires`: from import batch `batch` ("" for
// none), detection source `source`, policy `policy`.
struct ExpiryHit {
  std::string_view batch, source, policy;
  absl::Time expires;
};
//! Records `hit` on `m`: m.expires_at becomes the later of the two, and batch_expiries keeps
//! its part when it comes from an import batch other than m's creation's (or under "" once
//! the list exists). Returns whether m was extended.
bool ExtendExpiry(Mitigation& m, const ExpiryHit& hit);
//! Whether a hit of import batch `batch` extended `m` (and, when given, "" = any, was of
//! `source` and `policy`).
bool HitByBatch(const Mitigation& m, std::string_view batch, std::string_view source,
                std::string_view policy);
//! Undoes those hits' part: removes their entries from m.batch_expiries (the whole list once
//! no other batch's remains; appended to *removed when given) and returns the expiry the
//! remaining hits asked for, which the caller sets. nullopt (m unchanged) when
//! HitByBatch is false.
std::optional<absl::Time> ExpiryWithoutBatch(Mitigation& m, std::string_view batch,
                                             std::string_view source, std::string_view policy,
                                             std::vector<BatchExpiry>* removed = nullptr);

// Serialises to the JSON object of the HTTP API and of ledger payloads. Field order is
// fixed, so the bytes are deterministic (the hash chain depends on it).
std::string MitigationToJson(const Mitigation& m);
// Appends the same JSON to `out`.
void AppendMitigationJson(const Mitigation& m, std::string* out);
// Parses what MitigationToJson wrote. kInvalidArgument on malformed input.
absl::StatusOr<Mitigation> MitigationFromJson(std::string_view json);

// Appends `s` to `out` as a JSON string literal (quotes and escapes included).
void AppendJsonString(std::string_view s, std::string* out);
// Appends `v` to `out` as a JSON array of string literals.
void AppendJsonStrings(const std::vector<std::string>& v, std::string* out);

}  // namespace quell::core

#endif  // QUELL_CORE_MITIGATION_H_
