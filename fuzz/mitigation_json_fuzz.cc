// Fuzzes the strict JSON request reader used by every write route: parse, read the
// fields of a manual mitigation, reject unknown ones. Never crashes; errors always
// name a field or the body.
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "api/json_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  rapidjson::Document doc;
  if (quell::api::ParseJsonBody(body, &doc)) return 0;
  std::vector<quell::api::FieldError> errors;
  quell::api::ObjectReader r(doc, "", &errors);
  (void)r.String("entity", true, 300);
  (void)r.String("action", true, 64);
  (void)r.Strings("related", false, 100);
  (void)r.Number("score", false);
  (void)r.Int("limit", false);
  (void)r.Bool("dry_run", false);
  r.RejectUnknown();
  for (const auto& e : errors) {
    if (e.field.empty() || e.message.empty()) std::abort();
  }
  return 0;
}
