// /v1/webhooks: webhook subscriptions over HTTP (admin only). The secret that signs the
// deliveries is returned once, at creation.
#include "absl/strings/str_cat.h"
#include "api/internal/webhook_routes.h"
#include "api/json_reader.h"
#include "core/action.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/time.h"
#include "webhooks/dispatcher.h"

namespace quell::api::internal {
namespace {

std::string SubscriptionJson(const webhooks::Subscription& s, bool with_secret) {
  std::string out = "{\"id\":";
  core::AppendJsonString(s.id, &out);
  out += ",\"url\":";
  core::AppendJsonString(s.url, &out);
  out += ",\"actions\":";
  core::AppendJsonStrings(s.actions, &out);
  out += ",\"entity_types\":";
  core::AppendJsonStrings(s.entity_types, &out);
  absl::StrAppend(&out, ",\"created_at\":\"", core::FormatRfc3339(s.created_at),
                  "\",\"enabled\":", s.enabled ? "true" : "false", ",\"cursor\":", s.cursor);
  if (with_secret) {
    out += ",\"secret\":";
    core::AppendJsonString(s.secret, &out);
  }
  return out;  // open: callers close the object
}

ApiError NotRunning() { return ApiError::Unavailable("webhooks are not running on this server"); }

}  // namespace

void AddWebhookRoutes(Router& router, Context& ctx, webhooks::Dispatcher* dispatcher) {
  const Access admin = Access::Bearer(auth::Permission::kAdmin);

  router.Add("POST", "/v1/webhooks", admin, [&ctx, dispatcher](Call&& call) {
    if (dispatcher == nullptr) return call.Fail(NotRunning());
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
    std::vector<FieldError> errors;
    ObjectReader r(doc, "", &errors);
    auto url = r.String("url", true, 2048);
    auto actions = r.Strings("actions", false, 100);
    auto entity_types = r.Strings("entity_types", false, 100);
    auto from_seq = r.Int("from_seq", false);
    r.RejectUnknown();
    if (from_seq && *from_seq < 0) errors.push_back({"from_seq", "must be >= 0"});
    // A filter that names no real action or type would match nothing, silently.
    if (actions) {
      const std::shared_ptr<const core::ActionCatalog> catalog = ctx.Catalog();
      for (size_t i = 0; i < actions->size(); ++i) {
        if (catalog->Find((*actions)[i]) == nullptr) {
          errors.push_back({absl::StrCat("actions[", i, "]"),
                            absl::StrCat("no action ", (*actions)[i], " in the action catalog")});
        }
      }
    }
    if (entity_types) {
      for (size_t i = 0; i < entity_types->size(); ++i) {
        if (!core::IsEntityType((*entity_types)[i])) {
          errors.push_back({absl::StrCat("entity_types[", i, "]"),
                            "an entity type matches [a-z][a-z0-9_]{0,31}"});
        }
      }
    }
    if (!errors.empty())
      return call.Fail(ApiError::InvalidArgument("invalid webhook", std::move(errors)));
    webhooks::Dispatcher::NewSubscription req;
    req.url = *url;
    req.actions = actions.value_or(std::vector<std::string>{});
    req.entity_types = entity_types.value_or(std::vector<std::string>{});
    req.from_seq = from_seq;
    ctx.OffLoop(std::move(call), [dispatcher, req = std::move(req)](Call& call) {
      auto s = dispatcher->Subscribe(req);
      if (!s.ok()) {
        if (absl::IsInvalidArgument(s.status()))
          return call.Fail(ApiError::Field("url", std::string(s.status().message())));
        if (absl::IsOutOfRange(s.status()))
          return call.Fail(ApiError::Field("from_seq", std::string(s.status().message())));
        return call.Fail(ApiError::FromStatus(s.status()));
      }
      call.Send(201, SubscriptionJson(*s, true) + "}");
    });
  });

  router.Add("GET", "/v1/webhooks", admin, [&ctx, dispatcher](Call&& call) {
    if (dispatcher == nullptr) return call.Fail(NotRunning());
    ctx.OffLoop(std::move(call), [dispatcher](Call& call) {
      auto list = dispatcher->ListCurrent();  // as the store has them (other nodes' too)
      if (!list.ok()) return call.Fail(ApiError::FromStatus(list.status()));
      std::string body = "{\"webhooks\":[";
      bool first = true;
      for (const auto& st : *list) {
        if (!first) body += ',';
        first = false;
        body += SubscriptionJson(st.subscription, false);
        absl::StrAppend(&body, ",\"delivery\":{\"pending_seq\":", st.pending_seq,
                        ",\"failures\":", st.failures, ",\"delivered\":", st.delivered,
                        ",\"dead_letters\":", st.dead_letters, ",\"last_error\":");
        core::AppendJsonString(st.last_error, &body);
        body += "}}";
      }
      body += "]}";
      call.Send(200, std::move(body));
    });
  });

  router.Add("DELETE", "/v1/webhooks/{id}", admin, [&ctx, dispatcher](Call&& call) {
    if (dispatcher == nullptr) return call.Fail(NotRunning());
    ctx.OffLoop(std::move(call), [dispatcher](Call& call) {
      const std::string& id = call.params[0];
      if (auto s = dispatcher->Unsubscribe(id); !s.ok()) return call.Fail(ApiError::FromStatus(s));
      std::string body = "{\"id\":";
      core::AppendJsonString(id, &body);
      body += ",\"deleted\":true}";
      call.Send(200, std::move(body));
    });
  });

  router.Add(
      "GET", "/v1/webhooks/{id}/dead_letters", admin,
      [&ctx, dispatcher](Call&& call) {
        if (dispatcher == nullptr) return call.Fail(NotRunning());
        int64_t after = 0, limit = 100;
        if (auto e = OnlyParams(call.req, {"after", "limit"})) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "limit", 1, 1000, &limit)) return call.Fail(*e);
        ctx.OffLoop(std::move(call), [dispatcher, after, limit](Call& call) {
          auto letters = dispatcher->DeadLetters(call.params[0], after, static_cast<int>(limit));
          if (!letters.ok()) return call.Fail(ApiError::FromStatus(letters.status()));
          std::string body = "{\"dead_letters\":[";
          for (size_t i = 0; i < letters->size(); ++i) {
            const auto& d = (*letters)[i];
            if (i) body += ',';
            absl::StrAppend(&body, "{\"seq\":", d.seq, ",\"attempts\":", d.attempts,
                            ",\"failed_at\":\"", core::FormatRfc3339(d.failed_at),
                            "\",\"last_error\":");
            core::AppendJsonString(d.last_error, &body);
            body += ",\"delivery\":";
            body += d.body;  // the JSON object that was POSTed
            body += '}';
          }
          absl::StrAppend(&body,
                          "],\"next_after\":", letters->empty() ? after : letters->back().seq, "}");
          call.Send(200, std::move(body));
        });
      },
      Router::Query::kHandler);
}

}  // namespace quell::api::internal
