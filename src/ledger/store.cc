#include "ledger/store.h"

#include <charconv>

#include "core/mitigation.h"
#include "core/time.h"

namespace quell::ledger {

void AppendDetectionJsonHead(std::string_view id, std::string_view source, std::string_view type,
                             std::string_view entity, double score, absl::Time observed_at,
                             std::string* out) {
  out->append("{\"id\":");
  core::AppendJsonString(id, out);
  out->append(",\"source\":");
  core::AppendJsonString(source, out);
  out->append(",\"type\":");
  core::AppendJsonString(type, out);
  out->append(",\"entity\":");
  core::AppendJsonString(entity, out);
  out->append(",\"score\":");
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), score);  // shortest round-trip
  out->append(buf, end);
  out->append(",\"observed_at\":\"");
  core::AppendRfc3339(observed_at, out);
  out->push_back('"');
}

}  // namespace quell::ledger
