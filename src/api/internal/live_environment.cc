#include "api/internal/live_environment.h"

#include "core/entity.h"

namespace quell::api::internal {

bool LiveEnvironment::Active(std::string_view entity, std::string_view action) {
  if (index_ == nullptr) return false;
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return false;
  index::Hits hits;
  index_->Lookup(*e, now_, &hits);
  for (const index::Hit& h : hits) {
    if (h.cidr_prefix < 0 && index_->ActionName(h.action) == action) return true;
  }
  return false;
}

namespace {

// in_list() for both environments: the entity in its normal form (as entries are kept).
bool ListHas(const workflow::Safeguards* lists, std::string_view list, std::string_view entity) {
  if (lists == nullptr) return false;
  auto e = core::Entity::Parse(entity);
  return e.ok() && lists->ListHas(list, *e);
}

}  // namespace

bool LiveEnvironment::InList(std::string_view list, std::string_view entity) {
  return ListHas(lists_, list, entity);
}

int64_t LiveEnvironment::Prior(std::string_view entity, std::string_view action,
                               absl::Duration window) {
  if (store_ == nullptr) return 0;
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return 0;
  auto n = store_->CountMitigations(*e, "", action, now_ - window, /*exclude_shadow=*/true);
  if (!n.ok()) {
    ++store_errors_;
    return 0;
  }
  return *n;
}

int64_t LiveEnvironment::Count(std::string_view counter, std::string_view key,
                               absl::Duration window) {
  if (counters_ == nullptr) return 0;
  auto n = counters_->Count(counter, key, window, now_);
  if (!n.ok()) {
    // An undeclared counter is a policy error the compiler already rejects; only an
    // unavailable backend is the store's failure.
    if (absl::IsUnavailable(n.status())) ++counter_errors_;
    return 0;
  }
  return *n;
}

int64_t LiveEnvironment::Distinct(std::string_view counter, std::string_view key,
                                  absl::Duration window) {
  if (counters_ == nullptr) return 0;
  auto n = counters_->Distinct(counter, key, window, now_);
  if (!n.ok()) {
    if (absl::IsUnavailable(n.status())) ++counter_errors_;
    return 0;
  }
  return *n;
}

bool TxnEnvironment::InList(std::string_view list, std::string_view entity) {
  return ListHas(lists_, list, entity);
}

bool TxnEnvironment::Active(std::string_view entity, std::string_view action) {
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return false;
  auto live = txn_.FindLive(*e, action);
  if (!live.ok()) return false;
  for (const core::Mitigation& m : *live) {
    if (m.state == core::MitigationState::kActive && m.expires_at > now_) return true;
  }
  return false;
}

int64_t TxnEnvironment::Prior(std::string_view entity, std::string_view action,
                              absl::Duration window) {
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return 0;
  auto n = txn_.CountMitigations(*e, "", action, now_ - window, /*exclude_shadow=*/true);
  return n.ok() ? *n : 0;
}

}  // namespace quell::api::internal
