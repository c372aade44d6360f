// UTF-8 validation for untrusted text (import rows, query parameters that end up in
// JSON): a byte sequence is valid when every character is a shortest-form encoding of a
// scalar value (no overlongs, no surrogates, nothing above U+10FFFF).
//
// Thread-safety: pure functions.
#ifndef QUELL_CORE_UTF8_H_
#define QUELL_CORE_UTF8_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace quell::core {

//! The byte offset of the first invalid UTF-8 sequence in `s`, or nullopt.
std::optional<size_t> FindInvalidUtf8(std::string_view s);

}  // namespace quell::core

#endif  // QUELL_CORE_UTF8_H_
