// libFuzzer target for the policy-set YAML loader: any input must load or fail with
// diagnostics, never crash (yaml-cpp throws; the loader must catch everything). Sets that
// load are evaluated against a fixed detection and event, and their case runner is run
// with the input as a case file too.
//
// Checks, beyond "no crash, no sanitizer report": a failed load has at least one
// diagnostic, each with a valid position and a message; a successful load keeps the text
// and every policy has a compiled program; evaluation is deterministic.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/engine.h"
#include "engine/policy_cases.h"
#include "policy/policy_set.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quell;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(text, 1);
  if (r.set == nullptr) {
    Check(!r.errors.empty());
    for (const auto& e : r.errors) Check(e.line >= 1 && e.column >= 1 && !e.message.empty());
    // The same bytes as a case file, against an empty set.
    static const auto* empty =
        new std::shared_ptr<const policy::PolicySet>(*policy::LoadPolicySet("policies: []\n", 1));
    engine::RunCaseText(**empty, text);
    return 0;
  }
  Check(r.errors.empty());
  Check(r.set->yaml() == text);
  for (const auto& p : r.set->policies()) Check(p.program != nullptr);

  engine::Detection d;
  d.id = "d1";
  d.source = "bot-model-v3";
  d.type = "artificial_streaming";
  d.entity = *core::Entity::Parse("user:u1");
  d.score = 0.95;
  d.observed_at = absl::FromUnixSeconds(1772366400);
  d.evidence_json = R"({"asn": 16509, "new_device": true, "tags": ["vpn"]})";
  d.related = {*core::Entity::Parse("device:d1"), *core::Entity::Parse("ip:203.0.113.5")};
  policy::EmptyEnvironment env;
  engine::Evaluation a = engine::Evaluate(*r.set, d, env, d.observed_at);
  engine::Evaluation b = engine::EvaluateWithoutIndexForTest(*r.set, d, env, d.observed_at);
  Check(a.proposals.size() == b.proposals.size());
  for (size_t i = 0; i < a.proposals.size(); ++i) {
    Check(a.proposals[i].policy == b.proposals[i].policy);
    Check(a.proposals[i].delay == b.proposals[i].delay);
  }
  engine::Event e;
  e.type = "login";
  e.entity = d.entity;
  e.at = d.observed_at;
  e.attrs_json = R"({"ip": "ip:203.0.113.7", "ms_played": 31000})";
  engine::EvaluateEvent(*r.set, e, env, e.at);
  return 0;
}
