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

bool LiveEnvironment::InList(std::string_view list, std::string_view entity) {
  if (lists_ == nullptr) return false;
  auto e = core::Entity::Parse(entity);  // entries are kept in the normal form
  return e.ok() && lists_->ListHas(list, *e);
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

}  // namespace quell::api::internal
