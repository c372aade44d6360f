#include "obs/internal/text.h"

#include <charconv>
#include <cmath>

namespace quell::obs::internal {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

bool InRange(unsigned char c, unsigned char lo, unsigned char hi) { return c >= lo && c <= hi; }

// Length of the well-formed sequence starting at in[i], or 0 if ill-formed
// (Unicode 15, table 3-7).
std::size_t SequenceLength(std::string_view in, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(in[i + k]); };
  const std::size_t left = in.size() - i;
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  if (InRange(c, 0xC2, 0xDF)) return left >= 2 && InRange(b(1), 0x80, 0xBF) ? 2 : 0;
  if (InRange(c, 0xE0, 0xEF)) {
    if (left < 3) return 0;
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80;  // no overlong forms
    const unsigned char hi = c == 0xED ? 0x9F : 0xBF;  // no surrogates
    return InRange(b(1), lo, hi) && InRange(b(2), 0x80, 0xBF) ? 3 : 0;
  }
  if (InRange(c, 0xF0, 0xF4)) {
    if (left < 4) return 0;
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80;  // no overlong forms
    const unsigned char hi = c == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
    return InRange(b(1), lo, hi) && InRange(b(2), 0x80, 0xBF) && InRange(b(3), 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

template <typename T>
void AppendChars(std::string& out, T v) {
  char buf[32];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, res.ptr);
}

}  // namespace

void AppendValidUtf8(std::string& out, std::string_view in) {
  std::size_t i = 0;
  while (i < in.size()) {
    // Copy the longest ASCII run at once; it is the common case.
    std::size_t j = i;
    while (j < in.size() && static_cast<unsigned char>(in[j]) < 0x80) ++j;
    out.append(in.data() + i, j - i);
    i = j;
    if (i == in.size()) break;
    const std::size_t n = SequenceLength(in, i);
    if (n == 0) {
      out.append(kReplacement);
      ++i;
    } else {
      out.append(in.data() + i, n);
      i += n;
    }
  }
}

bool IsValidUtf8(std::string_view in) {
  for (std::size_t i = 0; i < in.size();) {
    const std::size_t n = SequenceLength(in, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

void AppendEscapedLabelValue(std::string& out, std::string_view in) {
  for (char c : in) {
    switch (c) {
      case '\\':
        out.append("\\\\");
        break;
      case '"':
        out.append("\\\"");
        break;
      case '\n':
        out.append("\\n");
        break;
      default:
        out.push_back(c);
    }
  }
}

void AppendEscapedHelp(std::string& out, std::string_view in) {
  for (char c : in) {
    switch (c) {
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      default:
        out.push_back(c);
    }
  }
}

void AppendPrometheusDouble(std::string& out, double v) {
  if (std::isnan(v)) {
    out.append("NaN");
  } else if (std::isinf(v)) {
    out.append(v > 0 ? "+Inf" : "-Inf");
  } else {
    AppendChars(out, v);
  }
}

void AppendJsonString(std::string& out, std::string_view in) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t i = 0;
  while (i < in.size()) {
    // Runs of printable ASCII that need no escape (nearly everything) in one append.
    std::size_t j = i;
    while (j < in.size()) {
      const unsigned char r = static_cast<unsigned char>(in[j]);
      if (r < 0x20 || r >= 0x7F || r == '"' || r == '\\') break;
      ++j;
    }
    if (j > i) {
      out.append(in.data() + i, j - i);
      i = j;
      continue;
    }
    const unsigned char c = static_cast<unsigned char>(in[i]);
    if (c >= 0x80) {
      const std::size_t n = SequenceLength(in, i);
      if (n == 0) {
        out.append(kReplacement);
        ++i;
      } else {
        out.append(in.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      case '\b':
        out.append("\\b");
        break;
      case '\f':
        out.append("\\f");
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out.push_back('"');
}

void AppendJsonDouble(std::string& out, double v) {
  if (std::isnan(v)) {
    out.append("\"NaN\"");
  } else if (std::isinf(v)) {
    out.append(v > 0 ? "\"+Inf\"" : "\"-Inf\"");
  } else {
    AppendChars(out, v);
  }
}

void AppendUint(std::string& out, uint64_t v) { AppendChars(out, v); }
void AppendInt(std::string& out, int64_t v) { AppendChars(out, v); }

}  // namespace quell::obs::internal
