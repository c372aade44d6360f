#include "policy/internal/ip.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::policy::internal {

std::optional<IpAddress> ParseIp(std::string_view text) {
  if (text.substr(0, 3) == "ip:") text.remove_prefix(3);
  // inet_pton needs a NUL-terminated string; copy to the stack (no heap on the hot path).
  char buf[64];
  if (text.empty() || text.size() >= sizeof(buf)) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress a;
  if (text.find(':') == std::string_view::npos) {
    uint8_t v4[4];
    if (inet_pton(AF_INET, buf, v4) != 1) return std::nullopt;
    a.bytes[10] = 0xff;
    a.bytes[11] = 0xff;
    std::memcpy(&a.bytes[12], v4, 4);
    a.v4 = true;
    return a;
  }
  if (inet_pton(AF_INET6, buf, a.bytes.data()) != 1) return std::nullopt;
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  a.v4 = std::memcmp(a.bytes.data(), kMapped, 12) == 0;
  return a;
}

bool IpNetwork::Contains(const IpAddress& a) const {
  int full = prefix / 8;
  if (std::memcmp(a.bytes.data(), base.bytes.data(), static_cast<size_t>(full)) != 0) {
    return false;
  }
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (base.bytes[full] & mask);
}

std::optional<IpNetwork> ParseNetwork(std::string_view text, std::string* error) {
  std::string_view original = text;
  if (text.substr(0, 5) == "cidr:") text.remove_prefix(5);
  size_t slash = text.find('/');
  std::optional<IpAddress> addr = ParseIp(text.substr(0, slash));
  if (!addr.has_value() || text.substr(0, 3) == "ip:") {
    *error = absl::StrCat("invalid network \"", AV(original), "\" — expected e.g. \"10.0.0.0/8\"");
    return std::nullopt;
  }
  int max_bits = addr->v4 ? 32 : 128;
  int bits = max_bits;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3 || !absl::SimpleAtoi(AV(p), &bits) || bits < 0 ||
        bits > max_bits || p[0] == '+' || p[0] == '-') {
      *error = absl::StrCat("invalid prefix length in \"", AV(original), "\" (0-", max_bits, ")");
      return std::nullopt;
    }
  }
  IpNetwork n;
  n.base = *addr;
  n.prefix = addr->v4 ? 96 + bits : bits;
  // Reject host bits: "10.0.0.1/8" is almost always a typo for "10.0.0.0/8".
  IpNetwork masked = n;
  for (int i = 0; i < 16; ++i) {
    int keep = n.prefix - i * 8;
    uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - keep));
    masked.base.bytes[static_cast<size_t>(i)] &= mask;
  }
  if (masked.base.bytes != n.base.bytes) {
    char buf[64];
    const void* src = addr->v4 ? static_cast<const void*>(&masked.base.bytes[12])
                               : static_cast<const void*>(masked.base.bytes.data());
    inet_ntop(addr->v4 ? AF_INET : AF_INET6, src, buf, sizeof(buf));
    *error = absl::StrCat("network \"", AV(original), "\" has host bits set — did you mean \"", buf,
                          "/", bits, "\"?");
    return std::nullopt;
  }
  return n;
}

}  // namespace quell::policy::internal
