#include "ledger/journal.h"

#include <utility>

#include "core/entity.h"
#include "core/status.h"

namespace quell::ledger {

absl::StatusOr<std::vector<Change>> ReadJournal(Store& store, std::string_view journal,
                                                ChangeKind kind) {
  QUELL_ASSIGN_OR_RETURN(core::Entity entity, core::Entity::Parse(journal));
  constexpr int kMax = 10000;
  QUELL_ASSIGN_OR_RETURN(std::vector<Change> changes, store.ReadEntityChanges(entity, kMax));
  auto keep = [&](const Change& c) { return c.kind == kind && c.entity == journal; };
  if (static_cast<int>(changes.size()) < kMax) {
    std::erase_if(changes, [&](const Change& c) { return !keep(c); });
    return changes;
  }
  changes.clear();
  int64_t after = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(std::vector<Change> page, store.ReadChanges(after, kMax));
    if (page.empty()) break;
    after = page.back().seq;
    for (Change& c : page) {
      if (keep(c)) changes.push_back(std::move(c));
    }
  }
  return changes;
}

}  // namespace quell::ledger
