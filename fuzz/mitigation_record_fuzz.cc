// Fuzzes the stored-mitigation reader (core::MitigationFromJson), which reads ledger
// payloads, feed items and webhook state: never crashes, and whatever it accepts writes
// back (MitigationToJson) to a record that reads back and writes the same bytes (times
// keep microseconds, so the first write may drop nanoseconds).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/mitigation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view json(reinterpret_cast<const char*>(data), size);
  auto m = quell::core::MitigationFromJson(json);
  if (!m.ok()) {
    if (m.status().message().empty()) std::abort();
    return 0;
  }
  const std::string written = quell::core::MitigationToJson(*m);
  auto again = quell::core::MitigationFromJson(written);
  if (!again.ok() || quell::core::MitigationToJson(*again) != written) std::abort();
  return 0;
}
