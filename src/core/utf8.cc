#include "core/utf8.h"

#include <cstdint>
#include <cstring>

namespace quell::core {

bool HasControlCharacter(std::string_view s, std::string_view allowed) {
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c < 0x20 || c == 0x7f) && allowed.find(s[i]) == std::string_view::npos) return true;
    // C1 (U+0080-U+009F) is 0xc2 0x80-0x9f in UTF-8: U+009B is CSI, the escape that
    // rewrites a terminal as ESC [ does.
    if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(s[i + 1]) <= 0x9f) {
      return true;
    }
  }
  return false;
}

std::optional<size_t> FindInvalidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Fast path: 8 ASCII bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t min;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::nullopt;
}

std::string ReplaceInvalidUtf8(std::string_view s) {
  std::string out;
  while (std::optional<size_t> bad = FindInvalidUtf8(s)) {
    out.append(s.data(), *bad);
    out += "\xef\xbf\xbd";  // U+FFFD
    s.remove_prefix(*bad + 1);
  }
  out.append(s.data(), s.size());
  return out;
}

}  // namespace quell::core
