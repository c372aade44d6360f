#include "core/entity_list.h"

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::core {

size_t NetworkHash::operator()(const Network& n) const {
  return absl::HashOf(n.address.bytes, n.address.v4, n.prefix);
}

uint32_t& NetworkSet::PrefixCount(const Network& net) {
  return net.address.v4 ? v4_prefixes_[net.prefix] : v6_prefixes_[net.prefix];
}

void NetworkSet::Insert(const Network& net) {
  if (++members_[net] > 1) return;
  ++PrefixCount(net);
}

void NetworkSet::Erase(const Network& net) {
  auto it = members_.find(net);
  if (it == members_.end()) return;
  if (--it->second > 0) return;
  members_.erase(it);
  --PrefixCount(net);
}

std::optional<Network> NetworkSet::Longest(const IpAddress& ip, int max_prefix) const {
  // One probe per prefix length in use, rather than a test per member: a list of 100,000
  // networks costs what one of each length does.
  const uint32_t* counts = ip.v4 ? v4_prefixes_.data() : v6_prefixes_.data();
  for (int p = max_prefix; p >= 0; --p) {
    if (counts[p] == 0) continue;
    Network candidate{MaskIp(ip, p), p};
    if (members_.contains(candidate)) return candidate;
  }
  return std::nullopt;
}

std::optional<Network> NetworkSet::Covering(const IpAddress& ip) const {
  if (members_.empty()) return std::nullopt;
  return Longest(ip, ip.bits());
}

std::optional<Network> NetworkSet::Covering(const Network& net) const {
  if (members_.empty()) return std::nullopt;
  return Longest(net.address, net.prefix);
}

bool EntityList::Insert(std::string_view text) {
  if (!entries_.emplace(text).second) return false;
  if (text.starts_with("cidr:")) {
    if (auto net = ParseNetwork(text.substr(5)); net.ok()) networks_.Insert(*net);
  }
  return true;
}

bool EntityList::Erase(std::string_view text) {
  auto it = entries_.find(AV(text));
  if (it == entries_.end()) return false;
  if (text.starts_with("cidr:")) {
    if (auto net = ParseNetwork(text.substr(5)); net.ok()) networks_.Erase(*net);
  }
  entries_.erase(it);  // last: `text` may be a view of the entry
  return true;
}

bool EntityList::HasEntry(std::string_view text) const { return entries_.contains(AV(text)); }

bool EntityList::Has(const Entity& e) const {
  if (entries_.contains(e.str())) return true;
  if (networks_.empty()) return false;
  if (e.is_ip()) {
    auto ip = ParseIp(e.id());
    return ip.ok() && networks_.Covering(*ip).has_value();
  }
  if (e.is_cidr()) {
    auto net = ParseNetwork(e.id());
    return net.ok() && networks_.Covering(*net).has_value();
  }
  return false;
}

std::vector<std::string> CoveringCidrEntries(const Entity& e) {
  IpAddress address;
  int longest = -1;
  if (e.is_ip()) {
    auto ip = ParseIp(e.id());
    if (!ip.ok()) return {};
    address = *ip;
    longest = ip->bits();
  } else if (e.is_cidr()) {
    auto net = ParseNetwork(e.id());
    if (!net.ok()) return {};
    address = net->address;
    longest = net->prefix - 1;
  }
  std::vector<std::string> out;
  out.reserve(longest + 1);
  for (int p = longest; p >= 0; --p) {
    out.push_back(absl::StrCat("cidr:", FormatNetwork({MaskIp(address, p), p})));
  }
  return out;
}

}  // namespace quell::core
