// Protected entities (issue 5 item 1): the members of lists flagged `protected`. An
// automatic decision against one of them — directly, through a CIDR that covers a
// protected address, through a protected network covering the address, or through
// `related` propagation from a protected subject — must not be enforced without a human.
//
//   auto set = ProtectedSet::Build({{"verified_artists", "artist:42"}, {"staff", "ip:10.0.0.7"}});
//   set->Why(Entity("cidr:10.0.0.0/24"))  // "cidr:10.0.0.0/24 covers ip:10.0.0.7 (protected list
//   staff)"
//
// Thread-safety: immutable after Build; share as std::shared_ptr<const ProtectedSet>.
#ifndef QUELL_SAFEGUARDS_PROTECTED_H_
#define QUELL_SAFEGUARDS_PROTECTED_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/entity.h"
#include "core/entity_list.h"

namespace quell::safeguards {

class ProtectedSet {
 public:
  //! `entries` are (list name, entity text) pairs of protected lists; unparsable entity
  //! texts are kept for exact matching only.
  static std::shared_ptr<const ProtectedSet> Build(
      const std::vector<std::pair<std::string, std::string>>& entries);
  static std::shared_ptr<const ProtectedSet> Empty();

  //! Why `e` is protected (for people, names the list), or nullopt if it is not.
  std::optional<std::string> Why(const core::Entity& e) const;
  size_t size() const { return direct_.size(); }

 private:
  ProtectedSet() = default;
  absl::flat_hash_map<std::string, std::string> direct_;  // entity text -> list
  struct Ip {
    core::IpAddress ip;
    std::string entity, list;
  };
  struct Net {
    core::Network net;
    std::string entity, list;
  };
  std::vector<Ip> ips_;    // protected ip: entries (a CIDR target covering one is held)
  std::vector<Net> nets_;  // protected cidr: entries (an ip or cidr inside or over one is held)
  // The same networks for an ip target (the lists' in_list() matcher), with the first entry
  // and list naming each.
  core::NetworkSet networks_;
  absl::flat_hash_map<core::Network, size_t, core::NetworkHash> net_index_;  // -> nets_[i]
};

}  // namespace quell::safeguards

#endif  // QUELL_SAFEGUARDS_PROTECTED_H_
