#include "api/internal/policy_holder.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "rapidjson/document.h"

namespace quell::api::internal {

std::string EmptyPolicySetYaml(const core::ActionCatalog& catalog) {
  std::string yaml = "actions:\n";
  for (const core::Action& a : catalog.actions()) {
    absl::StrAppend(&yaml, "  - {name: ", a.name, ", verdict: ", AV(core::VerdictName(a.verdict)),
                    ", severity: ", AV(core::SeverityName(a.severity)),
                    ", ttl: ", core::DurationString(a.default_ttl));
    if (!a.surfaces.empty()) {
      yaml += ", surfaces: [";
      for (size_t i = 0; i < a.surfaces.size(); ++i) {
        absl::StrAppend(&yaml, i ? ", " : "", a.surfaces[i]);
      }
      yaml += "]";
    }
    yaml += "}\n";
  }
  yaml += "policies: []\n";
  return yaml;
}

PolicyHolder::PolicyHolder(std::shared_ptr<const core::ActionCatalog> fallback_catalog)
    : fallback_catalog_(std::move(fallback_catalog)) {}

absl::Status PolicyHolder::Load(ledger::Store& store) {
  QUELL_ASSIGN_OR_RETURN(auto latest, store.LatestPolicySet());
  if (latest.has_value()) {
    auto set = policy::LoadPolicySet(latest->yaml, latest->version);
    if (!set.ok()) {
      return absl::DataLossError(absl::StrCat("stored policy set v", latest->version,
                                              " no longer loads: ", set.status().message()));
    }
    Set(*std::move(set));
    return absl::OkStatus();
  }
  QUELL_ASSIGN_OR_RETURN(auto empty,
                         policy::LoadPolicySet(EmptyPolicySetYaml(*fallback_catalog_), 0));
  Set(std::move(empty));
  return absl::OkStatus();
}

std::shared_ptr<const policy::PolicySet> PolicyHolder::Current() const {
  return current_.load(std::memory_order_acquire);
}

std::shared_ptr<const core::ActionCatalog> PolicyHolder::Catalog() const {
  return Current()->catalog_ptr();
}

void PolicyHolder::Set(std::shared_ptr<const policy::PolicySet> set) {
  current_.store(std::move(set), std::memory_order_release);
}

void PolicyHolder::OnCommitted(const std::vector<ledger::Change>& changes) {
  for (const ledger::Change& c : changes) {
    if (c.kind != ledger::ChangeKind::kPolicySet) continue;
    rapidjson::Document doc;
    doc.Parse(c.payload.data(), c.payload.size());
    if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("version") ||
        !doc["version"].IsInt64() || !doc.HasMember("yaml") || !doc["yaml"].IsString()) {
      std::fprintf(stderr, "policy holder: malformed policy-set change at seq %lld\n",
                   static_cast<long long>(c.seq));
      continue;
    }
    auto set = policy::LoadPolicySet(
        std::string_view(doc["yaml"].GetString(), doc["yaml"].GetStringLength()),
        doc["version"].GetInt64());
    // The route validated the text before publishing, so this only fails if the binary
    // changed under a running ledger; keep the old set rather than enforce nothing.
    if (!set.ok()) {
      std::fprintf(stderr, "policy holder: v%lld does not load: %s\n",
                   static_cast<long long>(doc["version"].GetInt64()),
                   std::string(SV(set.status().message())).c_str());
      continue;
    }
    Set(*std::move(set));
  }
}

}  // namespace quell::api::internal
