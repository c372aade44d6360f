// Entities: the things Quell mitigates, written `type:id` (SPEC "Names").
//
// Thread-safety: Entity is a value type; free functions are thread-safe.
#ifndef QUELL_CORE_ENTITY_H_
#define QUELL_CORE_ENTITY_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace quell::core {

// An IPv4 or IPv6 address as 16 bytes (IPv4 stored as ::ffff:a.b.c.d) plus its family.
struct IpAddress {
  std::array<uint8_t, 16> bytes{};
  bool v4 = false;
  // Bits that make up the address: 32 for IPv4, 128 for IPv6.
  int bits() const { return v4 ? 32 : 128; }
  bool operator==(const IpAddress&) const = default;
};

// A network: the address with its host bits cleared, and the prefix length
// counted within the family (0..32 for IPv4, 0..128 for IPv6).
struct Network {
  IpAddress address;
  int prefix = 0;
  bool Contains(const IpAddress& ip) const;
  //! Whether the two share an address: of one family, the wider holds the narrower.
  bool Overlaps(const Network& other) const;
  bool operator==(const Network&) const = default;
};

// Parses a textual IPv4 or IPv6 address. Returns kInvalidArgument if it is not one.
absl::StatusOr<IpAddress> ParseIp(std::string_view text);
// Canonical text: dotted quad for IPv4, RFC 5952 for IPv6 ("2001:db8::1").
std::string FormatIp(const IpAddress& ip);
// Parses "a.b.c.d/n" or "x::/n". Host bits must be zero: "10.0.0.1/8" is rejected with a
// message naming the network that was probably meant.
absl::StatusOr<Network> ParseNetwork(std::string_view text);
std::string FormatNetwork(const Network& net);
// Clears the bits of `ip` after the first `prefix` bits of its family.
IpAddress MaskIp(const IpAddress& ip, int prefix);

// True if `t` is a valid entity type: [a-z][a-z0-9_]{0,31}.
bool IsEntityType(std::string_view t);

// A validated entity in canonical form. `ip:` and `cidr:` ids are normalised, so two
// spellings of one address compare equal.
class Entity {
 public:
  Entity() = default;

  // Parses and validates `type:id` (split at the first ':'). Errors are kInvalidArgument
  // with a message fit for an API reply ("entity type must match [a-z][a-z0-9_]{0,31}").
  static absl::StatusOr<Entity> Parse(std::string_view text);

  // "type:id", canonical.
  const std::string& str() const { return text_; }
  std::string_view type() const { return std::string_view(text_).substr(0, colon_); }
  std::string_view id() const { return std::string_view(text_).substr(colon_ + 1); }
  bool is_ip() const { return type() == "ip"; }
  bool is_cidr() const { return type() == "cidr"; }

  bool operator==(const Entity& o) const { return text_ == o.text_; }
  bool operator<(const Entity& o) const { return text_ < o.text_; }

  template <typename H>
  friend H AbslHashValue(H h, const Entity& e) {
    return H::combine(std::move(h), e.text_);
  }

 private:
  std::string text_;
  size_t colon_ = 0;
};

}  // namespace quell::core

#endif  // QUELL_CORE_ENTITY_H_
