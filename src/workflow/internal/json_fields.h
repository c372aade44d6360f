// The two helpers the workflow's hand-written JSON payloads share (appeals and rollback
// requests, both stored as ledger change payloads and read back).
//
// Thread-safety: pure functions.
#ifndef QUELL_WORKFLOW_INTERNAL_JSON_FIELDS_H_
#define QUELL_WORKFLOW_INTERNAL_JSON_FIELDS_H_

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"  // AppendJsonString
#include "core/strings.h"
#include "rapidjson/document.h"

namespace quell::workflow::internal {

//! Appends `"name":"value"` (value escaped) to the object `*out` holds so far, after a
//! comma unless it holds only its "{".
inline void Field(std::string* out, std::string_view name, std::string_view value) {
  absl::StrAppend(out, out->size() > 1 ? "," : "", "\"", AV(name), "\":");
  core::AppendJsonString(value, out);
}

//! The string member `name` of `v`; "" when absent or not a string.
inline std::string StringMember(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

}  // namespace quell::workflow::internal

#endif  // QUELL_WORKFLOW_INTERNAL_JSON_FIELDS_H_
