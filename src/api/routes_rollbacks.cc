// POST /v1/rollbacks: {"filter": {"policy", "source", "action", "since", "until", "batch"},
// "dry_run": bool, "reason": "..."} -> {"id", "matched", "revoked", "dry_run"}. The real run
// revokes every match in one ledger transaction (workflow/rollback.h).
#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "api/json_reader.h"
#include "core/ids.h"
#include "core/strings.h"
#include "core/time.h"
#include "workflow/rollback.h"

namespace quell::api::internal {
namespace {

void Rollback(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  const rapidjson::Value* filter = r.Raw("filter", true);
  auto dry_run = r.Bool("dry_run", false);
  auto reason = r.String("reason", false, 2000);
  r.RejectUnknown();
  workflow::RollbackFilter f;
  if (filter != nullptr) {
    ObjectReader fr(*filter, "filter", &errors);
    f.policy = fr.String("policy", false, 64).value_or("");
    f.source = fr.String("source", false, 128).value_or("");
    f.action = fr.String("action", false, 64).value_or("");
    f.batch = fr.String("batch", false, 128).value_or("");
    for (const char* name : {"since", "until"}) {
      auto text = fr.String(name, false, 64);
      if (!text) continue;
      auto t = core::ParseRfc3339(*text);
      if (!t.ok()) {
        errors.push_back({absl::StrCat("filter.", name), std::string(SV(t.status().message()))});
      } else {
        (std::string_view(name) == "since" ? f.since : f.until) = *t;
      }
    }
    fr.RejectUnknown();
    if (errors.empty() && f.empty()) {
      errors.push_back(
          {"filter", "name at least one of policy, source, action, batch, since, until"});
    }
  }
  if (!errors.empty())
    return call.Fail(ApiError::InvalidArgument("invalid rollback", std::move(errors)));
  ctx.OffLoop(std::move(call), [&ctx, f = std::move(f), dry = dry_run.value_or(false),
                                reason = reason.value_or("rollback")](Call& call) {
    auto ids = workflow::FindRollbackTargets(ctx.deps.ledger->store(), f);
    if (!ids.ok()) return call.Fail(ApiError::FromStatus(ids.status()));
    std::string id = core::NewId("rb_", ctx.deps.clock->Now());
    if (dry) {
      return call.Send(200, absl::StrCat("{\"id\":\"", id, "\",\"matched\":", ids->size(),
                                         ",\"revoked\":0,\"dry_run\":true}"));
    }
    auto out = std::make_shared<workflow::RollbackResult>();
    auto m = workflow::Rollback(*std::move(ids), f, reason, call.who.key_id, id, out);
    SubmitSimple(ctx, std::move(call), std::move(m), [out, id] {
      return std::make_pair(200,
                            absl::StrCat("{\"id\":\"", id, "\",\"matched\":", out->matched,
                                         ",\"revoked\":", out->revoked, ",\"dry_run\":false}"));
    });
  });
}

}  // namespace

void AddRollbackRoutes(Router& router, Context& ctx) {
  router.Add("POST", "/v1/rollbacks", Access::Bearer(auth::Permission::kAdmin),
             [&ctx](Call&& call) { Rollback(ctx, std::move(call)); });
}

}  // namespace quell::api::internal
