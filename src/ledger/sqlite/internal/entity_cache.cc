#include "ledger/sqlite/internal/entity_cache.h"

#include <utility>

#include "core/strings.h"

namespace quell::ledger::sqlite_internal {

EntityCache::Entry* EntityCache::Lookup(std::string_view entity) {
  if (auto it = young_.find(AV(entity)); it != young_.end()) return &it->second;
  auto it = old_.find(AV(entity));
  if (it == old_.end()) return nullptr;
  Entry moved = std::move(it->second);
  old_.erase(it);
  Reserve();
  return &young_.emplace(std::string(entity), std::move(moved)).first->second;
}

void EntityCache::Reserve() {
  if (young_.size() < half_) return;
  old_ = std::move(young_);
  young_ = Map();
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
    Reserve();
    e = &young_[AV(entity)];
  }
  e->since = since;
  e->mitigations = read;
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
  ms.push_back(m);
}

void EntityCache::Erase(std::string_view entity) {
  young_.erase(AV(entity));
  old_.erase(AV(entity));
}

void EntityCache::Clear() {
  young_.clear();
  old_.clear();
}

}  // namespace quell::ledger::sqlite_internal
