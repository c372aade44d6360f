// POST /v1/detections: one detection or {"detections": [...]}. Each item is validated on
// its own (a bad item gets its own error and does not sink the batch), evaluated against
// the active policy set off the event loop, and the whole batch is applied in one ledger
// step (workflow::ApplyDetections): idempotent per (source, id), durable when answered.
#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/internal/live_environment.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "engine/engine.h"
#include "obs/log.h"
#include "workflow/decisions.h"

namespace quell::api::internal {
namespace {

struct Item {
  size_t index = 0;
  std::optional<engine::Detection> detection;  // empty: rejected
  std::string rejected_reply;                  // the per-item error reply
};

std::string RejectedReply(size_t index, const std::vector<FieldError>& errors,
                          const rapidjson::Value& value) {
  ApiError e = ApiError::InvalidArgument(
      errors.empty() ? "invalid detection" : absl::StrCat(errors[0].field, ": ", errors[0].message),
      errors);
  std::string out = absl::StrCat("{\"index\":", index);
  if (value.IsObject()) {
    auto id = value.FindMember("id");
    if (id != value.MemberEnd() && id->value.IsString()) {
      out += ",\"id\":";
      core::AppendJsonString(std::string_view(id->value.GetString(), id->value.GetStringLength()),
                             &out);
    }
  }
  std::string error = ErrorJson(e);  // {"error":{...}}
  absl::StrAppend(&out, ",\"status\":\"rejected\",",
                  absl::string_view(error).substr(1, error.size() - 2), "}");
  return out;
}

void Submit(Context& ctx, PolicyHolder& policies, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  if (!doc.IsObject()) {
    return call.Fail(
        ApiError::InvalidArgument("body must be a detection object or {\"detections\": [...]}"));
  }
  const absl::Time now = ctx.deps.clock->Now();
  std::vector<const rapidjson::Value*> values;
  std::vector<std::string> paths;
  auto batch = doc.FindMember("detections");
  if (batch != doc.MemberEnd()) {
    if (doc.MemberCount() != 1 || !batch->value.IsArray()) {
      return call.Fail(ApiError::Field("detections", "must be the only field, an array"));
    }
    const auto& arr = batch->value;
    if (arr.Size() > static_cast<rapidjson::SizeType>(ctx.options.max_detections_batch)) {
      return call.Fail(ApiError::TooLarge(absl::StrCat("a batch holds at most ",
                                                       ctx.options.max_detections_batch,
                                                       " detections, got ", arr.Size())));
    }
    if (arr.Empty()) return call.Fail(ApiError::Field("detections", "must not be empty"));
    for (rapidjson::SizeType i = 0; i < arr.Size(); ++i) {
      values.push_back(&arr[i]);
      paths.push_back(absl::StrCat("detections[", i, "]"));
    }
  } else {
    values.push_back(&doc);
    paths.emplace_back("");
  }

  DetectionLimits limits;
  const std::shared_ptr<const policy::PolicySet> known = policies.Current();
  std::vector<Item> items(values.size());
  std::vector<FieldError> forbidden;
  for (size_t i = 0; i < values.size(); ++i) {
    items[i].index = i;
    std::vector<FieldError> errors;
    auto d = ReadDetection(*values[i], paths[i], now, limits, &errors);
    if (d.ok() && !known->KnowsDetectionType(d->type)) {
      std::string list;
      for (const std::string& t : known->detection_types())
        absl::StrAppend(&list, list.empty() ? "" : ", ", t);
      errors.push_back(
          {paths[i].empty() ? "type" : absl::StrCat(paths[i], ".type"),
           absl::StrCat("unknown detection type \"", d->type, "\"; the active policy set (v",
                        known->version(), ") declares: ", list)});
      d = absl::InvalidArgumentError("unknown type");
    }
    if (!d.ok()) {
      items[i].rejected_reply = RejectedReply(i, errors, *values[i]);
      continue;
    }
    if (!call.who.MaySubmitAs(d->source)) {
      forbidden.push_back({paths[i].empty() ? "source" : absl::StrCat(paths[i], ".source"),
                           absl::StrCat("this key may not submit as source \"", d->source, "\"")});
      continue;
    }
    items[i].detection = *std::move(d);
  }
  // A detector key bound to other sources is a misconfiguration, not a bad item: refuse
  // the request whole so that nothing is half-applied.
  if (!forbidden.empty()) {
    ApiError e = ApiError::Forbidden(forbidden[0].message);
    e.details = std::move(forbidden);
    return call.Fail(e);
  }

  ctx.OffLoop(
      std::move(call), [&ctx, &policies, items = std::move(items), now](Call& call) mutable {
        auto set = policies.Current();
        LiveEnvironment env(ctx.deps.index, &ctx.deps.ledger->store(), now);
        std::vector<workflow::DetectionWork> work;
        std::vector<size_t> slot_of;  // work index -> item index
        for (Item& item : items) {
          if (!item.detection) continue;
          workflow::DetectionWork w;
          engine::Evaluation ev = engine::Evaluate(*set, *item.detection, env, now);
          w.proposals = std::move(ev.proposals);
          w.json = DetectionToJson(*item.detection);
          w.detection = *std::move(item.detection);
          item.detection.reset();
          slot_of.push_back(item.index);
          work.push_back(std::move(w));
        }
        if (env.store_errors() > 0 && ctx.deps.logger != nullptr) {
          ctx.deps.logger->Warn("prior() could not read the store; counted as 0",
                                {{"errors", env.store_errors()}});
        }
        auto finish = [](Call& call, const std::vector<Item>& items,
                         const std::vector<std::string>& replies) {
          std::string body = "{\"results\":[";
          bool any_ok = false;
          for (size_t i = 0; i < items.size(); ++i) {
            if (i) body += ',';
            if (!replies[i].empty()) {
              body += replies[i];
              any_ok = true;
            } else {
              body += items[i].rejected_reply;
            }
          }
          body += "]}";
          // Every item rejected: a 400, still in the results shape.
          call.Send(any_ok ? 200 : 400, std::move(body));
        };
        const int64_t rejected = static_cast<int64_t>(items.size() - work.size());
        ctx.decision_metrics.Detections("api", "rejected", rejected);
        if (work.empty()) {
          return finish(call, items, std::vector<std::string>(items.size()));
        }
        auto out = std::make_shared<std::vector<workflow::DetectionOutcome>>();
        auto shared =
            std::make_shared<std::pair<Call, std::vector<Item>>>(std::move(call), std::move(items));
        ctx.deps.ledger->Submit(
            workflow::ApplyDetections(std::move(work), set->catalog_ptr(), shared->first.who.key_id,
                                      out, workflow::SafeguardContext{ctx.safeguards, set}),
            [&ctx, shared, out, slot_of = std::move(slot_of), finish](absl::Status status,
                                                                      std::vector<ledger::Change>) {
              Call& call = shared->first;
              if (!status.ok()) return call.Fail(ApiError::FromStatus(status));
              ctx.decision_metrics.Outcomes("api", *out);
              std::vector<std::string> replies(shared->second.size());
              for (size_t k = 0; k < out->size(); ++k) {
                std::string reply = TakeReply((*out)[k]);
                replies[slot_of[k]] = absl::StrCat("{\"index\":", slot_of[k], ",", reply.substr(1));
              }
              finish(call, shared->second, replies);
            });
      });
}

}  // namespace

void AddDetectionRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  router.Add("POST", "/v1/detections", Access::Bearer(auth::Permission::kSubmit),
             [&ctx, &policies](Call&& call) { Submit(ctx, policies, std::move(call)); });
}

}  // namespace quell::api::internal
