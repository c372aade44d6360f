// Blast-radius breakers (SPEC GET /v1/breakers, POST /v1/breakers/{name}/reset).
#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {
namespace {

std::string BreakerJson(const safeguards::BreakerStatus& b) {
  std::string out = "{\"name\":";
  core::AppendJsonString(b.spec.name, &out);
  absl::StrAppend(&out, ",\"scope\":\"", AV(safeguards::ScopeName(b.spec.scope)),
                  "\",\"scope_value\":");
  core::AppendJsonString(b.spec.scope_value, &out);
  absl::StrAppend(&out, ",\"limit\":", b.spec.limit, ",\"window\":\"",
                  AV(core::DurationString(b.spec.window)), "\"");
  if (b.spec.factor > 0) {
    absl::StrAppend(&out, ",\"relative\":{\"factor\":", b.spec.factor, ",\"baseline\":\"",
                    AV(core::DurationString(b.spec.baseline)), "\"}");
  }
  absl::StrAppend(&out, ",\"count\":", b.count, ",\"state\":\"", b.open ? "open" : "closed", "\"");
  if (b.open) {
    absl::StrAppend(&out, ",\"opened_at\":\"", core::FormatRfc3339(b.opened_at), "\"");
  }
  out += ",\"reason\":";
  core::AppendJsonString(b.reason, &out);
  out += "}";
  return out;
}

}  // namespace

void AddBreakerRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  using auth::Permission;
  router.Add("GET", "/v1/breakers", Access::Bearer(Permission::kRead),
             [&ctx, &policies](Call&& call) {
               auto list = ctx.safeguards->Breakers(*policies.Current(), ctx.deps.clock->Now());
               std::string body = "{\"breakers\":[";
               for (size_t i = 0; i < list.size(); ++i) {
                 if (i) body += ',';
                 body += BreakerJson(list[i]);
               }
               body += "]}";
               call.Send(200, std::move(body));
             });
  router.Add("POST", "/v1/breakers/{name}/reset", Access::Bearer(Permission::kAdmin),
             [&ctx, &policies](Call&& call) {
               auto out = std::make_shared<safeguards::BreakerStatus>();
               auto m = ctx.safeguards->ResetBreaker(policies.Current(), call.params[0],
                                                     call.who.key_id, out);
               SubmitSimple(ctx, std::move(call), std::move(m),
                            [out] { return std::make_pair(200, BreakerJson(*out)); });
             });
}

}  // namespace quell::api::internal
