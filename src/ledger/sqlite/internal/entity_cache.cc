#include "ledger/sqlite/internal/entity_cache.h"

#include <utility>

#include "core/strings.h"
#include "core/time.h"

namespace quell::ledger::sqlite_internal {
namespace {

size_t HeapBytes(const std::string& s) {
  return s.capacity() > 15 ? s.capacity() + 1 + 16 : 0;  // past the inline buffer, + malloc
}

size_t Bytes(const core::Mitigation& m) {
  size_t n = sizeof(core::Mitigation) + HeapBytes(m.id) + HeapBytes(m.entity.str()) +
             HeapBytes(m.action) + HeapBytes(m.reason) + HeapBytes(m.source) + HeapBytes(m.policy) +
             HeapBytes(m.actor) + HeapBytes(m.batch) + HeapBytes(m.state_reason) +
             m.detections.capacity() * sizeof(std::string);
  for (const std::string& d : m.detections) n += HeapBytes(d);
  return n;
}

// `m` as the store gives it back: its JSON keeps times to the microsecond.
core::Mitigation AsStored(const core::Mitigation& m) {
  core::Mitigation s = m;
  for (absl::Time* t : {&s.created_at, &s.updated_at, &s.starts_at, &s.expires_at}) {
    *t = core::ToStoredPrecision(*t);
  }
  return s;
}

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
             (e.mitigations.capacity() - e.mitigations.size()) * sizeof(core::Mitigation);
  for (const core::Mitigation& m : e.mitigations) n += Bytes(m);
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

const std::vector<core::Mitigation>* EntityCache::Find(std::string_view entity, absl::Time since) {
  Entry* e = Lookup(entity);
  if (e == nullptr || e->since > since) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  return &e->mitigations;
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
  for (const core::Mitigation& m : read) e->mitigations.push_back(AsStored(m));
  Account(entity, *e);
}

void EntityCache::Written(const core::Mitigation& m) {
  Entry* e = Lookup(m.entity.str());
  if (e == nullptr) return;
  std::vector<core::Mitigation>& ms = e->mitigations;
  for (auto it = ms.begin(); it != ms.end(); ++it) {
    if (it->id == m.id) {
      ms.erase(it);
      break;
    }
  }
  if (ms.size() >= kMaxMitigations) {
    Erase(m.entity.str());
    return;
  }
  ms.push_back(AsStored(m));
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

}  // namespace quell::ledger::sqlite_internal
