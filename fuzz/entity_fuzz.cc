// Fuzzes the parsers of untrusted names and times in core: entities (with IP and CIDR
// normalisation), durations and RFC 3339 times. Properties: never crash; a parsed
// entity's canonical form parses to itself.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/entity.h"
#include "core/time.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto e = quell::core::Entity::Parse(in);
  if (e.ok()) {
    auto again = quell::core::Entity::Parse(e->str());
    if (!again.ok() || again->str() != e->str()) std::abort();  // canonical form must be stable
  }
  auto d = quell::core::ParseDuration(in);
  if (d.ok()) {
    auto back = quell::core::ParseDuration(quell::core::DurationString(*d));
    if (!back.ok() || *back != *d) std::abort();
  }
  (void)quell::core::ParseRfc3339(in);
  return 0;
}
