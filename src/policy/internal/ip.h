// IPv4/IPv6 address and network parsing for in_cidr(), allocation-free.
//
// Thread-safety: pure functions.
#ifndef QUELL_POLICY_INTERNAL_IP_H_
#define QUELL_POLICY_INTERNAL_IP_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace quell::policy::internal {

// An address as 16 bytes; IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d).
struct IpAddress {
  std::array<uint8_t, 16> bytes{};
  bool v4 = false;
};

// Parses "1.2.3.4", "2001:db8::1", and the same with an "ip:" entity prefix.
std::optional<IpAddress> ParseIp(std::string_view text);

struct IpNetwork {
  IpAddress base;
  int prefix = 0;  // in bits of the 128-bit form (IPv4 /8 is stored as 96 + 8)

  bool Contains(const IpAddress& a) const;
};

// Parses "10.0.0.0/8", "2001:db8::/32", a bare address (a /32 or /128), with an optional
// "cidr:" prefix. On failure returns nullopt and sets *error to a plain message.
std::optional<IpNetwork> ParseNetwork(std::string_view text, std::string* error);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_IP_H_
