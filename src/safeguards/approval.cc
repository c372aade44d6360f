#include "safeguards/approval.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::safeguards {

int RequiredApprovals(core::Severity severity) {
  return severity == core::Severity::kCritical ? 2 : 1;
}

absl::Status CheckReviewer(std::string_view reviewer, std::span<const std::string> requesters,
                           const std::vector<std::string>& prior) {
  if (std::find(requesters.begin(), requesters.end(), reviewer) != requesters.end()) {
    return absl::PermissionDeniedError("a reviewer cannot approve their own request");
  }
  if (std::find(prior.begin(), prior.end(), reviewer) != prior.end()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "reviewer ", AV(reviewer), " already approved this; a second, distinct reviewer must"));
  }
  return absl::OkStatus();
}

int64_t EntitiesCovered(const core::Entity& e) {
  if (!e.is_cidr()) return 1;
  auto net = core::ParseNetwork(e.id());
  if (!net.ok()) return 1;
  // IPv6 counts /64 subnets (one customer network each), IPv4 counts addresses.
  int host_bits = net->address.v4 ? 32 - net->prefix : std::max(0, 64 - net->prefix);
  if (host_bits >= 62) return int64_t{1} << 62;
  return int64_t{1} << host_bits;
}

}  // namespace quell::safeguards
