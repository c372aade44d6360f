#include "api/internal/live_environment.h"

#include "core/entity.h"

namespace quell::api::internal {

bool LiveEnvironment::Active(std::string_view entity, std::string_view action) {
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return false;
  index::Hits hits;
  index_->Lookup(*e, now_, &hits);
  for (const index::Hit& h : hits) {
    if (h.cidr_prefix < 0 && index_->ActionName(h.action) == action) return true;
  }
  return false;
}

int64_t LiveEnvironment::Prior(std::string_view entity, std::string_view action,
                               absl::Duration window) {
  auto e = core::Entity::Parse(entity);
  if (!e.ok()) return 0;
  auto n = store_->CountMitigations(*e, "", action, now_ - window, /*exclude_shadow=*/true);
  if (!n.ok()) {
    ++store_errors_;
    return 0;
  }
  return *n;
}

}  // namespace quell::api::internal
