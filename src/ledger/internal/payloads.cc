#include "ledger/internal/payloads.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "rapidjson/document.h"

namespace quell::ledger::internal {

absl::StatusOr<ListChange> ParseListChange(std::string_view payload) {
  rapidjson::Document doc;
  doc.Parse(payload.data(), payload.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError("list change payload must be a JSON object");
  }
  ListChange lc;
  auto entities = [](const rapidjson::Value& v, std::string_view field,
                     std::vector<std::string>* out) -> absl::Status {
    if (!v.IsArray())
      return absl::InvalidArgumentError(absl::StrCat(AV(field), " must be an array"));
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
      if (!v[i].IsString()) {
        return absl::InvalidArgumentError(absl::StrCat(AV(field), "[", i, "] must be a string"));
      }
      auto e = core::Entity::Parse(std::string_view(v[i].GetString(), v[i].GetStringLength()));
      if (!e.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(AV(field), "[", i, "]: ", e.status().message()));
      }
      out->push_back(e->str());
    }
    return absl::OkStatus();
  };
  for (const auto& member : doc.GetObject()) {
    std::string_view name(member.name.GetString(), member.name.GetStringLength());
    const rapidjson::Value& v = member.value;
    if (name == "list") {
      if (!v.IsString() || v.GetStringLength() == 0) {
        return absl::InvalidArgumentError("list must be a non-empty string");
      }
      lc.list.assign(v.GetString(), v.GetStringLength());
    } else if (name == "add") {
      QUELL_RETURN_IF_ERROR(entities(v, "add", &lc.add));
    } else if (name == "remove") {
      QUELL_RETURN_IF_ERROR(entities(v, "remove", &lc.remove));
    } else if (name == "protected") {
      if (!v.IsBool()) return absl::InvalidArgumentError("protected must be a boolean");
      lc.is_protected = v.GetBool();
    } else if (name == "kind") {
      if (!v.IsString()) return absl::InvalidArgumentError("kind must be a string");
      lc.kind = std::string(v.GetString(), v.GetStringLength());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field \"", AV(name), "\" in a list change"));
    }
  }
  if (lc.list.empty()) return absl::InvalidArgumentError("list change needs \"list\"");
  return lc;
}

// A kPolicySet payload: {"version": N, "yaml": "..."}.
absl::StatusOr<PolicySetChange> ParsePolicySetChange(std::string_view payload) {
  rapidjson::Document doc;
  doc.Parse(payload.data(), payload.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError("policy set payload must be a JSON object");
  }
  PolicySetChange p;
  bool has_version = false, has_yaml = false;
  for (const auto& member : doc.GetObject()) {
    std::string_view name(member.name.GetString(), member.name.GetStringLength());
    if (name == "version" && member.value.IsInt64()) {
      p.version = member.value.GetInt64();
      has_version = true;
    } else if (name == "yaml" && member.value.IsString()) {
      p.yaml.assign(member.value.GetString(), member.value.GetStringLength());
      has_yaml = true;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("policy set payload: unexpected or mistyped field \"", AV(name), "\""));
    }
  }
  if (!has_version || !has_yaml) {
    return absl::InvalidArgumentError("policy set payload needs \"version\" and \"yaml\"");
  }
  return p;
}

std::string SourcesToJson(const std::vector<std::string>& sources) {
  std::string out = "[";
  for (size_t i = 0; i < sources.size(); ++i) {
    if (i) out.push_back(',');
    core::AppendJsonString(sources[i], &out);
  }
  out.push_back(']');
  return out;
}

absl::StatusOr<std::vector<std::string>> SourcesFromJson(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsArray()) {
    return absl::DataLossError("stored api key sources are not a JSON array");
  }
  std::vector<std::string> out;
  for (const auto& v : doc.GetArray()) {
    if (!v.IsString()) return absl::DataLossError("stored api key source is not a string");
    out.emplace_back(v.GetString(), v.GetStringLength());
  }
  return out;
}

const std::string& ExpiredUnapprovedPattern() {
  static const std::string* const pattern =
      new std::string(std::string(core::kPendingExpiredReasonPrefix) + "%");
  return *pattern;
}

}  // namespace quell::ledger::internal
