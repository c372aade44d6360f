#include "ledger/internal/entity_prefetch.h"

#include <algorithm>
#include <functional>

#include "core/strings.h"

namespace quell::ledger::internal {

uint64_t EntityPrefetch::Hash(std::string_view entity) {
  return std::hash<std::string_view>()(entity);
}

void EntityPrefetch::Put(std::string entity, Result result) {
  used_.store(true, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  if (result.mitigations.size() > kMaxMitigations) {
    results_.erase(entity);  // an older, smaller one must not answer instead
    return;
  }
  auto [it, inserted] = results_.insert_or_assign(std::move(entity), std::move(result));
  // A key taken and put again is in order_ twice: the older copy may evict the newer
  // result early, which only costs a read.
  if (!inserted) return;  // already in order_
  order_.push_back(it->first);
  while (order_.size() > kMaxResults) {
    results_.erase(order_.front());
    order_.pop_front();
  }
}

void EntityPrefetch::NoteWrite(std::string_view entity, int64_t seq) {
  if (!used_.load(std::memory_order_relaxed)) {  // not logged: no result may predate it
    trusted_from_ = std::max(trusted_from_, seq);
    return;
  }
  const uint64_t h = Hash(entity);
  int64_t& last = last_write_[h];
  last = std::max(last, seq);
  writes_.emplace_back(seq, h);
  while (writes_.size() > kMaxWrites) {
    auto [old_seq, old_hash] = writes_.front();
    writes_.pop_front();
    auto it = last_write_.find(old_hash);
    if (it != last_write_.end() && it->second <= old_seq) last_write_.erase(it);
    trusted_from_ = std::max(trusted_from_, old_seq);
  }
}

void EntityPrefetch::Distrust(int64_t head_seq) {
  last_write_.clear();
  writes_.clear();
  trusted_from_ = head_seq;
  absl::MutexLock lock(&mu_);
  results_.clear();
  order_.clear();
}

std::optional<EntityPrefetch::Result> EntityPrefetch::Take(std::string_view entity,
                                                           absl::Time since) {
  if (!used_.load(std::memory_order_relaxed)) return std::nullopt;
  std::optional<Result> r;
  {
    absl::MutexLock lock(&mu_);
    auto it = results_.find(AV(entity));
    if (it == results_.end()) return std::nullopt;
    r = std::move(it->second);
    results_.erase(it);  // order_ keeps the key: erasing a missing key later is harmless
  }
  auto w = last_write_.find(Hash(entity));
  const bool written_after = w != last_write_.end() && w->second > r->snapshot_seq;
  if (r->snapshot_seq < trusted_from_ || written_after || r->since > since) {
    ++refused_;
    return std::nullopt;
  }
  ++taken_;
  return r;
}

}  // namespace quell::ledger::internal
