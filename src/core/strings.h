// Debian 12's abseil is built with its own absl::string_view (not an alias of
// std::string_view), so the two do not convert implicitly. Quell's interfaces use
// std::string_view; wrap a view in AV() where abseil wants one (StrCat, hash-map
// lookups, Status messages).
//
// Thread-safety: pure functions.
#ifndef QUELL_CORE_STRINGS_H_
#define QUELL_CORE_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace quell {

inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view SV(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace quell

#endif  // QUELL_CORE_STRINGS_H_
