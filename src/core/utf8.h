// UTF-8 validation for untrusted text (import rows, query parameters that end up in
// JSON): a byte sequence is valid when every character is a shortest-form encoding of a
// scalar value (no overlongs, no surrogates, nothing above U+10FFFF).
//
// Thread-safety: pure functions.
#ifndef QUELL_CORE_UTF8_H_
#define QUELL_CORE_UTF8_H_

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace quell::core {

//! The byte offset of the first invalid UTF-8 sequence in `s`, or nullopt.
std::optional<size_t> FindInvalidUtf8(std::string_view s);

//! `s` with each byte that starts no valid sequence replaced by U+FFFD: for echoing
//! untrusted bytes (a percent-decoded path) into text that must be UTF-8 (JSON).
std::string ReplaceInvalidUtf8(std::string_view s);

//! Whether `s` holds a control character (C0, 0x00-0x1f, DEL, or C1, U+0080-U+009F in
//! UTF-8) other than those in
//! `allowed`: the one rule for names and ids people read (detection ids and sources, key
//! sources and names), and with allowed = "\t\n\r" for free text (reasons).
bool HasControlCharacter(std::string_view s, std::string_view allowed = {});

}  // namespace quell::core

#endif  // QUELL_CORE_UTF8_H_
