#include "ledger/journal.h"

#include <utility>

#include "core/status.h"

namespace quell::ledger {

absl::Status ForEachEntityChange(Store& store, const core::Entity& entity,
                                 const std::function<bool(const Change&)>& fn) {
  constexpr int kPage = 1000;
  int64_t after = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(std::vector<Change> page, store.ReadEntityChanges(entity, kPage, after));
    for (const Change& c : page) {
      if (!fn(c)) return absl::OkStatus();
    }
    if (static_cast<int>(page.size()) < kPage) return absl::OkStatus();
    after = page.back().seq;
  }
}

absl::StatusOr<std::vector<Change>> ReadJournal(Store& store, std::string_view journal,
                                                ChangeKind kind) {
  QUELL_ASSIGN_OR_RETURN(core::Entity entity, core::Entity::Parse(journal));
  std::vector<Change> changes;
  QUELL_RETURN_IF_ERROR(ForEachEntityChange(store, entity, [&](const Change& c) {
    if (c.kind == kind && c.entity == journal) changes.push_back(c);
    return true;
  }));
  return changes;
}

}  // namespace quell::ledger
