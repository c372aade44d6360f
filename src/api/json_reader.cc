#include "api/json_reader.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/json_text.h"
#include "core/strings.h"
#include "core/utf8.h"
#include "rapidjson/error/en.h"

namespace quell::api {

std::optional<ApiError> ParseJsonBody(std::string_view body, rapidjson::Document* doc) {
  if (body.empty()) return ApiError::InvalidArgument("request body is empty; JSON expected");
  // Before the parser, which recurses per level (a deep enough body overflowed the stack).
  if (std::optional<size_t> at = core::FindJsonNestingOver(body)) {
    return ApiError::InvalidArgument(
        absl::StrCat("JSON nested deeper than ", core::kMaxJsonDepth, " levels at byte ", *at + 1));
  }
  // A raw NUL is never valid JSON, and the parser would take it for the end of the text
  // (what follows it, another value or junk, would pass unseen).
  if (const size_t nul = body.find('\0'); nul != std::string_view::npos) {
    return ApiError::InvalidArgument(
        absl::StrCat("malformed JSON at byte ", nul + 1, ": a NUL byte (write it as \\u0000)"));
  }
  // kParseValidateEncodingFlag: invalid UTF-8 is a syntax error, not stored bytes.
  // Trailing content after the value is an error ("root not singular"). Byte offsets in
  // messages count from 1, as the importer's do. kParseFullPrecisionFlag: a number is the
  // double nearest its decimal text (the fast path put 0.99999999999999999 above 1, while
  // 1.000000000000000000000000001 came out 1), as strtod and other JSON libraries read it.
  doc->Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseFullPrecisionFlag>(
      body.data(), body.size());
  if (doc->HasParseError()) {
    return ApiError::InvalidArgument(
        absl::StrCat("malformed JSON at byte ", doc->GetErrorOffset() + 1, ": ",
                     rapidjson::GetParseError_En(doc->GetParseError())));
  }
  return std::nullopt;
}

ApiError TooManyItems(std::string_view noun, size_t max, size_t got) {
  return ApiError::TooLarge(
      absl::StrCat("a batch holds at most ", max, " ", AV(noun), ", got ", got));
}

std::optional<ApiError> ReadBodyItems(const rapidjson::Document& doc, std::string_view field,
                                      std::string_view item, size_t max_items, BodyItems* out) {
  if (!doc.IsObject()) {
    return ApiError::InvalidArgument(
        absl::StrCat("body must be ", AV(item), " object or {\"", AV(field), "\": [...]}"));
  }
  auto batch = doc.FindMember(rapidjson::StringRef(field.data(), field.size()));
  if (batch == doc.MemberEnd()) {
    out->values = {&doc};
    out->batch = false;
    return std::nullopt;
  }
  const std::string name(field);
  if (doc.MemberCount() != 1 || !batch->value.IsArray()) {
    return ApiError::Field(name, "must be the only field, an array");
  }
  const auto& arr = batch->value;
  if (arr.Size() > max_items) return TooManyItems(field, max_items, arr.Size());
  if (arr.Empty()) return ApiError::Field(name, "must not be empty");
  out->values.clear();
  for (const rapidjson::Value& v : arr.GetArray()) out->values.push_back(&v);
  out->batch = true;
  return std::nullopt;
}

std::vector<std::string_view> SplitNdjsonLines(std::string_view body) {
  std::vector<std::string_view> lines;
  while (!body.empty()) {
    const size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body.remove_prefix(nl == std::string_view::npos ? body.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t\r") != std::string_view::npos) lines.push_back(line);
  }
  return lines;
}

ObjectReader::ObjectReader(const rapidjson::Value& value, std::string path,
                           std::vector<FieldError>* errors)
    : value_(value), path_(std::move(path)), errors_(errors) {
  if (!value_.IsObject()) {
    errors_->push_back({path_.empty() ? "(body)" : path_, "must be a JSON object"});
  }
}

std::string ObjectReader::PathOf(std::string_view name) const {
  return path_.empty() ? std::string(name) : absl::StrCat(path_, ".", std::string(name));
}

void ObjectReader::Fail(std::string_view name, std::string message) {
  errors_->push_back({PathOf(name), std::move(message)});
}

const rapidjson::Value* ObjectReader::Find(std::string_view name, bool required, const char* what) {
  if (!value_.IsObject()) return nullptr;
  seen_.emplace_back(name);
  auto it = value_.FindMember(rapidjson::Value(rapidjson::StringRef(name.data(), name.size())));
  if (it == value_.MemberEnd() || it->value.IsNull()) {
    if (required) Fail(name, absl::StrCat("is required (", what, ")"));
    return nullptr;
  }
  return &it->value;
}

std::optional<std::string> ObjectReader::String(std::string_view name, bool required,
                                                size_t max_bytes) {
  const rapidjson::Value* v = Find(name, required, "a string");
  if (v == nullptr) return std::nullopt;
  if (!v->IsString()) {
    Fail(name, "must be a string");
    return std::nullopt;
  }
  if (v->GetStringLength() > max_bytes) {
    Fail(name, absl::StrCat("must be at most ", max_bytes, " bytes"));
    return std::nullopt;
  }
  return std::string(v->GetString(), v->GetStringLength());
}

// Read by people, in the API, the audit and `quell check`: line breaks and tabs are fine;
// a NUL cut it short in printouts, an escape sequence could rewrite a reviewer's terminal.
constexpr std::string_view kNoControlText =
    "must not hold control characters other than tab and line breaks";

std::optional<std::string> ObjectReader::Text(std::string_view name, bool required,
                                              size_t max_bytes) {
  std::optional<std::string> s = String(name, required, max_bytes);
  if (s && core::HasControlCharacter(*s, "\t\n\r")) {
    Fail(name, std::string(kNoControlText));
    return std::nullopt;
  }
  return s;
}

std::optional<double> ObjectReader::Number(std::string_view name, bool required) {
  const rapidjson::Value* v = Find(name, required, "a number");
  if (v == nullptr) return std::nullopt;
  if (!v->IsNumber() || !std::isfinite(v->GetDouble())) {
    Fail(name, "must be a number");
    return std::nullopt;
  }
  return v->GetDouble();
}

std::optional<int64_t> ObjectReader::Int(std::string_view name, bool required) {
  const rapidjson::Value* v = Find(name, required, "an integer");
  if (v == nullptr) return std::nullopt;
  if (!v->IsInt64()) {
    Fail(name, "must be an integer");
    return std::nullopt;
  }
  return v->GetInt64();
}

std::optional<bool> ObjectReader::Bool(std::string_view name, bool required) {
  const rapidjson::Value* v = Find(name, required, "true or false");
  if (v == nullptr) {
    // A null flag is refused, not read as absent: a client that writes an unset option as
    // null ("dry_run": null) got the default, and a rollback's is to revoke for real.
    if (!required && value_.IsObject()) {
      auto it = value_.FindMember(rapidjson::Value(rapidjson::StringRef(name.data(), name.size())));
      if (it != value_.MemberEnd() && it->value.IsNull()) Fail(name, "must be true or false");
    }
    return std::nullopt;
  }
  if (!v->IsBool()) {
    Fail(name, "must be true or false");
    return std::nullopt;
  }
  return v->GetBool();
}

std::optional<std::vector<std::string>> ObjectReader::Strings(std::string_view name, bool required,
                                                              size_t max_items) {
  const rapidjson::Value* v = Find(name, required, "an array of strings");
  if (v == nullptr) return std::nullopt;
  if (!v->IsArray()) {
    Fail(name, "must be an array of strings");
    return std::nullopt;
  }
  if (v->Size() > max_items) {
    Fail(name, absl::StrCat("must hold at most ", max_items, " items"));
    return std::nullopt;
  }
  std::vector<std::string> out;
  out.reserve(v->Size());
  for (rapidjson::SizeType i = 0; i < v->Size(); ++i) {
    const auto& item = (*v)[i];
    if (!item.IsString()) {
      Fail(absl::StrCat(std::string(name), "[", i, "]"), "must be a string");
      return std::nullopt;
    }
    out.emplace_back(item.GetString(), item.GetStringLength());
  }
  return out;
}

const rapidjson::Value* ObjectReader::Raw(std::string_view name, bool required) {
  return Find(name, required, "a value");
}

void ObjectReader::RejectUnknown() {
  if (!value_.IsObject()) return;
  for (auto it = value_.MemberBegin(); it != value_.MemberEnd(); ++it) {
    std::string_view key(it->name.GetString(), it->name.GetStringLength());
    if (std::find(seen_.begin(), seen_.end(), key) == seen_.end()) {
      Fail(key.empty() ? "\"\"" : key, "unknown field");  // a field named "" is named so
      continue;
    }
    // A known field given twice: this reader took the first, many clients' libraries
    // keep the last. Neither is safe to guess.
    for (auto prev = value_.MemberBegin(); prev != it; ++prev) {
      if (std::string_view(prev->name.GetString(), prev->name.GetStringLength()) == key) {
        Fail(key, "given twice");
        break;
      }
    }
  }
}

std::string RepeatedKey(const rapidjson::Value& v) {
  if (v.IsArray()) {
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
      std::string below = RepeatedKey(v[i]);
      if (!below.empty()) return absl::StrCat("[", i, "]", below.front() == '[' ? "" : ".", below);
    }
  }
  if (!v.IsObject()) return {};
  absl::flat_hash_set<std::string_view> keys;
  keys.reserve(v.MemberCount());
  for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
    std::string_view key(it->name.GetString(), it->name.GetStringLength());
    if (!keys.insert(key).second) return std::string(key.empty() ? "\"\"" : key);
    std::string below = RepeatedKey(it->value);
    if (!below.empty()) {
      return absl::StrCat(AV(key), below.front() == '[' ? "" : ".", below);
    }
  }
  return {};
}

}  // namespace quell::api
