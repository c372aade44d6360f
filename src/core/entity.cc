#include "core/entity.h"

#include <arpa/inet.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::core {

constexpr size_t kMaxTypeBytes = 32;

bool IsEntityType(std::string_view t) {
  if (t.empty() || t.size() > kMaxTypeBytes) return false;
  if (t[0] < 'a' || t[0] > 'z') return false;
  for (char c : t) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

namespace {

constexpr size_t kMaxIdBytes = 256;

// Validates UTF-8 and rejects control characters (C0, DEL and C1).
bool ValidId(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates, out of range, C1 controls.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f)) {
      return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

absl::StatusOr<IpAddress> ParseIp(std::string_view text) {
  char buf[64];
  // inet_pton reads a C string: a NUL inside would end it early ("203.0.113.9\0junk"
  // parsed as 203.0.113.9).
  if (text.empty() || text.size() >= sizeof(buf) || text.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("not an IP address: \"", AV(text), "\""));
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress ip;
  in_addr a4;
  if (inet_pton(AF_INET, buf, &a4) == 1) {
    ip.v4 = true;
    ip.bytes[10] = ip.bytes[11] = 0xff;
    std::memcpy(&ip.bytes[12], &a4, 4);
    return ip;
  }
  in6_addr a6;
  if (inet_pton(AF_INET6, buf, &a6) == 1) {
    std::memcpy(ip.bytes.data(), &a6, 16);
    // An IPv4-mapped IPv6 address is the IPv4 address: one host, one spelling.
    static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    ip.v4 = std::memcmp(ip.bytes.data(), kMapped, 12) == 0;
    return ip;
  }
  return absl::InvalidArgumentError(absl::StrCat("not an IP address: \"", AV(text), "\""));
}

std::string FormatIp(const IpAddress& ip) {
  char buf[INET6_ADDRSTRLEN];
  if (ip.v4) {
    inet_ntop(AF_INET, &ip.bytes[12], buf, sizeof(buf));
  } else {
    inet_ntop(AF_INET6, ip.bytes.data(), buf, sizeof(buf));
  }
  return buf;
}

IpAddress MaskIp(const IpAddress& ip, int prefix) {
  IpAddress out = ip;
  int total = ip.v4 ? prefix + 96 : prefix;
  for (int byte = 0; byte < 16; ++byte) {
    int keep = total - byte * 8;
    if (keep >= 8) continue;
    out.bytes[byte] &= keep <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - keep));
  }
  return out;
}

bool Network::Contains(const IpAddress& ip) const {
  return ip.v4 == address.v4 && MaskIp(ip, prefix) == address;
}

bool Network::Overlaps(const Network& other) const {
  return prefix <= other.prefix ? Contains(other.address) : other.Contains(address);
}

absl::StatusOr<Network> ParseNetwork(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("network \"", AV(text), "\" needs a prefix length, as in 203.0.113.0/24"));
  }
  auto ip = ParseIp(text.substr(0, slash));
  if (!ip.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("network \"", AV(text), "\": ", ip.status().message()));
  }
  std::string_view len_text = text.substr(slash + 1);
  int prefix = -1;
  bool digits = !len_text.empty() && len_text.size() <= 3;
  for (char c : len_text) digits = digits && c >= '0' && c <= '9';
  if (!digits || !absl::SimpleAtoi(AV(len_text), &prefix) || prefix < 0 || prefix > ip->bits()) {
    return absl::InvalidArgumentError(
        absl::StrCat("network \"", AV(text), "\": prefix length must be 0..", ip->bits()));
  }
  Network net{MaskIp(*ip, prefix), prefix};
  if (!(net.address == *ip)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "network \"", AV(text), "\" has host bits set; did you mean ", FormatNetwork(net), "?"));
  }
  return net;
}

std::string FormatNetwork(const Network& net) {
  return absl::StrCat(FormatIp(net.address), "/", net.prefix);
}

absl::StatusOr<Entity> Entity::Parse(std::string_view text) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("entity must be written type:id (as in user:8f3a2c), got \"",
                     AV(text.substr(0, 64)), "\""));
  }
  std::string_view type = text.substr(0, colon);
  std::string_view id = text.substr(colon + 1);
  if (!IsEntityType(type)) {
    return absl::InvalidArgumentError(absl::StrCat("entity type \"", AV(type.substr(0, 40)),
                                                   "\" must match [a-z][a-z0-9_]{0,31}"));
  }
  if (id.empty() || id.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError("entity id must be 1-256 bytes");
  }
  if (!ValidId(id)) {
    return absl::InvalidArgumentError("entity id must be UTF-8 without control characters");
  }
  Entity e;
  if (type == "ip") {
    auto ip = ParseIp(id);
    if (!ip.ok()) return ip.status();
    e.text_ = absl::StrCat("ip:", FormatIp(*ip));
  } else if (type == "cidr") {
    auto net = ParseNetwork(id);
    if (!net.ok()) return net.status();
    e.text_ = absl::StrCat("cidr:", FormatNetwork(*net));
  } else {
    e.text_ = std::string(text);
  }
  e.colon_ = colon;
  return e;
}

}  // namespace quell::core
