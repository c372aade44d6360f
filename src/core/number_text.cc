#include "core/number_text.h"

#include <charconv>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace quell::core {

std::string NumberKeyText(int64_t i) { return absl::StrCat(i); }

std::string NumberKeyText(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), d);
  return std::string(buf, r.ptr);
}

}  // namespace quell::core
