#include "obs/request_id.h"

#include "obs/internal/random.h"

namespace quell::obs {

std::string NewRequestId() {
  static constexpr char kHex[] = "0123456789abcdef";
  uint64_t v = internal::RandomU64();
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<std::size_t>(i)] = kHex[v & 15];
  return out;
}

bool IsSaneRequestId(std::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdBytes) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string RequestIdFrom(std::string_view incoming) {
  return IsSaneRequestId(incoming) ? std::string(incoming) : NewRequestId();
}

}  // namespace quell::obs
