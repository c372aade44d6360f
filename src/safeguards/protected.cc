#include "safeguards/protected.h"

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::safeguards {

std::shared_ptr<const ProtectedSet> ProtectedSet::Build(
    const std::vector<std::pair<std::string, std::string>>& entries) {
  std::shared_ptr<ProtectedSet> set(new ProtectedSet());
  for (const auto& [list, text] : entries) {
    set->direct_.emplace(text, list);
    auto e = core::Entity::Parse(text);
    if (!e.ok()) continue;
    if (e->is_ip()) {
      if (auto ip = core::ParseIp(e->id()); ip.ok()) set->ips_.push_back({*ip, text, list});
    } else if (e->is_cidr()) {
      if (auto net = core::ParseNetwork(e->id()); net.ok()) {
        set->nets_.push_back({*net, text, list});
        set->networks_.Insert(*net);
        set->net_index_.emplace(*net, set->nets_.size() - 1);
      }
    }
  }
  return set;
}

std::shared_ptr<const ProtectedSet> ProtectedSet::Empty() {
  static const auto* empty = new std::shared_ptr<const ProtectedSet>(new ProtectedSet());
  return *empty;
}

std::optional<std::string> ProtectedSet::Why(const core::Entity& e) const {
  if (auto it = direct_.find(AV(e.str())); it != direct_.end()) {
    return absl::StrCat(e.str(), " is on protected list ", it->second);
  }
  if (ips_.empty() && nets_.empty()) return std::nullopt;
  if (e.is_cidr()) {
    auto net = core::ParseNetwork(e.id());
    if (!net.ok()) return std::nullopt;
    for (const Ip& p : ips_) {
      if (net->Contains(p.ip)) {
        return absl::StrCat(e.str(), " covers ", p.entity, " (protected list ", p.list, ")");
      }
    }
    for (const Net& p : nets_) {
      if (net->Overlaps(p.net)) {
        return absl::StrCat(e.str(), " overlaps ", p.entity, " (protected list ", p.list, ")");
      }
    }
  } else if (e.is_ip()) {
    auto ip = core::ParseIp(e.id());
    if (!ip.ok()) return std::nullopt;
    if (auto net = networks_.Covering(*ip)) {
      const Net& p = nets_[net_index_.at(*net)];
      return absl::StrCat(e.str(), " is inside ", p.entity, " (protected list ", p.list, ")");
    }
  }
  return std::nullopt;
}

}  // namespace quell::safeguards
