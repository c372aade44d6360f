// libFuzzer target for the HTTP server's own parsing: percent decoding, query
// strings and request-target splitting (Beast parses the rest). Besides not
// crashing, it checks invariants that a correct decoder keeps.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "api/http/http_types.h"

namespace {

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  for (bool plus_as_space : {false, true}) {
    const std::string decoded = quell::http::PercentDecode(input, plus_as_space);
    Require(decoded.size() <= input.size());  // an escape never grows
    if (input.find('%') == std::string_view::npos && !plus_as_space) Require(decoded == input);
  }

  const quell::http::QueryList query = quell::http::ParseQuery(input);
  size_t segments = 1;
  for (char c : input) segments += c == '&';
  Require(query.size() <= segments);
  for (const auto& [name, value] : query) Require(name.size() + value.size() < input.size() + 1);

  quell::http::Request request;
  request.target.assign(input);
  quell::http::SplitTarget(&request);
  Require(!request.path.empty());
  Require(request.path.size() <= input.size() || request.path == "/");
  Require(request.QueryParam("entity").has_value() == [&] {
    for (const auto& [name, value] : request.query) {
      if (name == "entity") return true;
    }
    return false;
  }());
  return 0;
}
