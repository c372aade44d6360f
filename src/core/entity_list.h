// Entity lists as SPEC reads them: a `cidr:` id "matches every `ip:` inside" it. The one
// matcher behind every reader of a list — a policy's in_list() in each of its evaluators
// (live, commit-time, backtest, import, dry run, policy cases) and the protected-list
// safeguard — so that they cannot disagree.
//
//   core::EntityList vpn;
//   vpn.Insert("cidr:10.0.0.0/8");
//   vpn.Has(*Entity::Parse("ip:10.1.2.3"));       // true: inside an entry
//   vpn.Has(*Entity::Parse("cidr:10.1.0.0/16"));  // true: inside an entry
//   vpn.Has(*Entity::Parse("cidr:0.0.0.0/0"));    // false: wider than every entry
//
// Membership: an entity is on a list that holds its text. An `ip:` is also on a list that
// holds a `cidr:` network containing the address, and a `cidr:` on one that holds the same
// or a wider network (every address of it is then on the list). Families never mix:
// 10.0.0.1 is not inside ::/0, nor ::a00:1 inside 10.0.0.0/8. A network is not on a list
// that only holds addresses or narrower networks inside it: an allow list naming one
// address does not allow its /8, nor does a deny list naming it deny the /8.
//
// Cost: a lookup is one hash probe for the text, then, for an `ip:` or `cidr:` and only if
// the list holds networks, one probe per prefix length its networks use (at most 33 for
// IPv4, 129 for IPv6), whatever the list's size.
//
// Thread-safety: value types, not synchronised: const methods may run concurrently; a
// mutation needs the owner's exclusion.
#ifndef QUELL_CORE_ENTITY_LIST_H_
#define QUELL_CORE_ENTITY_LIST_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "core/entity.h"

namespace quell::core {

// Hashes a Network, for hash maps keyed by networks.
struct NetworkHash {
  size_t operator()(const Network& n) const;
};

// A set of networks that answers "which member contains this address or network?" with
// one hash probe per prefix length in use.
class NetworkSet {
 public:
  //! Adds `net`; a network added n times leaves after n Erase calls.
  void Insert(const Network& net);
  //! Removes one count of `net`; a network not in the set is ignored.
  void Erase(const Network& net);
  //! The most specific member containing `ip` (of its family), or nullopt.
  std::optional<Network> Covering(const IpAddress& ip) const;
  //! The most specific member containing all of `net`: `net` itself or a wider network of
  //! its family; nullopt if none.
  std::optional<Network> Covering(const Network& net) const;
  bool empty() const { return members_.empty(); }

 private:
  // The longest member with a prefix of at most `max_prefix` containing `ip`.
  std::optional<Network> Longest(const IpAddress& ip, int max_prefix) const;
  uint32_t& PrefixCount(const Network& net);

  absl::flat_hash_map<Network, uint32_t, NetworkHash> members_;  // network -> times added
  std::array<uint32_t, 33> v4_prefixes_{};                       // members per IPv4 prefix length
  std::array<uint32_t, 129> v6_prefixes_{};                      // members per IPv6 prefix length
};

// One list's entries (entity texts) with SPEC's membership (see the file comment).
class EntityList {
 public:
  //! Adds entry `text`: an entity's text as lists keep it (normalised); a `cidr:` text that
  //! parses is matched as a network too, other texts only exactly. False if already there.
  bool Insert(std::string_view text);
  //! Removes entry `text`. False if it was not there.
  bool Erase(std::string_view text);
  //! Whether the list holds exactly `text` (its entries, as a person reads them).
  bool HasEntry(std::string_view text) const;
  //! Whether `e` is on the list: held, or an `ip:` / `cidr:` inside a `cidr:` entry.
  bool Has(const Entity& e) const;
  const absl::flat_hash_set<std::string>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

 private:
  absl::flat_hash_set<std::string> entries_;
  NetworkSet networks_;  // the entries that are networks
};

//! The `cidr:` entries other than `e` itself that put `e` on a list, most specific first:
//! an `ip:`'s network at every prefix length of its family (33 for IPv4, 129 for IPv6), a
//! `cidr:`'s at every shorter one; none for other types or ids that do not parse. For
//! stores that keep list entries as rows and look them up by key (Txn::ListHas).
std::vector<std::string> CoveringCidrEntries(const Entity& e);

}  // namespace quell::core

#endif  // QUELL_CORE_ENTITY_LIST_H_
