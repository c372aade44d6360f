// GET/PUT /v1/policies and POST /v1/policies/test: the active policy set as YAML,
// publishing a new version (validated whole: every error listed with line:column, and
// the active set untouched on failure), and dry evaluation of detections.
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/internal/live_environment.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "engine/engine.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/policies.h"

namespace quell::api::internal {
namespace {

// Validates a policy-set text; on failure the error lists every diagnostic as a detail
// whose field is "line:column".
absl::StatusOr<std::shared_ptr<const policy::PolicySet>> Validate(std::string_view yaml,
                                                                  ApiError* error) {
  if (yaml.size() > policy::kMaxPolicySetBytes) {
    *error = ApiError::TooLarge("policy set larger than 4 MiB");
    return absl::InvalidArgumentError("too large");
  }
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(yaml, 0);
  if (r.set) return r.set;
  std::vector<FieldError> details;
  for (const auto& d : r.errors) {
    details.push_back({absl::StrCat(d.line, ":", d.column), d.message});
  }
  // The message first: `details` is moved into the error after it.
  std::string message = absl::StrCat("policy set rejected: ", details.size(),
                                     " error(s); first: ", details.empty() ? "" : details[0].field,
                                     " ", details.empty() ? "" : details[0].message);
  *error = ApiError::InvalidArgument(std::move(message), std::move(details));
  return absl::InvalidArgumentError("invalid");
}

void GetPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  auto set = policies.Current();
  http::Response r;
  r.content_type = "application/yaml";
  r.headers.emplace_back("X-Quell-Policy-Version", std::to_string(set->version()));
  r.body = set->yaml();
  call.Reply(std::move(r));
}

// An action of `before` that `after` drops while live mitigations (active, scheduled or
// pending approval) use it: check would answer `allow` for them, an enforced suspend
// silently lifted. Names the first such action and one of its mitigations. One pass over
// the live mitigations, and none when nothing is dropped (the usual publish). A decision
// committed between this read and the publish is not seen: a pre-check, not a lock.
absl::StatusOr<std::optional<std::string>> DroppedActionInUse(ledger::Store& store,
                                                              const core::ActionCatalog& before,
                                                              const core::ActionCatalog& after) {
  absl::flat_hash_set<std::string> dropped;
  for (const core::Action& a : before.actions()) {
    if (after.Find(a.name) == nullptr) dropped.insert(a.name);
  }
  if (dropped.empty()) return std::optional<std::string>();
  std::optional<std::string> found;
  absl::StatusOr<int64_t> scanned = store.ScanLive([&](const core::Mitigation& m) {
    if (!dropped.contains(m.action)) return absl::OkStatus();
    found = absl::StrCat("the policy set drops action ", m.action, ", which live mitigations use (",
                         m.id, " is ", AV(core::StateName(m.state)),
                         "): keep it under actions (its verdict may change), or revoke them first");
    return absl::CancelledError("found");
  });
  if (!found && !scanned.ok()) return scanned.status();
  return found;
}

void PutPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  ApiError error;
  auto set = Validate(call.req.body, &error);
  if (!set.ok()) return call.Fail(error);
  // The check reads the store: off the event loop.
  ctx.OffLoop(std::move(call), [&ctx, &policies, set = *std::move(set)](Call& call) {
    auto dropped =
        DroppedActionInUse(ctx.deps.ledger->store(), *policies.Catalog(), set->catalog());
    if (!dropped.ok()) return call.Fail(ApiError::FromStatus(dropped.status()));
    if (*dropped) return call.Fail(ApiError::Conflict(**dropped));
    auto version = std::make_shared<int64_t>(0);
    size_t count = set->policies().size();
    auto shared = std::make_shared<Call>(std::move(call));
    ctx.deps.ledger->Submit(
        workflow::PublishPolicySet(shared->req.body, shared->who.key_id, version),
        [shared, version, count](absl::Status status, std::vector<ledger::Change> changes) {
          if (!status.ok()) return shared->Fail(ApiError::FromStatus(status));
          // The holder swapped to this version before this completion ran (listeners
          // come first), so the next request anywhere is decided with it.
          shared->Send(200, absl::StrCat("{\"version\":", *version, ",\"policies\":", count,
                                         ",\"seq\":", changes.empty() ? 0 : changes[0].seq, "}"));
        });
  });
}

// Dry evaluation: {"detections": [...], "policy_set": "<yaml>"?}. The set defaults to the
// active one. Escalation reads the entity's real history; nothing is written.
void TestPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto yaml = r.String("policy_set", false, policy::kMaxPolicySetBytes);
  const rapidjson::Value* list = r.Raw("detections", true);
  r.RejectUnknown();
  if (list != nullptr && (!list->IsArray() || list->Empty() || list->Size() > 1000)) {
    errors.push_back({"detections", "must be an array of 1-1000 detections"});
  }
  if (!errors.empty()) return call.Fail(ApiError::InvalidArgument("invalid test", errors));
  std::shared_ptr<const policy::PolicySet> set = policies.Current();
  if (yaml) {
    ApiError error;
    auto candidate = Validate(*yaml, &error);
    if (!candidate.ok()) return call.Fail(error);
    set = *std::move(candidate);
  }
  const absl::Time now = ctx.deps.clock->Now();
  std::vector<engine::Detection> detections;
  DetectionLimits limits;
  for (rapidjson::SizeType i = 0; i < list->Size(); ++i) {
    const std::string path = absl::StrCat("detections[", i, "]");
    auto d = ReadDetection((*list)[i], path, now, limits, &errors);
    // As a real submission under this set: an undeclared type is refused, not decided.
    if (d.ok() && !set->KnowsDetectionType(d->type)) {
      errors.push_back({absl::StrCat(path, ".type"), set->UnknownDetectionTypeError(d->type)});
      continue;
    }
    if (d.ok()) detections.push_back(*std::move(d));
  }
  if (!errors.empty()) return call.Fail(ApiError::InvalidArgument("invalid detections", errors));
  ctx.OffLoop(std::move(call), [&ctx, set, detections = std::move(detections), now](Call& call) {
    LiveEnvironment env(ctx.deps.index, &ctx.deps.ledger->store(), now);
    env.set_lists(ctx.safeguards);
    std::string body = absl::StrCat("{\"version\":", set->version(), ",\"results\":[");
    for (size_t i = 0; i < detections.size(); ++i) {
      engine::Evaluation ev = engine::Evaluate(*set, detections[i], env, now);
      if (i) body += ',';
      absl::StrAppend(&body, "{\"index\":", i, ",\"id\":");
      core::AppendJsonString(detections[i].id, &body);
      absl::StrAppend(&body, ",\"eval_errors\":", ev.eval_errors, ",\"decisions\":[");
      for (size_t k = 0; k < ev.proposals.size(); ++k) {
        const engine::Proposal& p = ev.proposals[k];
        int64_t prior = 0;
        if (!p.escalate.empty()) {
          auto n = workflow::PriorHitsCommitted(ctx.deps.ledger->store(), p, now);
          if (n.ok()) prior = *n;
        }
        // A protected entity's decision waits for review, as it would for real (breakers
        // and immunity are not simulated: they depend on the moment of the decision).
        std::optional<std::string> held;
        if (!p.shadow && ctx.safeguards != nullptr)
          held = ctx.safeguards->WhyProtected(*set, p.entity);
        std::string_view state = p.shadow                         ? "shadow"
                                 : held                           ? "pending_approval"
                                 : p.delay > absl::ZeroDuration() ? "scheduled"
                                                                  : "active";
        if (k) body += ',';
        body += "{\"entity\":";
        core::AppendJsonString(p.entity.str(), &body);
        body += ",\"action\":";
        core::AppendJsonString(engine::EscalatedAction(p, prior), &body);
        absl::StrAppend(&body, ",\"state\":\"", AV(state), "\",\"policy\":");
        core::AppendJsonString(p.policy, &body);
        absl::StrAppend(&body, ",\"ttl\":\"", core::DurationString(engine::EscalatedTtl(p, prior)),
                        "\",\"reason\":");
        core::AppendJsonString(p.reason, &body);
        if (held) {
          body += ",\"held\":";
          core::AppendJsonString(*held, &body);
        }
        body += "}";
      }
      body += "]}";
    }
    body += "]}";
    call.Send(200, std::move(body));
  });
}

}  // namespace

void AddPolicyRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  using auth::Permission;
  auto bind = [&ctx, &policies](void (*fn)(Context&, PolicyHolder&, Call &&)) {
    return [&ctx, &policies, fn](Call&& call) { fn(ctx, policies, std::move(call)); };
  };
  router.Add("GET", "/v1/policies", Access::Bearer(Permission::kRead), bind(GetPolicies));
  router.Add("PUT", "/v1/policies", Access::Bearer(Permission::kAdmin), bind(PutPolicies));
  router.Add("POST", "/v1/policies/test", Access::Bearer(Permission::kRead), bind(TestPolicies));
}

}  // namespace quell::api::internal
