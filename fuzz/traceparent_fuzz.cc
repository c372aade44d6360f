// Fuzzes the W3C trace-context parsers that read untrusted request headers:
// traceparent and tracestate. Properties: never crash; a parsed traceparent formats
// back to exactly its input (the parser is strict, so there is one spelling); a
// parsed tracestate is a fixed point of parsing.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "obs/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto parent = quell::obs::ParseTraceparent(in);
  if (parent.ok()) {
    if (!parent->IsValid()) std::abort();
    if (quell::obs::FormatTraceparent(*parent) != in) std::abort();
  }
  auto state = quell::obs::ParseTracestate(in);
  if (state.ok()) {
    auto again = quell::obs::ParseTracestate(*state);
    if (!again.ok() || *again != *state) std::abort();
  }
  return 0;
}
