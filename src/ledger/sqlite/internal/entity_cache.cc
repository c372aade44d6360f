#include "ledger/sqlite/internal/entity_cache.h"

#include <utility>

#include "core/aggregate.h"
#include "core/strings.h"
#include "core/time.h"

namespace quell::ledger::sqlite_internal {
namespace {

size_t HeapBytes(const std::string& s) {
  return s.capacity() > 15 ? s.capacity() + 1 + 16 : 0;  // past the inline buffer, + malloc
}

// Per encoded copy: its string and heap.
size_t Bytes(const std::string& encoded) { return sizeof(std::string) + HeapBytes(encoded); }

std::string Encoded(const core::Mitigation& m) {
  std::string out;
  EncodeMitigation(m, &out);
  out.shrink_to_fit();
  return out;
}

// ---- the codec: little-endian varints; a string is its length then its bytes ----

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutString(std::string_view s, std::string* out) {
  PutVarint(s.size(), out);
  out->append(s);
}
void PutStrings(const std::vector<std::string>& v, std::string* out) {
  PutVarint(v.size(), out);
  for (const std::string& s : v) PutString(s, out);
}
// Zigzag, so that small negative numbers stay short. The infinite times are the two
// extremes; a finite time saturates there only ±292,000 years out, past anything the
// API accepts (RFC 3339 years 0000-9999).
void PutInt(int64_t v, std::string* out) {
  PutVarint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63), out);
}
void PutTime(absl::Time t, std::string* out) {
  if (t == absl::InfinitePast()) return PutInt(INT64_MIN, out);
  if (t == absl::InfiniteFuture()) return PutInt(INT64_MAX, out);
  PutInt(core::ToMicros(t), out);
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool done() const { return in_.empty(); }

  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) break;
      const auto b = static_cast<uint8_t>(in_.front());
      in_.remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    ok_ = false;
    return 0;
  }
  std::string_view View() {
    const uint64_t n = Varint();
    if (!ok_ || n > in_.size()) {
      ok_ = false;
      return {};
    }
    std::string_view s = in_.substr(0, n);
    in_.remove_prefix(n);
    return s;
  }
  void String(std::string* s) { s->assign(View()); }
  void Strings(std::vector<std::string>* v) {
    const uint64_t n = Varint();
    if (!ok_ || n > in_.size()) {  // each string takes a byte at least
      ok_ = false;
      return;
    }
    v->resize(n);
    for (std::string& s : *v) String(&s);
  }
  int64_t Int() {
    const uint64_t z = Varint();
    return static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1);
  }
  absl::Time Time() {
    const int64_t us = Int();
    if (us == INT64_MIN) return absl::InfinitePast();
    if (us == INT64_MAX) return absl::InfiniteFuture();
    return core::FromMicros(us);
  }

 private:
  std::string_view in_;
  bool ok_ = true;
};

// The id, which EncodeMitigation writes first.
std::string_view EncodedId(std::string_view encoded) { return Reader(encoded).View(); }

}  // namespace

EntityCache::Entry* EntityCache::Lookup(std::string_view entity) {
  if (auto it = young_.find(AV(entity)); it != young_.end()) return &it->second;
  auto it = old_.find(AV(entity));
  if (it == old_.end()) return nullptr;
  Entry moved = std::move(it->second);
  old_.erase(it);
  old_bytes_ -= moved.bytes;
  Reserve(moved.bytes);
  young_bytes_ += moved.bytes;
  return &young_.emplace(std::string(entity), std::move(moved)).first->second;
}

void EntityCache::Reserve(size_t bytes) {
  if (young_bytes_ + bytes > half_) TurnOver();
}

void EntityCache::TurnOver() {
  old_ = std::move(young_);
  old_bytes_ = young_bytes_;
  young_ = Map();
  young_bytes_ = 0;
}

void EntityCache::Account(std::string_view entity, Entry& e) {
  // The hash table's slot (key and entry, at a load between 7/16 and 7/8: about twice
  // their size per entry), the key's heap, the mitigations and the vector's spare room.
  size_t n = 2 * (sizeof(Entry) + sizeof(std::string) + 1) +
             (entity.size() > 15 ? entity.size() + 17 : 0) +
             (e.mitigations.capacity() - e.mitigations.size()) * sizeof(std::string);
  for (const std::string& m : e.mitigations) n += Bytes(m);
  young_bytes_ = young_bytes_ - e.bytes + n;
  e.bytes = n;
  if (young_bytes_ <= half_) return;
  // The young generation outgrew its half: it becomes old, this entry alone stays young
  // (unless it is larger than half by itself: then it is not kept).
  Entry kept = std::move(e);
  young_.erase(AV(entity));
  young_bytes_ -= kept.bytes;
  TurnOver();
  if (kept.bytes > half_) return;
  young_bytes_ = kept.bytes;
  young_.emplace(std::string(entity), std::move(kept));
}

bool EntityCache::Find(std::string_view entity, absl::Time since,
                       std::vector<core::Mitigation>* out) {
  Entry* e = Lookup(entity);
  const size_t before = out->size();
  if (e != nullptr && e->since <= since) {
    out->resize(before + e->mitigations.size());
    bool decoded = true;
    for (size_t i = 0; decoded && i < e->mitigations.size(); ++i) {
      decoded = DecodeMitigation(e->mitigations[i], &(*out)[before + i]);
    }
    if (decoded) {
      ++hits_;
      return true;
    }
    out->resize(before);  // cannot happen (the cache encoded it): read the store instead
    Erase(entity);
  }
  ++misses_;
  return false;
}

void EntityCache::Put(std::string_view entity, absl::Time since,
                      const std::vector<core::Mitigation>& read) {
  if (half_ == 0) return;
  if (read.size() > kMaxMitigations) {
    Erase(entity);
    return;
  }
  Entry* e = Lookup(entity);
  if (e == nullptr) {
    Reserve(0);
    e = &young_[AV(entity)];
  }
  e->since = since;
  e->mitigations.clear();
  for (const core::Mitigation& m : read) e->mitigations.push_back(Encoded(m));
  Account(entity, *e);
}

void EntityCache::Written(const core::Mitigation& m) {
  Entry* e = Lookup(m.entity.str());
  if (e == nullptr) return;
  std::vector<std::string>& ms = e->mitigations;
  for (auto it = ms.begin(); it != ms.end(); ++it) {
    if (EncodedId(*it) == m.id) {
      ms.erase(it);
      break;
    }
  }
  if (ms.size() >= kMaxMitigations) {
    Erase(m.entity.str());
    return;
  }
  ms.push_back(Encoded(m));
  Account(m.entity.str(), *e);
}

void EntityCache::Erase(std::string_view entity) {
  if (auto it = young_.find(AV(entity)); it != young_.end()) {
    young_bytes_ -= it->second.bytes;
    young_.erase(it);
  }
  if (auto it = old_.find(AV(entity)); it != old_.end()) {
    old_bytes_ -= it->second.bytes;
    old_.erase(it);
  }
}

void EntityCache::Clear() {
  young_.clear();
  old_.clear();
  young_bytes_ = old_bytes_ = 0;
}

// Every field of core::Mitigation is encoded below: a new field stops the build until the
// codec (and its test, EncodedCopiesKeepEveryField) learns it. The size catches a field
// whose type changes.
static_assert(core::FieldCount<core::Mitigation>() == 21 && sizeof(core::Mitigation) == 488,
              "core::Mitigation changed: encode the new field in EncodeMitigation and "
              "DecodeMitigation, then update this count and size");

void EncodeMitigation(const core::Mitigation& m, std::string* out) {
  PutString(m.id, out);  // first: EncodedId reads it alone
  PutString(m.entity.str(), out);
  PutString(m.action, out);
  PutVarint(static_cast<uint8_t>(m.state), out);
  for (absl::Time t : {m.created_at, m.updated_at, m.starts_at, m.expires_at}) PutTime(t, out);
  PutString(m.reason, out);
  PutString(m.source, out);
  PutString(m.policy, out);
  PutInt(m.policy_version, out);
  PutString(m.actor, out);
  PutString(m.batch, out);
  PutStrings(m.detections, out);
  PutStrings(m.detection_policies, out);
  PutStrings(m.approvals, out);
  PutVarint(m.batch_expiries.size(), out);
  for (const core::BatchExpiry& e : m.batch_expiries) {
    PutString(e.batch, out);
    PutString(e.source, out);
    PutString(e.policy, out);
    PutTime(e.expires_at, out);
  }
  PutInt(m.unlisted_detections, out);
  PutString(m.state_reason, out);
  PutInt(m.seq, out);
}

bool DecodeMitigation(std::string_view in, core::Mitigation* m) {
  Reader r(in);
  r.String(&m->id);
  auto entity = core::Entity::Parse(r.View());
  if (!entity.ok()) return false;
  m->entity = *std::move(entity);
  r.String(&m->action);
  const uint64_t state = r.Varint();
  if (state > static_cast<uint8_t>(core::MitigationState::kSuppressed)) return false;
  m->state = static_cast<core::MitigationState>(state);
  for (absl::Time* t : {&m->created_at, &m->updated_at, &m->starts_at, &m->expires_at}) {
    *t = r.Time();
  }
  r.String(&m->reason);
  r.String(&m->source);
  r.String(&m->policy);
  m->policy_version = r.Int();
  r.String(&m->actor);
  r.String(&m->batch);
  r.Strings(&m->detections);
  r.Strings(&m->detection_policies);
  r.Strings(&m->approvals);
  const uint64_t expiries = r.Varint();
  if (expiries > in.size()) return false;  // each takes bytes: a bad count is corrupt
  m->batch_expiries.resize(expiries);
  for (core::BatchExpiry& e : m->batch_expiries) {
    r.String(&e.batch);
    r.String(&e.source);
    r.String(&e.policy);
    e.expires_at = r.Time();
  }
  m->unlisted_detections = r.Int();
  r.String(&m->state_reason);
  m->seq = r.Int();
  return r.ok() && r.done();
}

}  // namespace quell::ledger::sqlite_internal
