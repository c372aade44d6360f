#include "core/mitigation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/aggregate.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "rapidjson/encodedstream.h"
#include "rapidjson/memorystream.h"
#include "rapidjson/reader.h"

namespace quell::core {
namespace {

constexpr std::string_view kStateNames[] = {"pending_approval", "scheduled", "active",
                                            "expired",          "revoked",   "shadow",
                                            "rejected",         "suppressed"};

}  // namespace

std::string_view StateName(MitigationState s) { return kStateNames[static_cast<int>(s)]; }

std::optional<MitigationState> ParseState(std::string_view name) {
  for (size_t i = 0; i < std::size(kStateNames); ++i) {
    if (kStateNames[i] == name) return static_cast<MitigationState>(i);
  }
  return std::nullopt;
}

bool IsLive(MitigationState s) {
  return s == MitigationState::kPendingApproval || s == MitigationState::kScheduled ||
         s == MitigationState::kActive;
}

bool ExpiredUnenforced(const Mitigation& m) {
  if (m.state != MitigationState::kExpired) return false;
  const std::string_view reason = m.state_reason;
  return reason.starts_with(kPendingExpiredReasonPrefix) || reason == kStartAfterExpiryReason ||
         reason == kStartAfterExpiryReasonBefore;
}

bool CountsAsPrior(const Mitigation& m, bool exclude_shadow) {
  switch (m.state) {
    case MitigationState::kPendingApproval:
    case MitigationState::kScheduled:
    case MitigationState::kActive:
      return true;
    case MitigationState::kExpired:
      return !ExpiredUnenforced(m);
    case MitigationState::kShadow:
      return !exclude_shadow;
    case MitigationState::kRevoked:
    case MitigationState::kRejected:
    case MitigationState::kSuppressed:
      return false;
  }
  return false;
}

bool LiveAt(const Mitigation& m, absl::Time now) {
  return IsLive(m.state) && !(m.state == MitigationState::kActive && m.expires_at <= now);
}

absl::Time OverAt(const Mitigation& m, absl::Duration pending_ttl) {
  return m.state == MitigationState::kPendingApproval ? PendingSince(m) + pending_ttl
                                                      : m.expires_at;
}

bool LiveAt(const Mitigation& m, absl::Time now, absl::Duration pending_ttl) {
  return LiveAt(m, now) &&
         !(m.state == MitigationState::kPendingApproval && OverAt(m, pending_ttl) <= now);
}

namespace {

// True for the bytes a JSON string cannot hold as they are.
constexpr bool NeedsEscape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

}  // namespace

void AppendJsonString(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  // Copies each run of plain bytes in one append: ids, entities and names have no byte to
  // escape, so this is usually one append per string (serialisation is on the commit
  // thread and the snapshot's hot path).
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (!NeedsEscape(c)) continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void AppendJsonStrings(const std::vector<std::string>& v, std::string* out) {
  out->push_back('[');
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out->push_back(',');
    AppendJsonString(v[i], out);
  }
  out->push_back(']');
}

// The JSON is the ledger's record of a mitigation (a change's payload): every field is
// written below and read back by MitigationFromJson. A new field stops the build here.
static_assert(FieldCount<Mitigation>() == 21,
              "core::Mitigation changed: write the new field in AppendMitigationJson, read it "
              "in MitigationFromJson, then update this count");

void AppendMitigationJson(const Mitigation& m, std::string* out) {
  auto field = [out](std::string_view name, std::string_view value) {
    out->push_back('"');
    out->append(name);
    out->append("\":");
    AppendJsonString(value, out);
    out->push_back(',');
  };
  out->push_back('{');
  field("id", m.id);
  field("entity", m.entity.str());
  field("action", m.action);
  field("state", StateName(m.state));
  // Appended in place (a time's text needs no escaping): every ledger change writes four.
  auto time = [out](std::string_view name, absl::Time t) {
    out->push_back('"');
    out->append(name);
    out->append("\":\"");
    AppendRfc3339(t, out);
    out->append("\",");
  };
  time("created_at", m.created_at);
  time("updated_at", m.updated_at);
  time("starts_at", m.starts_at);
  time("expires_at", m.expires_at);
  field("reason", m.reason);
  field("source", m.source);
  field("policy", m.policy);
  absl::StrAppend(out, "\"policy_version\":", m.policy_version, ",");
  field("actor", m.actor);
  field("batch", m.batch);
  out->append("\"detections\":[");
  for (size_t i = 0; i < m.detections.size(); ++i) {
    if (i) out->push_back(',');
    AppendJsonString(m.detections[i], out);
  }
  out->append("],");
  if (!m.detection_policies.empty()) {  // only on a record that another policy extended
    out->append("\"detection_policies\":[");
    for (size_t i = 0; i < m.detection_policies.size(); ++i) {
      if (i) out->push_back(',');
      AppendJsonString(m.detection_policies[i], out);
    }
    out->append("],");
  }
  if (!m.approvals.empty()) {  // only once a reviewer approved it
    out->append("\"approvals\":[");
    for (size_t i = 0; i < m.approvals.size(); ++i) {
      if (i) out->push_back(',');
      AppendJsonString(m.approvals[i], out);
    }
    out->append("],");
  }
  if (!m.batch_expiries.empty()) {  // only once another import batch's hit reached it
    out->append("\"batch_expiries\":[");
    for (size_t i = 0; i < m.batch_expiries.size(); ++i) {
      const BatchExpiry& e = m.batch_expiries[i];
      out->append(i ? ",{\"batch\":" : "{\"batch\":");
      AppendJsonString(e.batch, out);
      out->append(",\"source\":");
      AppendJsonString(e.source, out);
      out->append(",\"policy\":");
      AppendJsonString(e.policy, out);
      out->append(",\"expires_at\":\"");
      AppendRfc3339(e.expires_at, out);
      out->append("\"}");
    }
    out->append("],");
  }
  if (m.unlisted_detections != 0) {  // only past kMaxListedDetections hits
    absl::StrAppend(out, "\"unlisted_detections\":", m.unlisted_detections, ",");
  }
  field("state_reason", m.state_reason);
  absl::StrAppend(out, "\"seq\":", m.seq, "}");
}

std::string_view DetectionPolicy(const Mitigation& m, size_t i) {
  return i < m.detection_policies.size() ? std::string_view(m.detection_policies[i])
                                         : std::string_view(m.policy);
}

namespace {
constexpr std::string_view kMergedPrefix = "merged:";
constexpr std::string_view kRolledBackPrefix = "rolled_back:";
}  // namespace

std::string MergedCreation(std::string_view policy) {
  return policy.empty() ? std::string() : absl::StrCat(AV(kMergedPrefix), AV(policy));
}

std::string RolledBackHit(std::string_view policy) {
  return absl::StrCat(AV(kRolledBackPrefix), AV(policy));
}

bool IsMergedCreation(std::string_view entry) { return entry.starts_with(kMergedPrefix); }

std::string_view EntryPolicy(std::string_view entry) {
  for (std::string_view prefix : {kMergedPrefix, kRolledBackPrefix}) {
    if (entry.starts_with(prefix)) entry.remove_prefix(prefix.size());
  }
  return entry;
}

void TakeBackHit(Mitigation& m, size_t i) {
  if (m.detection_policies.empty()) m.detection_policies.assign(m.detections.size(), m.policy);
  std::string& entry = m.detection_policies[i];
  if (!entry.starts_with(kRolledBackPrefix)) entry = RolledBackHit(entry);
}

void AddDetections(Mitigation& m, const std::vector<std::string>& ids, std::string_view policy) {
  auto named = [&m, policy] {
    for (size_t i = 0; i < m.detections.size(); ++i) {
      if (DetectionPolicy(m, i) == policy) return true;
    }
    return false;
  };
  for (const std::string& id : ids) {
    if (m.detections.size() >= kMaxListedDetections && named()) {
      ++m.unlisted_detections;
      continue;
    }
    // Per detection once another policy's hit is recorded (even as the first detection of a
    // manual mitigation, which has none: then the list starts with this hit).
    const bool per_detection = !m.detection_policies.empty() || policy != m.policy;
    if (m.detection_policies.empty() && per_detection) {
      m.detection_policies.assign(m.detections.size(), m.policy);
    }
    m.detections.push_back(id);
    if (per_detection) m.detection_policies.emplace_back(policy);
  }
}

namespace {

// Whether `e` is of `batch` and, when given (non-empty), of `source` and `policy`.
bool Selects(const BatchExpiry& e, std::string_view batch, std::string_view source,
             std::string_view policy) {
  return e.batch == batch && (source.empty() || e.source == source) &&
         (policy.empty() || e.policy == policy);
}

}  // namespace

bool ExtendExpiry(Mitigation& m, const ExpiryHit& hit) {
  const bool later = hit.expires > m.expires_at;
  // Counted apart: a hit of an import batch that is not the creation's own (a batch id is
  // the importer's label, so the same id from another source is another import; another
  // policy's hits are its own decisions), which a rollback may take back alone. Even one
  // that extends nothing: its hits are taken back too (escalation counts them), and its
  // expiry holds once the hits above it are rolled back.
  const bool apart = !hit.batch.empty() &&
                     (hit.batch != m.batch || hit.source != m.source || hit.policy != m.policy);
  if (m.batch_expiries.empty() && apart) {
    // Everything before asked for no more than the expiry so far.
    m.batch_expiries.push_back({"", "", "", m.expires_at});
  }
  if (!m.batch_expiries.empty()) {
    const std::string_view batch = apart ? hit.batch : "";
    const std::string_view source = apart ? hit.source : "";
    const std::string_view policy = apart ? hit.policy : "";
    auto it =
        std::find_if(m.batch_expiries.begin(), m.batch_expiries.end(), [&](const BatchExpiry& e) {
          return e.batch == batch && e.source == source && e.policy == policy;
        });
    if (it == m.batch_expiries.end()) {
      m.batch_expiries.push_back(
          {std::string(batch), std::string(source), std::string(policy), hit.expires});
    } else if (hit.expires > it->expires_at) {
      it->expires_at = hit.expires;
    }
  }
  if (later) m.expires_at = hit.expires;
  return later;
}

bool HitByBatch(const Mitigation& m, std::string_view batch, std::string_view source,
                std::string_view policy) {
  if (batch.empty()) return false;
  return std::any_of(m.batch_expiries.begin(), m.batch_expiries.end(),
                     [&](const BatchExpiry& e) { return Selects(e, batch, source, policy); });
}

std::optional<absl::Time> ExpiryWithoutBatch(Mitigation& m, std::string_view batch,
                                             std::string_view source, std::string_view policy,
                                             std::vector<BatchExpiry>* removed) {
  if (!HitByBatch(m, batch, source, policy)) return std::nullopt;
  std::erase_if(m.batch_expiries, [&](const BatchExpiry& e) {
    if (!Selects(e, batch, source, policy)) return false;
    if (removed != nullptr) removed->push_back(e);
    return true;
  });
  absl::Time expires = absl::InfinitePast();
  bool other_batch = false;
  for (const BatchExpiry& e : m.batch_expiries) {
    expires = std::max(expires, e.expires_at);
    other_batch |= !e.batch.empty();
  }
  if (!other_batch) m.batch_expiries.clear();
  return expires == absl::InfinitePast() ? m.expires_at : expires;  // (a record without "")
}

std::string MitigationToJson(const Mitigation& m) {
  std::string out;
  out.reserve(512);
  AppendMitigationJson(m, &out);
  return out;
}

namespace {

// The fields of a mitigation record, in the order AppendMitigationJson writes them.
enum Field : uint8_t {
  kId,
  kEntity,
  kAction,
  kState,
  kCreatedAt,
  kUpdatedAt,
  kStartsAt,
  kExpiresAt,
  kReason,
  kSource,
  kPolicy,
  kPolicyVersion,
  kActor,
  kBatch,
  kDetections,
  kDetectionPolicies,   // optional
  kApprovals,           // optional
  kBatchExpiries,       // optional
  kUnlistedDetections,  // optional
  kStateReason,
  kSeq,
  kFieldCount,
  kUnknown = kFieldCount,
};
// clang-format off
constexpr std::string_view kFieldNames[kFieldCount] = {
    "id",         "entity",         "action",              "state",
    "created_at", "updated_at",     "starts_at",           "expires_at",
    "reason",     "source",         "policy",              "policy_version",
    "actor",      "batch",          "detections",          "detection_policies",
    "approvals",  "batch_expiries", "unlisted_detections", "state_reason",
    "seq"};
// clang-format on

// Reads one record in a single pass (SAX) straight into a Mitigation: stored records are
// read for every decision on an entity that has some, and building a DOM first, then
// looking each field up in it, was most of the cost. As the DOM reader did: a field's
// first occurrence counts, unknown fields (any shape) are skipped, every field must be
// there with its type.
class MitigationReader : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, MitigationReader> {
 public:
  explicit MitigationReader(Mitigation* m) : m_(m) {}

  bool StartObject() {
    if (depth_ == 2 && in_expiries_) {  // an entry of batch_expiries
      m_->batch_expiries.emplace_back();
      entry_seen_ = 0;
      entry_field_ = -1;
      ++depth_;
      return true;
    }
    return Open();
  }
  bool EndObject(rapidjson::SizeType) {
    if (depth_ == 3 && in_expiries_ && entry_seen_ != 0b1111) {
      return Fail("mitigation: each of batch_expiries needs batch, source, policy, expires_at");
    }
    return Close();
  }
  bool StartArray() {
    if (depth_ == 0) return Fail("mitigation: malformed JSON");
    if (depth_ == 1 && field_ == kBatchExpiries) {
      in_expiries_ = true;
      return Open();
    }
    if (depth_ == 1 && field_ == kDetections) array_ = &m_->detections;
    if (depth_ == 1 && field_ == kDetectionPolicies) array_ = &m_->detection_policies;
    if (depth_ == 1 && field_ == kApprovals) array_ = &m_->approvals;
    in_detections_ = array_ != nullptr;
    return Open();
  }
  bool EndArray(rapidjson::SizeType) {
    if (depth_ == 2 && in_expiries_) {
      in_expiries_ = false;
      Mark(field_);
      return Close();
    }
    if (depth_ == 2 && in_detections_) {
      in_detections_ = false;
      array_ = nullptr;
      Mark(field_);
    }
    return Close();
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view name(s, n);
    if (depth_ == 3 && in_expiries_) {
      constexpr std::string_view kEntryFields[] = {"batch", "source", "policy", "expires_at"};
      entry_field_ = -1;
      for (int i = 0; i < 4; ++i) {
        if (kEntryFields[i] == name && (entry_seen_ >> i & 1) == 0) entry_field_ = i;
      }
      return true;
    }
    if (depth_ != 1) return true;
    // Records come in write order: try the field after the last one first.
    Field f = next_ < kFieldCount && kFieldNames[next_] == name ? next_ : kUnknown;
    for (uint8_t i = 0; f == kUnknown && i < kFieldCount; ++i) {
      if (kFieldNames[i] == name) f = static_cast<Field>(i);
    }
    if (f != kUnknown) next_ = static_cast<Field>(f + 1);
    // A repeated field keeps its first value.
    field_ = f != kUnknown && (seen_ >> f & 1) != 0 ? kUnknown : f;
    return true;
  }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view v(s, n);
    if (depth_ == 0) return Fail("mitigation: malformed JSON");
    if (in_detections_ && depth_ == 2) {
      array_->emplace_back(v);
      return true;
    }
    if (in_expiries_) return EntryString(v);
    if (depth_ != 1) return true;
    if (in_detections_field()) return Fail("mitigation: missing policy_version, seq or detections");
    switch (field_) {
      case kId:
        m_->id.assign(v);
        break;
      case kEntity: {
        auto e = Entity::Parse(v);
        if (!e.ok()) return Fail(e.status());
        m_->entity = *std::move(e);
        break;
      }
      case kAction:
        m_->action.assign(v);
        break;
      case kState: {
        auto st = ParseState(v);
        if (!st) return Fail("mitigation: unknown state");
        m_->state = *st;
        break;
      }
      case kCreatedAt:
        return Time(v, &m_->created_at);
      case kUpdatedAt:
        return Time(v, &m_->updated_at);
      case kStartsAt:
        return Time(v, &m_->starts_at);
      case kExpiresAt:
        return Time(v, &m_->expires_at);
      case kReason:
        m_->reason.assign(v);
        break;
      case kSource:
        m_->source.assign(v);
        break;
      case kPolicy:
        m_->policy.assign(v);
        break;
      case kActor:
        m_->actor.assign(v);
        break;
      case kBatch:
        m_->batch.assign(v);
        break;
      case kStateReason:
        m_->state_reason.assign(v);
        break;
      case kPolicyVersion:
      case kSeq:
      case kDetectionPolicies:
      case kApprovals:
      case kBatchExpiries:
      case kUnlistedDetections:
        return Fail(WrongType(field_));
      default:
        return true;
    }
    Mark(field_);
    return true;
  }
  bool Int(int v) { return Integer(v); }
  bool Uint(unsigned v) { return Integer(v); }
  bool Int64(int64_t v) { return Integer(v); }
  bool Uint64(uint64_t v) {
    if (v > static_cast<uint64_t>(INT64_MAX)) return Default();
    return Integer(static_cast<int64_t>(v));
  }
  // Anything else (null, bool, double) is the wrong type for a known field.
  bool Default() {
    if (depth_ == 0) return Fail("mitigation: malformed JSON");
    if (depth_ == 2 && in_detections_) return Fail("mitigation: detections must be strings");
    if (in_expiries_) return EntryValue();
    if (depth_ != 1 || field_ == kUnknown) return true;
    return Fail(WrongType(field_));
  }

  // The record's outcome once the reader is done: OK only with every field read.
  absl::Status Finish(bool parsed) {
    if (!error_.ok()) return error_;
    if (!parsed) return absl::InvalidArgumentError("mitigation: malformed JSON");
    for (uint8_t f = 0; f < kFieldCount; ++f) {
      const bool optional = f == kDetectionPolicies || f == kApprovals || f == kBatchExpiries ||
                            f == kUnlistedDetections;
      if ((seen_ >> f & 1) == 0 && !optional) return WrongType(static_cast<Field>(f));
    }
    if (!m_->detection_policies.empty() && m_->detection_policies.size() != m_->detections.size()) {
      return absl::InvalidArgumentError(
          "mitigation: detection_policies must have one entry per detection");
    }
    return absl::OkStatus();
  }

 private:
  bool in_detections_field() const { return field_ == kDetections; }
  static absl::Status WrongType(Field f) {
    if (f == kBatchExpiries) {
      return absl::InvalidArgumentError(
          "mitigation: batch_expiries must be objects of strings (batch, source, policy, "
          "expires_at)");
    }
    if (f == kUnlistedDetections) {
      return absl::InvalidArgumentError("mitigation: unlisted_detections must be an integer >= 0");
    }
    if (f == kDetectionPolicies || f == kApprovals) {
      return absl::InvalidArgumentError(
          absl::StrCat("mitigation: ", AV(kFieldNames[f]), " must be strings"));
    }
    if (f == kPolicyVersion || f == kSeq || f == kDetections) {
      return absl::InvalidArgumentError("mitigation: missing policy_version, seq or detections");
    }
    return absl::InvalidArgumentError(
        absl::StrCat("mitigation: missing string ", AV(kFieldNames[f])));
  }
  bool Open() {
    // The record must be an object; a known field must not be one (nor an array, but
    // for detections).
    if (depth_ == 0 && !root_open_) {
      root_open_ = true;
    } else if (depth_ == 1 && field_ != kUnknown && !in_detections_ && !in_expiries_) {
      return Fail(WrongType(field_));
    } else if (depth_ == 2 && in_detections_) {
      return Fail("mitigation: detections must be strings");
    } else if (EntryRefusesNonString()) {
      return Fail(WrongType(kBatchExpiries));
    }
    ++depth_;
    return true;
  }
  bool Close() {
    --depth_;
    return true;
  }
  bool Integer(int64_t v) {
    if (depth_ == 0) return Fail("mitigation: malformed JSON");
    if (depth_ == 2 && in_detections_) return Fail("mitigation: detections must be strings");
    if (in_expiries_) return EntryValue();
    if (depth_ != 1 || field_ == kUnknown) return true;
    if (field_ == kPolicyVersion) {
      m_->policy_version = v;
    } else if (field_ == kUnlistedDetections) {
      if (v < 0) return Fail(WrongType(field_));
      m_->unlisted_detections = v;
    } else if (field_ == kSeq) {
      m_->seq = v;
    } else {
      return Fail(WrongType(field_));
    }
    Mark(field_);
    return true;
  }
  bool Time(std::string_view v, absl::Time* out) {
    auto t = ParseRfc3339(v);
    if (!t.ok()) return Fail(t.status());
    *out = *t;
    Mark(field_);
    return true;
  }
  void Mark(Field f) { seen_ |= uint32_t{1} << f; }
  // Inside batch_expiries, where only a string may come: an entry (which must be an
  // object) or a known field of one. An unknown field's value, of any shape, is skipped
  // as at the top level.
  bool EntryRefusesNonString() const {
    return in_expiries_ && (depth_ == 2 || (depth_ == 3 && entry_field_ >= 0));
  }
  // A scalar other than a string inside batch_expiries.
  bool EntryValue() { return EntryRefusesNonString() ? Fail(WrongType(kBatchExpiries)) : true; }
  // A string inside batch_expiries: an entry's field (unknown ones skipped).
  bool EntryString(std::string_view v) {
    if (depth_ == 2) return Fail(WrongType(kBatchExpiries));
    if (depth_ > 3 || entry_field_ < 0) return true;  // inside an unknown field
    BatchExpiry& e = m_->batch_expiries.back();
    entry_seen_ |= 1 << entry_field_;
    switch (entry_field_) {
      case 0:
        e.batch.assign(v);
        return true;
      case 1:
        e.source.assign(v);
        return true;
      case 2:
        e.policy.assign(v);
        return true;
      default: {
        auto t = ParseRfc3339(v);
        if (!t.ok()) return Fail(t.status());
        e.expires_at = *t;
        return true;
      }
    }
  }
  bool Fail(std::string_view message) { return Fail(absl::InvalidArgumentError(AV(message))); }
  bool Fail(absl::Status st) {
    error_ = std::move(st);
    return false;
  }

  Mitigation* m_;
  int depth_ = 0;
  bool root_open_ = false;
  bool in_detections_ = false;                 // inside a field that is an array of strings
  bool in_expiries_ = false;                   // inside batch_expiries
  int entry_field_ = -1;                       // the batch_expiries entry's field being read
  int entry_seen_ = 0;                         // its fields read so far (bits)
  std::vector<std::string>* array_ = nullptr;  // which one
  Field field_ = kUnknown;
  Field next_ = kId;
  uint32_t seen_ = 0;
  absl::Status error_;
};

}  // namespace

absl::StatusOr<Mitigation> MitigationFromJson(std::string_view json) {
  Mitigation m;
  MitigationReader handler(&m);
  rapidjson::Reader reader;
  // RapidJSON stops at a NUL as at the end of the text: a raw NUL (never valid JSON) is
  // refused here, or a record followed by one would read as that record.
  if (json.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError("mitigation: malformed JSON");
  }
  rapidjson::MemoryStream ms(json.data(), json.size());
  rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> in(ms);
  const bool parsed = !reader.Parse(in, handler).IsError();
  QUELL_RETURN_IF_ERROR(handler.Finish(parsed));
  return m;
}

}  // namespace quell::core
