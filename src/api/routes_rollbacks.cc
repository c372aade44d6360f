// POST /v1/rollbacks: {"filter": {"policy", "source", "action", "since", "until", "batch"},
// "dry_run": bool, "reason": "..."} -> {"id", "state", "matched", "entities", "extensions",
// "revoked", "restored", "dry_run", "needs_approval"}. The real run revokes every match (or,
// for a batch's extension of a mitigation created otherwise, undoes it) in one ledger transaction
// (workflow/rollback.h) — unless its matches span more entities than the safeguards'
// bulk_threshold: then it is a rollback request (202, state pending_approval) that a
// different admin or reviewer decides with POST /v1/reviews/{id}/decision.
// GET /v1/rollbacks (requests, newest first) and GET /v1/rollbacks/{id}.
#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "api/json_reader.h"
#include "core/ids.h"
#include "core/strings.h"
#include "core/time.h"
#include "safeguards/approval.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {
namespace {

void Rollback(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  const rapidjson::Value* filter = r.Raw("filter", true);
  auto dry_run = r.Bool("dry_run", false);
  auto reason = r.Text("reason", false, 2000);
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
    if (f.since && f.until && *f.since >= *f.until) {  // matched nothing, answered 200 "done"
      errors.push_back({"filter.until", "must be after filter.since"});
    }
    if (errors.empty() && f.empty()) {
      errors.push_back(
          {"filter", "name at least one of policy, source, action, batch, since, until"});
    }
  }
  if (!errors.empty())
    return call.Fail(ApiError::InvalidArgument("invalid rollback", std::move(errors)));
  ctx.OffLoop(std::move(call), [&ctx, f = std::move(f), dry = dry_run.value_or(false),
                                reason = reason.value_or("rollback")](Call& call) {
    auto targets = workflow::FindRollbackTargetSet(ctx.deps.ledger->store(), f,
                                                   ctx.deps.clock->Now(), ctx.pending_ttl());
    if (!targets.ok()) return call.Fail(ApiError::FromStatus(targets.status()));
    std::string id = core::NewId("rb_", ctx.deps.clock->Now());
    const int64_t matched = static_cast<int64_t>(targets->mitigations.size());
    const bool needs_approval =
        safeguards::BulkNeedsApproval(targets->entities, ctx.safeguards->options().bulk_threshold);
    if (dry) {
      return call.Send(200, absl::StrCat("{\"id\":\"", id, "\",\"state\":\"dry_run\",\"matched\":",
                                         matched, ",\"entities\":", targets->entities,
                                         ",\"extensions\":", targets->extensions,
                                         ",\"revoked\":0,\"restored\":0,\"dry_run\":true,"
                                         "\"needs_approval\":",
                                         needs_approval ? "true" : "false", "}"));
    }
    // The request, filed either way: pending approval, or done at once (so that
    // GET /v1/rollbacks/{id} answers for every rollback).
    workflow::RollbackRequest req;
    req.id = id;
    req.filter = f;
    req.reason = reason;
    req.requested_by = call.who.key_id;
    req.matched = matched;
    req.entities = targets->entities;
    req.extensions = targets->extensions;
    if (needs_approval) {
      auto stored = std::make_shared<workflow::RollbackRequest>();
      SubmitSimple(
          ctx, std::move(call), ctx.safeguards->rollbacks().Request(std::move(req), stored),
          [stored, &ctx] {
            // Runs in the transaction, after the request was appended.
            std::string body = absl::StrCat(
                "{\"id\":\"", stored->id,
                "\",\"state\":\"pending_approval\",\"matched\":", stored->matched,
                ",\"entities\":", stored->entities, ",\"extensions\":", stored->extensions,
                ",\"revoked\":0,\"restored\":0,\"dry_run\":false,\"needs_approval\":true,"
                "\"approvals_needed\":1,\"request\":",
                workflow::RollbackRequestJson(*stored, ctx.pending_ttl(), stored->requested_at),
                "}");
            return std::make_pair(202, std::move(body));
          });
      return;
    }
    auto out = std::make_shared<workflow::RollbackRequest>();
    std::vector<std::string> ids;
    for (const core::Mitigation& t : targets->mitigations) ids.push_back(t.id);
    auto m =
        ctx.NotingHumanDecisions(workflow::Rollback(std::move(req), std::move(targets->mitigations),
                                                    out, ctx.pending_ttl(), ctx.WhyHeld()),
                                 std::move(ids));
    SubmitSimple(ctx, std::move(call), std::move(m), [out] {
      return std::make_pair(
          200, absl::StrCat("{\"id\":\"", out->id, "\",\"state\":\"done\",\"matched\":",
                            out->matched, ",\"entities\":", out->entities,
                            ",\"revoked\":", out->revoked, ",\"restored\":", out->restored,
                            ",\"dry_run\":false,\"needs_approval\":false}"));
    });
  });
}

void ListRollbacks(Context& ctx, Call&& call) {
  if (auto e = OnlyParams(call.req, {"state", "limit"})) return call.Fail(*e);
  int64_t limit = 100;
  if (auto e = QueryInt(call.req, "limit", 1, ctx.options.max_page, &limit)) return call.Fail(*e);
  std::string state;
  for (const auto& [k, v] : call.req.query) {
    if (k == "state") {
      if (v != "pending_approval" && v != "done" && v != "rejected" && v != "expired") {
        return call.Fail(
            ApiError::Field("query.state", "one of pending_approval, done, rejected, expired"));
      }
      state = v;
    } else if (k != "limit") {
      return call.Fail(ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
    }
  }
  const absl::Time now = ctx.deps.clock->Now();
  const absl::Duration ttl = ctx.pending_ttl();
  std::string body = "{\"rollbacks\":[";
  int64_t n = 0;
  for (const auto& r : ctx.safeguards->rollbacks().All(static_cast<size_t>(-1))) {
    if (n == limit) break;
    if (!state.empty() && workflow::RollbackRequestState(r, ttl, now) != state) continue;
    if (n++) body += ',';
    body += workflow::RollbackRequestJson(r, ttl, now);
  }
  body += "]}";
  call.Send(200, std::move(body));
}

void GetRollback(Context& ctx, Call&& call) {
  auto r = ctx.safeguards->rollbacks().Get(call.params[0]);
  if (!r)
    return call.Fail(ApiError::NotFound(absl::StrCat("no rollback request ", call.params[0])));
  call.Send(200, workflow::RollbackRequestJson(*r, ctx.pending_ttl(), ctx.deps.clock->Now()));
}

}  // namespace

void AddRollbackRoutes(Router& router, Context& ctx) {
  router.Add("POST", "/v1/rollbacks", Access::Bearer(auth::Permission::kAdmin),
             [&ctx](Call&& call) { Rollback(ctx, std::move(call)); });
  router.Add(
      "GET", "/v1/rollbacks", Access::Bearer(auth::Permission::kRead),
      [&ctx](Call&& call) { ListRollbacks(ctx, std::move(call)); }, Router::Query::kHandler);
  router.Add("GET", "/v1/rollbacks/{id}", Access::Bearer(auth::Permission::kRead),
             [&ctx](Call&& call) { GetRollback(ctx, std::move(call)); });
}

}  // namespace quell::api::internal
