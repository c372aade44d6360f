// POST /v1/detections: one detection or {"detections": [...]}, or (Content-Type
// application/x-ndjson) one detection per line; `?batch=` records an import batch on every
// item. Each item is validated on its own (a bad item gets its own error and does not sink
// the batch), evaluated against the active policy set off the event loop, and the whole
// batch is applied in one ledger step (workflow::ApplyDetections): idempotent per
// (source, id), durable when answered.
// The decision path itself is api::DetectionIntake, shared with gRPC's Detections.Submit;
// this file reads the body and chooses the HTTP status codes.
#include <algorithm>
#include <optional>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/detection_intake.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/strings.h"

namespace quell::api::internal {
namespace {

// The media type of a Content-Type value, without parameters, lower-cased.
std::string MediaType(std::string_view content_type) {
  return absl::AsciiStrToLower(
      absl::StripAsciiWhitespace(AV(content_type.substr(0, content_type.find(';')))));
}

void Submit(Context& ctx, const DetectionIntake& intake, Call&& call) {
  if (auto e = OnlyParams(call.req, {"batch"})) return call.Fail(*e);
  std::optional<std::string_view> batch = call.req.QueryParam("batch");
  if (batch && !ValidBatchId(*batch)) {
    return call.Fail(ApiError::Field("query.batch", std::string(kBatchIdRule)));
  }
  if (batch && std::count_if(call.req.query.begin(), call.req.query.end(),
                             [](const auto& q) { return q.first == "batch"; }) > 1) {
    return call.Fail(ApiError::Field("query.batch", "must be given once"));
  }
  const absl::Time now = ctx.deps.clock->Now();
  DetectionIntake::Validated v;
  const std::string media = MediaType(call.req.Header("content-type"));
  if (media == "application/x-ndjson") {
    // One detection per line: what `quell import` sends, the file's lines as they are.
    std::vector<std::string_view> lines = SplitNdjsonLines(call.req.body);
    if (lines.empty()) return call.Fail(ApiError::InvalidArgument("body has no detection lines"));
    if (lines.size() > static_cast<size_t>(ctx.options.max_detections_batch)) {
      return call.Fail(TooManyItems(
          "detections", static_cast<size_t>(ctx.options.max_detections_batch), lines.size()));
    }
    v = intake.ValidateTexts(call.who, *DetectionIntake::ParseTexts(lines), now);
  } else {
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
    BodyItems items;
    if (auto e = ReadBodyItems(doc, "detections", "a detection",
                               static_cast<size_t>(ctx.options.max_detections_batch), &items)) {
      return call.Fail(*e);
    }
    std::vector<std::string> paths(items.values.size());
    for (size_t i = 0; items.batch && i < paths.size(); ++i) {
      paths[i] = absl::StrCat("detections[", i, "]");
    }
    v = intake.Validate(call.who, items.values, paths, now);
  }
  // A detector key bound to other sources is a misconfiguration, not a bad item: refuse
  // the request whole so that nothing is half-applied.
  if (!v.forbidden.empty()) {
    ApiError e = ApiError::Forbidden(v.forbidden[0].message);
    e.details = std::move(v.forbidden);
    return call.Fail(e);
  }
  if (batch) {
    for (DetectionIntake::Item& item : v.items) {
      if (item.detection) item.detection->batch = std::string(*batch);
    }
  }

  bool any_valid = false;
  for (const DetectionIntake::Item& item : v.items) any_valid |= item.detection.has_value();
  ctx.OffLoop(std::move(call),
              [&intake, items = std::move(v.items), now, any_valid](Call& call) mutable {
                auto shared = std::make_shared<Call>(std::move(call));
                const auth::Principal who = shared->who;
                intake.EvaluateAndApply(
                    std::move(items), who, now, "api",
                    [shared, any_valid](absl::StatusOr<std::vector<std::string>> replies) {
                      if (!replies.ok())
                        return shared->Fail(ApiError::FromStatus(replies.status()));
                      std::string body = "{\"results\":[";
                      for (size_t i = 0; i < replies->size(); ++i) {
                        if (i) body += ',';
                        body += (*replies)[i];
                      }
                      body += "]}";
                      // Every item rejected: a 400, still in the results shape.
                      shared->Send(any_valid ? 200 : 400, std::move(body));
                    },
                    shared->span.context());
              });
}

}  // namespace

void AddDetectionRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  // Shared by every request of the route; lives as long as the router's route table.
  auto intake = std::make_shared<DetectionIntake>(&ctx, &policies);
  router.Add(
      "POST", "/v1/detections", Access::Bearer(auth::Permission::kSubmit),
      [&ctx, intake](Call&& call) { Submit(ctx, *intake, std::move(call)); },
      Router::Query::kHandler);
}

}  // namespace quell::api::internal
