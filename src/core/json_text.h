// Checks on untrusted JSON text made before a parser sees it. rapidjson's parser and the
// code that walks or writes its documents recurse once per level of nesting: a body of
// 200,000 '[' overflowed a server thread's stack (a segfault, from any key holder).
//
// Thread-safety: pure functions.
#ifndef QUELL_CORE_JSON_TEXT_H_
#define QUELL_CORE_JSON_TEXT_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace quell::core {

// The deepest nesting of arrays and objects Quell accepts in any JSON it is given
// (request bodies, import rows, evidence). Far above what a detection or a mitigation
// needs; far below what a stack holds.
inline constexpr int kMaxJsonDepth = 100;

//! The byte offset of the bracket that opens level `max_depth` + 1 in `text` (brackets
//! inside strings do not count), or nullopt if the nesting stays within `max_depth`.
//! Linear, no allocation; `text` need not be valid JSON.
std::optional<size_t> FindJsonNestingOver(std::string_view text, int max_depth = kMaxJsonDepth);

}  // namespace quell::core

#endif  // QUELL_CORE_JSON_TEXT_H_
