// Appeals (SPEC POST /v1/appeals, POST /v1/appeals/{id}/decision; GET /v1/appeals/{id}).
#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "api/json_reader.h"
#include "workflow/appeals.h"

namespace quell::api::internal {
namespace {

void File(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto mid = r.String("mitigation_id", true, 64);
  auto statement = r.Text("statement", true, 4000);
  r.RejectUnknown();
  if (statement && statement->empty()) errors.push_back({"statement", "must not be empty"});
  if (!errors.empty())
    return call.Fail(ApiError::InvalidArgument("invalid appeal", std::move(errors)));
  ctx.OffLoop(std::move(call), [&ctx, mid = *mid, statement = *statement](Call& call) {
    int64_t seq = 0;
    auto existing =
        workflow::LoadAppeal(ctx.deps.ledger->store(), workflow::AppealIdFor(mid), &seq);
    if (!existing.ok()) return call.Fail(ApiError::FromStatus(existing.status()));
    // One appeal per mitigation (its id is the mitigation's): a second one filed after the
    // decision used to overwrite it, decision and note gone from the API.
    if (existing->has_value()) {
      return call.Fail(ApiError::Conflict(
          (*existing)->state == "open"
              ? absl::StrCat("appeal ", (*existing)->id, " is already open")
              : absl::StrCat("appeal ", (*existing)->id, " was already decided (",
                             (*existing)->state, "); a mitigation has one appeal")));
    }
    auto out = std::make_shared<workflow::Appeal>();
    SubmitSimple(ctx, std::move(call),
                 workflow::FileAppeal(mid, statement, call.who.key_id, out, ctx.pending_ttl()),
                 [out] { return std::make_pair(201, workflow::AppealJson(*out)); });
  });
}

void Get(Context& ctx, Call&& call) {
  ctx.OffLoop(std::move(call), [&ctx](Call& call) {
    int64_t seq = 0;
    auto a = workflow::LoadAppeal(ctx.deps.ledger->store(), call.params[0], &seq);
    if (!a.ok()) return call.Fail(ApiError::FromStatus(a.status()));
    if (!a->has_value())
      return call.Fail(ApiError::NotFound(absl::StrCat("no appeal ", call.params[0])));
    call.Send(200, workflow::AppealJson(**a));
  });
}

void DecideAppealRoute(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto grant = r.Bool("grant", true);
  auto note = r.Text("note", false, 2000);
  r.RejectUnknown();
  if (!errors.empty())
    return call.Fail(ApiError::InvalidArgument("invalid appeal decision", std::move(errors)));
  ctx.OffLoop(std::move(call), [&ctx, grant = *grant, note = note.value_or("")](Call& call) {
    int64_t seq = 0;
    auto a = workflow::LoadAppeal(ctx.deps.ledger->store(), call.params[0], &seq);
    if (!a.ok()) return call.Fail(ApiError::FromStatus(a.status()));
    if (!a->has_value())
      return call.Fail(ApiError::NotFound(absl::StrCat("no appeal ", call.params[0])));
    auto out = std::make_shared<workflow::Appeal>();
    std::string mitigation_id = (*a)->mitigation_id;
    SubmitSimple(
        ctx, std::move(call),
        ctx.NotingHumanDecisions(workflow::DecideAppeal(**std::move(a), seq, grant, note,
                                                        call.who.key_id, out, ctx.pending_ttl()),
                                 {std::move(mitigation_id)}),
        [out] { return std::make_pair(200, workflow::AppealJson(*out)); });
  });
}

}  // namespace

void AddAppealRoutes(Router& router, Context& ctx) {
  using auth::Permission;
  router.Add("POST", "/v1/appeals", Access::Bearer(Permission::kMitigate),
             [&ctx](Call&& call) { File(ctx, std::move(call)); });
  router.Add("GET", "/v1/appeals/{id}", Access::Bearer(Permission::kRead),
             [&ctx](Call&& call) { Get(ctx, std::move(call)); });
  router.Add("POST", "/v1/appeals/{id}/decision", Access::Bearer(Permission::kMitigate),
             [&ctx](Call&& call) { DecideAppealRoute(ctx, std::move(call)); });
}

}  // namespace quell::api::internal
