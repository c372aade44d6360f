// How both state stores keep a subscription's list fields (actions, entity types) in one
// text column: the items joined by newlines ('' is the empty list). Items never hold a
// newline (the routes validate them).
//
// Thread-safety: pure functions.
#ifndef QUELL_WEBHOOKS_INTERNAL_LIST_COLUMN_H_
#define QUELL_WEBHOOKS_INTERNAL_LIST_COLUMN_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/strings.h"

namespace quell::webhooks::internal {

inline std::string JoinList(const std::vector<std::string>& v) { return absl::StrJoin(v, "\n"); }

inline std::vector<std::string> SplitList(std::string_view s) {
  if (s.empty()) return {};
  return absl::StrSplit(AV(s), '\n');
}

}  // namespace quell::webhooks::internal

#endif  // QUELL_WEBHOOKS_INTERNAL_LIST_COLUMN_H_
