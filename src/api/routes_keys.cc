// /v1/keys: API keys over HTTP (admin only). The secret is returned once, at creation.
#include "absl/strings/str_cat.h"
#include "api/internal/context.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"

namespace quell::api::internal {
namespace {

std::string KeyJson(const ledger::ApiKey& k, std::string_view token = {}) {
  std::string out = "{\"id\":";
  core::AppendJsonString(k.id, &out);
  out += ",\"role\":";
  core::AppendJsonString(k.role, &out);
  out += ",\"sources\":[";
  for (size_t i = 0; i < k.sources.size(); ++i) {
    if (i) out += ',';
    core::AppendJsonString(k.sources[i], &out);
  }
  out += "],\"name\":";
  core::AppendJsonString(k.name, &out);
  absl::StrAppend(&out, ",\"created_at\":\"", core::FormatRfc3339(k.created_at), "\"");
  if (k.revoked_at)
    absl::StrAppend(&out, ",\"revoked_at\":\"", core::FormatRfc3339(*k.revoked_at), "\"");
  if (!token.empty()) {
    out += ",\"key\":";
    core::AppendJsonString(token, &out);
  }
  out += '}';
  return out;
}

// auth::MakeKey's refusal as the other 400s are, a field and its message: "sources[1]: a
// is given twice" was a bare message, with no details to point a form at. Its rules on
// the key as a whole ("a detector key needs at least one source") are about sources.
ApiError KeyRefused(const absl::Status& s) {
  if (!absl::IsInvalidArgument(s)) return ApiError::FromStatus(s);
  const std::string_view m = SV(s.message());
  const size_t colon = m.find(": ");
  const bool named = colon != std::string_view::npos &&
                     (m.starts_with("sources[") || m.substr(0, colon) == "name");
  return ApiError::Field(named ? std::string(m.substr(0, colon)) : "sources",
                         std::string(named ? m.substr(colon + 2) : m));
}

}  // namespace

void AddKeyRoutes(Router& router, Context& ctx) {
  const Access admin = Access::Bearer(auth::Permission::kAdmin);

  router.Add("GET", "/v1/keys", admin, [&ctx](Call&& call) {
    ctx.OffLoop(std::move(call), [&ctx](Call& call) {
      auto keys = ctx.deps.ledger->store().ListKeys();
      if (!keys.ok()) return call.Fail(ApiError::FromStatus(keys.status()));
      std::string body = "{\"keys\":[";
      for (size_t i = 0; i < keys->size(); ++i) {
        if (i) body += ',';
        body += KeyJson((*keys)[i]);
      }
      body += "]}";
      call.Send(200, std::move(body));
    });
  });

  router.Add("POST", "/v1/keys", admin, [&ctx](Call&& call) {
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
    std::vector<FieldError> errors;
    ObjectReader r(doc, "", &errors);
    auto role_text = r.String("role", true, 32);
    auto sources = r.Strings("sources", false, 100);
    auto name = r.String("name", false, 200);
    r.RejectUnknown();
    std::optional<auth::Role> role;
    if (role_text) {
      role = auth::ParseRole(*role_text);
      if (!role)
        errors.push_back({"role", "must be admin, detector, enforcer, reviewer or viewer"});
    }
    if (!errors.empty())
      return call.Fail(ApiError::InvalidArgument("invalid key", std::move(errors)));
    auto key = auth::MakeKey(*role, sources.value_or(std::vector<std::string>{}), name.value_or(""),
                             ctx.deps.clock->Now());
    if (!key.ok()) return call.Fail(KeyRefused(key.status()));
    ctx.OffLoop(std::move(call), [&ctx, key = *std::move(key)](Call& call) {
      if (auto s = ctx.deps.ledger->store().CreateKey(key.record); !s.ok()) {
        return call.Fail(ApiError::FromStatus(s));
      }
      (void)ctx.deps.keys->Refresh();  // best effort: the poller catches up anyway
      call.Send(201, KeyJson(key.record, key.token));
    });
  });

  router.Add("DELETE", "/v1/keys/{id}", admin, [&ctx](Call&& call) {
    ctx.OffLoop(std::move(call), [&ctx](Call& call) {
      const std::string& id = call.params[0];
      // The last active admin key stays: revoking it would leave nobody able to manage the
      // server through the API (the CLI, with access to the store, still can). Checked by
      // the store with the revoke: two DELETEs at once revoked both of the last two.
      if (auto s = ctx.deps.ledger->store().RevokeKey(id, ctx.deps.clock->Now(),
                                                      /*keep_last_admin=*/true);
          !s.ok()) {
        return call.Fail(absl::IsFailedPrecondition(s)
                             ? ApiError::Conflict(std::string(s.message()))
                             : ApiError::FromStatus(s));
      }
      (void)ctx.deps.keys->Refresh();
      std::string body = "{\"id\":";
      core::AppendJsonString(id, &body);
      body += ",\"revoked\":true}";
      call.Send(200, std::move(body));
    });
  });
}

}  // namespace quell::api::internal
