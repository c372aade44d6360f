// The review queue (SPEC GET /v1/reviews?state=open, POST /v1/reviews/{id}/decision):
// every pending_approval mitigation, with the evidence a reviewer needs (the detections as
// submitted — related entities included —, the policy and its version, why it was held).
// Pending rollback requests (workflow/rollback.h) are reviews too: kind "rollback", id
// "rb_...", listed first on the first page; deciding one approves (runs) or rejects it.
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "safeguards/approval.h"
#include "workflow/reviews.h"
#include "workflow/rollback.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {
namespace {

constexpr size_t kMaxEvidence = 20;

void AppendReview(Context& ctx, const core::Mitigation& m, std::string* out) {
  const core::Action* action = ctx.Catalog()->Find(m.action);
  core::Severity sev = action ? action->severity : core::Severity::kCritical;
  std::vector<std::string> prior = workflow::PriorApprovers(m);
  out->append("{\"id\":");
  core::AppendJsonString(m.id, out);
  out->append(",\"kind\":\"mitigation\",\"state\":\"open\",\"entity\":");
  core::AppendJsonString(m.entity.str(), out);
  out->append(",\"action\":");
  core::AppendJsonString(m.action, out);
  absl::StrAppend(out, ",\"severity\":\"", AV(core::SeverityName(sev)),
                  "\",\"approvals_needed\":", safeguards::RequiredApprovals(sev),
                  ",\"approved_by\":[");
  for (size_t i = 0; i < prior.size(); ++i) {
    if (i) out->push_back(',');
    core::AppendJsonString(prior[i], out);
  }
  absl::StrAppend(out, "],\"requested_at\":\"", core::FormatRfc3339(m.created_at),
                  "\",\"expires_at\":\"", core::FormatRfc3339(core::OverAt(m, ctx.pending_ttl())),
                  "\",\"reason\":");
  core::AppendJsonString(m.reason, out);
  out->append(",\"evidence\":{\"policy\":");
  core::AppendJsonString(m.policy, out);
  absl::StrAppend(out, ",\"policy_version\":", m.policy_version, ",\"source\":");
  core::AppendJsonString(m.source, out);
  out->append(",\"detections\":[");
  size_t n = 0;
  for (const std::string& id : m.detections) {
    if (n == kMaxEvidence) break;
    auto d = ctx.deps.ledger->store().GetDetection(m.source, id);
    if (!d.ok() || !d->has_value()) continue;
    if (n++) out->push_back(',');
    out->append((*d)->json);
  }
  absl::StrAppend(out, "],\"detection_count\":",
                  static_cast<int64_t>(m.detections.size()) + m.unlisted_detections,
                  "},\"mitigation\":");
  core::AppendMitigationJson(m, out);
  out->append("}");
}

void AppendRollbackReview(Context& ctx, const workflow::RollbackRequest& r, std::string* out) {
  const absl::Duration ttl = ctx.pending_ttl();
  out->append("{\"id\":");
  core::AppendJsonString(r.id, out);
  out->append(
      ",\"kind\":\"rollback\",\"state\":\"open\",\"approvals_needed\":1,"
      "\"approved_by\":[],\"requested_by\":");
  core::AppendJsonString(r.requested_by, out);
  absl::StrAppend(out, ",\"requested_at\":\"", core::FormatRfc3339(r.requested_at),
                  "\",\"expires_at\":\"", core::FormatRfc3339(r.requested_at + ttl),
                  "\",\"reason\":");
  core::AppendJsonString(r.reason, out);
  absl::StrAppend(
      out, ",\"evidence\":{\"filter\":", workflow::RollbackFilterJson(r.filter),
      ",\"matched\":", r.matched, ",\"entities\":", r.entities, ",\"extensions\":", r.extensions,
      "},\"rollback\":", workflow::RollbackRequestJson(r, ttl, ctx.deps.clock->Now()), "}");
}

void ListReviews(Context& ctx, Call&& call) {
  if (auto e = OnlyParams(call.req, {"state", "limit", "cursor"})) return call.Fail(*e);
  for (const auto& [k, v] : call.req.query) {
    if (k == "state" && v != "open") {
      return call.Fail(ApiError::Field(
          "query.state", "only state=open is listed; closed reviews are in the entity timelines"));
    }
    if (k != "state" && k != "limit" && k != "cursor") {
      return call.Fail(ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
    }
  }
  int64_t limit = 100;
  if (auto e = QueryInt(call.req, "limit", 1, ctx.options.max_page, &limit)) return call.Fail(*e);
  ledger::MitigationQuery q;
  q.state = core::MitigationState::kPendingApproval;
  q.limit = static_cast<int>(limit);
  for (const auto& [k, v] : call.req.query) {
    if (k != "cursor") continue;
    if (auto e = CheckMitigationCursor(v)) return call.Fail(*e);
    q.cursor = v;
  }
  ctx.OffLoop(std::move(call), [&ctx, q](Call& call) {
    auto page = ctx.deps.ledger->store().ListMitigations(q);
    if (!page.ok()) return call.Fail(ApiError::FromStatus(page.status()));
    std::string body = "{\"reviews\":[";
    size_t n = 0;
    if (q.cursor.empty()) {
      for (const auto& r :
           ctx.safeguards->rollbacks().Pending(ctx.deps.clock->Now(), ctx.pending_ttl())) {
        if (n++) body += ',';
        AppendRollbackReview(ctx, r, &body);
      }
    }
    // Expired ones the sweeper has not marked yet are not open: they cannot be decided.
    const absl::Time now = ctx.deps.clock->Now();
    const absl::Duration ttl = ctx.pending_ttl();
    for (const core::Mitigation& m : page->mitigations) {
      if (core::OverAt(m, ttl) <= now) continue;
      if (n++) body += ',';
      AppendReview(ctx, m, &body);
    }
    body += "],\"next_cursor\":";
    core::AppendJsonString(page->next_cursor, &body);
    body += "}";
    call.Send(200, std::move(body));
  });
}

// A rollback request: checked here for clear errors, re-checked in the transaction.
void DecideRollback(Context& ctx, Call&& call, bool approve, std::string note) {
  ctx.OffLoop(std::move(call), [&ctx, approve, note = std::move(note)](Call& call) {
    const std::string id = call.params[0];
    workflow::RollbackRequests& requests = ctx.safeguards->rollbacks();
    auto r = requests.Get(id);
    if (!r) return call.Fail(ApiError::NotFound(absl::StrCat("no review ", id)));
    // Asked of a request still pending, as the transaction asks it: the requester
    // deciding a decided one got 403 "cannot approve their own request", not 409.
    if (r->state == "pending_approval") {
      if (auto st = safeguards::CheckReviewer(call.who.key_id, r->requested_by, {}); !st.ok())
        return call.Fail(ApiError::FromStatus(st));
    }
    std::vector<core::Mitigation> targets;
    if (approve && r->state == "pending_approval") {
      auto found = workflow::FindRollbackTargets(ctx.deps.ledger->store(), r->filter,
                                                 ctx.deps.clock->Now(), ctx.pending_ttl());
      if (!found.ok()) return call.Fail(ApiError::FromStatus(found.status()));
      targets = *std::move(found);
    }
    auto out = std::make_shared<workflow::RollbackRequest>();
    std::vector<std::string> ids;
    for (const core::Mitigation& t : targets) ids.push_back(t.id);
    auto mutation = ctx.NotingHumanDecisions(
        requests.Decide(id, approve, note, call.who.key_id, std::move(targets), ctx.pending_ttl(),
                        out, ctx.WhyHeld()),
        std::move(ids));
    SubmitSimple(ctx, std::move(call), std::move(mutation), [&ctx, out] {
      std::string body =
          absl::StrCat("{\"id\":\"", out->id,
                       "\",\"kind\":\"rollback\",\"state\":\"closed\","
                       "\"approvals\":",
                       out->state == "done" ? 1 : 0, ",\"approvals_needed\":1,\"rollback\":");
      body += workflow::RollbackRequestJson(*out, ctx.pending_ttl(), ctx.deps.clock->Now());
      body += "}";
      return std::make_pair(200, std::move(body));
    });
  });
}

void DecideReviewRoute(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto approve = r.Bool("approve", true);
  auto note = r.Text("note", false, 2000);
  r.RejectUnknown();
  if (!errors.empty())
    return call.Fail(ApiError::InvalidArgument("invalid review decision", std::move(errors)));
  if (absl::StartsWith(call.params[0], "rb_")) {
    return DecideRollback(ctx, std::move(call), *approve, note.value_or(""));
  }
  ctx.OffLoop(std::move(call), [&ctx, approve = *approve, note = note.value_or("")](Call& call) {
    const std::string& id = call.params[0];
    auto m = ctx.deps.ledger->store().GetMitigation(id);
    if (!m.ok()) return call.Fail(ApiError::FromStatus(m.status()));
    if (!m->has_value()) return call.Fail(ApiError::NotFound(absl::StrCat("no review ", id)));
    auto facts = workflow::LoadReviewFacts(ctx.deps.ledger->store(), **m);
    if (!facts.ok()) return call.Fail(ApiError::FromStatus(facts.status()));
    auto out = std::make_shared<workflow::ReviewOutcome>();
    auto mutation =
        ctx.NotingHumanDecisions(workflow::DecideReview(id, approve, note, call.who.key_id, *facts,
                                                        ctx.Catalog(), ctx.pending_ttl(), out),
                                 {id});
    SubmitSimple(ctx, std::move(call), std::move(mutation), [out] {
      std::string body = absl::StrCat(
          "{\"id\":\"", out->mitigation.id, "\",\"state\":\"",
          out->mitigation.state == core::MitigationState::kPendingApproval ? "open" : "closed",
          "\",\"approvals\":", out->approvals, ",\"approvals_needed\":", out->needed,
          ",\"mitigation\":");
      core::AppendMitigationJson(out->mitigation, &body);
      body += "}";
      return std::make_pair(200, std::move(body));
    });
  });
}

}  // namespace

void AddReviewRoutes(Router& router, Context& ctx) {
  using auth::Permission;
  router.Add(
      "GET", "/v1/reviews", Access::Bearer(Permission::kRead),
      [&ctx](Call&& call) { ListReviews(ctx, std::move(call)); }, Router::Query::kHandler);
  router.Add("POST", "/v1/reviews/{id}/decision", Access::Bearer(Permission::kMitigate),
             [&ctx](Call&& call) { DecideReviewRoute(ctx, std::move(call)); });
}

}  // namespace quell::api::internal
