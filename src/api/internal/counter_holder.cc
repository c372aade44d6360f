#include "api/internal/counter_holder.h"

#include "counters/in_process_store.h"
#include "counters/redis_store.h"

namespace quell::api::internal {

bool SameCounters(const std::vector<counters::CounterSpec>& a,
                  const std::vector<counters::CounterSpec>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].on != b[i].on || a[i].key != b[i].key ||
        a[i].distinct != b[i].distinct || a[i].windows != b[i].windows) {
      return false;
    }
  }
  return true;
}

std::vector<counters::CounterSpec> CounterHolder::SpecsOf(const policy::PolicySet& set) {
  std::vector<counters::CounterSpec> specs;
  specs.reserve(set.counters().size());
  for (const policy::CounterDef& d : set.counters()) {
    specs.push_back({d.name, d.on, d.key, d.distinct, d.windows});
  }
  return specs;
}

absl::StatusOr<std::shared_ptr<counters::CounterStore>> CounterHolder::Build(
    std::vector<counters::CounterSpec> specs, const CounterOptions& options) {
  counters::TimeOptions time;
  time.max_lateness = options.lateness;
  if (options.redis) {
    counters::RedisOptions ro;
    ro.time = time;
    ro.host = options.redis_host;
    ro.port = options.redis_port;
    auto s = counters::RedisCounterStore::Create(std::move(specs), ro);
    if (!s.ok()) return s.status();
    return std::shared_ptr<counters::CounterStore>(*std::move(s));
  }
  counters::InProcessOptions io;
  io.time = time;
  io.max_keys = options.max_keys;
  auto s = counters::InProcessCounterStore::Create(std::move(specs), io);
  if (!s.ok()) return s.status();
  return std::shared_ptr<counters::CounterStore>(*std::move(s));
}

absl::StatusOr<std::shared_ptr<counters::CounterStore>> CounterHolder::For(
    const std::shared_ptr<const policy::PolicySet>& set) {
  std::lock_guard<std::mutex> lock(mu_);
  if (set == set_) return store_;
  std::vector<counters::CounterSpec> specs = SpecsOf(*set);
  if (store_ != nullptr && SameCounters(specs, specs_)) {
    set_ = set;
    return store_;
  }
  std::shared_ptr<counters::CounterStore> store;
  if (!specs.empty()) {
    auto built = Build(specs, options_);
    if (!built.ok()) return built.status();
    store = *std::move(built);
  }
  if (store_ != nullptr) {
    counters::StoreStats old = store_->Stats();
    retired_evictions_ += old.evicted_cap + old.evicted_expired;
  }
  set_ = set;
  specs_ = std::move(specs);
  store_ = std::move(store);
  return store_;
}

std::shared_ptr<counters::CounterStore> CounterHolder::Peek(const policy::PolicySet& set) const {
  std::vector<counters::CounterSpec> specs = SpecsOf(set);
  std::lock_guard<std::mutex> lock(mu_);
  if (store_ == nullptr || !SameCounters(specs, specs_)) return nullptr;
  return store_;
}

counters::StoreStats CounterHolder::Stats() const {
  std::shared_ptr<counters::CounterStore> store;
  int64_t retired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    store = store_;
    retired = retired_evictions_;
  }
  counters::StoreStats s;
  if (store != nullptr) s = store->Stats();
  s.evicted_expired += retired;
  return s;
}

}  // namespace quell::api::internal
