// check, mitigations (list, get, create manual, revoke) and the entity view.
#include <algorithm>
#include <set>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "api/internal/context.h"
#include "api/json_reader.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "core/utf8.h"
#include "index/index.h"
#include "safeguards/approval.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {
namespace {

using core::Entity;
using core::Mitigation;

std::string Message(const absl::Status& s) { return std::string(SV(s.message())); }

// Appends the check form of a hit: {"id","entity","action","verdict","expires_at"}.
// `a` is the hit's action in the current catalog (null if the catalog no longer has it),
// already looked up by the caller.
void AppendHit(const index::Index& index, const core::Action* a, const Entity& asked,
               const index::Hit& h, std::string* out, core::Verdict* verdict) {
  std::string_view action = index.ActionName(h.action);
  core::Verdict v = a ? a->verdict : core::Verdict::kAllow;
  *verdict = std::max(*verdict, v);
  if (out->back() != '[') out->push_back(',');
  out->append("{\"id\":\"");
  out->append(index::DecodeId(h.id));
  out->append("\",\"entity\":");
  if (h.cidr_prefix >= 0) {
    auto ip = core::ParseIp(asked.id());
    core::Network net{core::MaskIp(*ip, h.cidr_prefix), h.cidr_prefix};
    core::AppendJsonString(absl::StrCat("cidr:", core::FormatNetwork(net)), out);
  } else {
    core::AppendJsonString(asked.str(), out);
  }
  out->append(",\"action\":");
  core::AppendJsonString(action, out);
  out->append(",\"verdict\":\"");
  out->append(core::VerdictName(v));
  out->append("\",\"expires_at\":\"");
  out->append(core::FormatRfc3339(core::FromMicros(h.expires_us)));
  out->append("\"}");
}

// The "why" of one state change, for people: who or what caused it (policy and version,
// source, detections, reviewer, breaker) and the reason recorded with it.
void AppendCause(const ledger::Change& c, const Mitigation& m, std::string* out) {
  const std::string& why = m.state_reason.empty() ? m.reason : m.state_reason;
  out->append(",\"cause\":{\"state\":\"");
  out->append(core::StateName(m.state));
  out->append("\",\"by\":");
  bool automatic = !m.policy.empty() &&
                   (c.actor == "system" || why.find("held for approval") != std::string::npos ||
                    m.state_reason.empty() || m.state_reason.rfind("hit again", 0) == 0 ||
                    m.state_reason.rfind("extended", 0) == 0);
  core::AppendJsonString(c.actor == "system" ? "system" : automatic ? "policy" : "person", out);
  out->append(",\"actor\":");
  core::AppendJsonString(c.actor, out);
  out->append(",\"policy\":");
  core::AppendJsonString(m.policy, out);
  absl::StrAppend(out, ",\"policy_version\":", m.policy_version, ",\"source\":");
  core::AppendJsonString(m.source, out);
  out->append(",\"detections\":[");
  for (size_t i = 0; i < m.detections.size() && i < 20; ++i) {
    if (i) out->push_back(',');
    core::AppendJsonString(m.detections[i], out);
  }
  out->append("]");
  if (!automatic && c.actor != "system") {
    out->append(",\"reviewer\":");
    core::AppendJsonString(c.actor, out);
  }
  if (size_t b = why.find("breaker "); b != std::string::npos) {
    size_t start = b + 8, end = why.find(' ', start);
    out->append(",\"breaker\":");
    core::AppendJsonString(std::string_view(why).substr(
                               start, end == std::string::npos ? std::string::npos : end - start),
                           out);
  }
  out->append(",\"why\":");
  core::AppendJsonString(why, out);
  out->append("}");
}

void Check(Context& ctx, Call&& call) {
  std::vector<std::string> texts;
  std::string surface;
  const int max = ctx.options.max_check_entities;
  const bool get = call.req.method != "POST";
  if (get) {
    bool surface_given = false;
    for (const auto& [k, v] : call.req.query) {
      if (k == "entity") {
        texts.push_back(v);
      } else if (k == "surface") {
        // Only `entity` repeats: with two surfaces, the last one silently won.
        if (surface_given) return call.Fail(ApiError::Field("query.surface", "must be given once"));
        // The limit POST /v1/check and gRPC Check keep (it was not checked here).
        if (v.size() > core::Action::kMaxSurfaceBytes) {
          return call.Fail(ApiError::Field(
              "query.surface",
              absl::StrCat("must be at most ", core::Action::kMaxSurfaceBytes, " bytes")));
        }
        surface_given = true;
        surface = v;
      } else {
        return call.Fail(ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
      }
    }
  } else {
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
    std::vector<FieldError> errors;
    ObjectReader r(doc, "", &errors);
    auto list = r.Strings("entities", true, max);
    auto s = r.String("surface", false, core::Action::kMaxSurfaceBytes);
    r.RejectUnknown();
    if (!errors.empty()) {  // the first error in the message, as the other routes put it
      std::string summary =
          absl::StrCat("invalid check: ", errors[0].field, ": ", errors[0].message);
      return call.Fail(ApiError::InvalidArgument(std::move(summary), std::move(errors)));
    }
    texts = std::move(*list);
    surface = s.value_or("");
  }
  const std::string_view list_field = get ? "query.entity" : "entities";
  if (texts.empty()) {
    return call.Fail(ApiError::Field(std::string(list_field), "at least one entity is required"));
  }
  if (static_cast<int>(texts.size()) > max) {
    return call.Fail(ApiError::Field(std::string(list_field),
                                     absl::StrCat("at most ", max, " entities per check")));
  }
  absl::Time now = ctx.deps.clock->Now();
  int64_t seq = ctx.deps.index->seq();
  const std::shared_ptr<const core::ActionCatalog> catalog_ptr = ctx.Catalog();
  const core::ActionCatalog& catalog = *catalog_ptr;
  core::Verdict verdict = core::Verdict::kAllow;
  std::string items = "[";
  index::Hits hits;
  // A mitigation is listed once, however many of the asked entities it applies to (two
  // addresses of one covered /24 listed its mitigation twice).
  absl::InlinedVector<std::array<uint8_t, 16>, 8> listed;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto entity = Entity::Parse(texts[i]);
    if (!entity.ok()) {
      std::string field = absl::StrCat(AV(list_field), "[", i, "]");
      return call.Fail(ApiError::Field(field, Message(entity.status())));
    }
    hits.clear();
    ctx.deps.index->Lookup(*entity, now, &hits);
    for (const index::Hit& h : hits) {
      const core::Action* a = catalog.Find(ctx.deps.index->ActionName(h.action));
      if (a != nullptr && !a->AppliesTo(surface)) continue;
      if (std::find(listed.begin(), listed.end(), h.id) != listed.end()) continue;
      listed.push_back(h.id);
      AppendHit(*ctx.deps.index, a, *entity, h, &items, &verdict);
    }
  }
  call.Send(200, absl::StrCat("{\"verdict\":\"", AV(core::VerdictName(verdict)),
                              "\",\"mitigations\":", items, "],\"seq\":", seq, "}"));
}

void ListMitigations(Context& ctx, Call&& call) {
  ledger::MitigationQuery q;
  std::vector<std::string_view> seen;
  for (const auto& [k, v] : call.req.query) {
    // `state=active&state=shadow` answered for the last one: a filter is given once.
    if (std::find(seen.begin(), seen.end(), k) != seen.end()) {
      return call.Fail(ApiError::Field(absl::StrCat("query.", k), "must be given once"));
    }
    seen.push_back(k);
    if (k == "entity") {
      auto e = Entity::Parse(v);
      if (!e.ok()) return call.Fail(ApiError::Field("query.entity", Message(e.status())));
      q.entity = *std::move(e);
    } else if (k == "state") {
      q.state = core::ParseState(v);
      if (!q.state) return call.Fail(ApiError::Field("query.state", "unknown state"));
    } else if (k == "action") {
      q.action = v;
    } else if (k == "policy") {
      q.policy = v;
    } else if (k == "source") {
      q.source = v;
    } else if (k == "cursor") {
      if (auto e = CheckMitigationCursor(v)) return call.Fail(*e);
      q.cursor = v;
    } else if (k != "limit") {
      return call.Fail(ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
    }
  }
  int64_t limit = 100;
  if (auto e = QueryInt(call.req, "limit", 1, ctx.options.max_page, &limit)) return call.Fail(*e);
  q.limit = static_cast<int>(limit);
  ctx.OffLoop(std::move(call), [&ctx, q = std::move(q)](Call& call) {
    auto page = ctx.deps.ledger->store().ListMitigations(q);
    if (!page.ok()) return call.Fail(ApiError::FromStatus(page.status()));
    std::string body = "{\"mitigations\":[";
    for (size_t i = 0; i < page->mitigations.size(); ++i) {
      if (i) body += ',';
      core::AppendMitigationJson(page->mitigations[i], &body);
    }
    body += "],\"next_cursor\":";
    core::AppendJsonString(page->next_cursor, &body);
    body += '}';
    call.Send(200, std::move(body));
  });
}

void GetMitigation(Context& ctx, Call&& call) {
  ctx.OffLoop(std::move(call), [&ctx](Call& call) {
    const std::string& id = call.params[0];
    auto m = ctx.deps.ledger->store().GetMitigation(id);
    if (!m.ok()) return call.Fail(ApiError::FromStatus(m.status()));
    if (!m->has_value()) return call.Fail(ApiError::NotFound(absl::StrCat("no mitigation ", id)));
    call.Send(200, core::MitigationToJson(**m));
  });
}

void CreateMitigation(Context& ctx, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto entity_text = r.String("entity", true, 300);
  auto action = r.String("action", true, 64);
  auto ttl_text = r.String("ttl", false, 40);
  auto reason = r.Text("reason", true, 2000);
  r.RejectUnknown();
  workflow::CreateRequest cr;
  if (entity_text) {
    auto e = Entity::Parse(*entity_text);
    if (e.ok()) {
      cr.entity = *std::move(e);
    } else {
      errors.push_back({"entity", Message(e.status())});
    }
  }
  const std::shared_ptr<const core::ActionCatalog> catalog = ctx.Catalog();
  if (action && catalog->Find(*action) == nullptr) {
    std::string known;
    for (const auto& a : catalog->actions())
      absl::StrAppend(&known, known.empty() ? "" : ", ", a.name);
    errors.push_back({"action", absl::StrCat("unknown action \"", *action, "\"; known: ", known)});
  }
  if (ttl_text) {
    auto d = core::ParseDuration(*ttl_text);
    if (d.ok()) {
      cr.ttl = *d;
    } else {
      errors.push_back({"ttl", Message(d.status())});
    }
  }
  if (reason && reason->empty()) errors.push_back({"reason", "must not be empty"});
  if (!errors.empty()) {
    std::string summary =
        absl::StrCat("invalid mitigation: ", errors[0].field, ": ", errors[0].message);
    return call.Fail(ApiError::InvalidArgument(std::move(summary), std::move(errors)));
  }
  std::optional<Context::Idempotency> idem;
  if (auto e = ctx.ReadIdempotency(call, &idem)) return call.Fail(*e);
  cr.action = *action;
  cr.reason = *reason;
  // A manual action over many entities (a wide network) waits for a second person.
  if (ctx.safeguards != nullptr) {
    const int64_t covered = safeguards::EntitiesCovered(cr.entity);
    const int64_t threshold = ctx.safeguards->options().bulk_threshold;
    const core::Action* a = catalog->Find(cr.action);
    if (safeguards::BulkNeedsApproval(covered, threshold,
                                      a ? a->severity : core::Severity::kCritical)) {
      cr.state = core::MitigationState::kPendingApproval;
      cr.pending_ttl = ctx.pending_ttl();
      absl::StrAppend(&cr.reason, "; held for approval: a manual action over ", covered,
                      " entities (more than ", threshold, ")");
    }
  }
  cr.source = "manual";
  cr.actor = call.who.key_id;
  auto result = std::make_shared<workflow::CreateResult>();
  auto out = std::make_shared<Context::WriteOutcome>();
  auto inner = workflow::CreateMitigation(std::move(cr), catalog, result);
  auto render = [result] {
    return std::make_pair(result->created ? 201 : 200,
                          result->json.empty() ? core::MitigationToJson(result->mitigation)
                                               : std::move(result->json));
  };
  ctx.SubmitWrite(
      Context::WithIdempotency(std::move(idem), std::move(inner), std::move(render), out), out,
      std::move(call));
}

void Revoke(Context& ctx, Call&& call) {
  std::string reason;
  if (!call.req.body.empty()) {
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
    std::vector<FieldError> errors;
    ObjectReader r(doc, "", &errors);
    reason = r.Text("reason", false, 2000).value_or("");
    r.RejectUnknown();
    if (!errors.empty())
      return call.Fail(ApiError::InvalidArgument("invalid revoke", std::move(errors)));
  }
  if (reason.empty()) reason = "revoked";
  auto m = std::make_shared<Mitigation>();
  auto out = std::make_shared<Context::WriteOutcome>();
  auto inner =
      ctx.NotingHumanDecisions(workflow::RevokeMitigation(call.params[0], std::move(reason),
                                                          call.who.key_id, m, ctx.pending_ttl()),
                               {call.params[0]});
  auto render = [m] { return std::make_pair(200, core::MitigationToJson(*m)); };
  ctx.SubmitWrite(Context::WithIdempotency(std::nullopt, std::move(inner), std::move(render), out),
                  out, std::move(call));
}

// The answer to "why is this entity mitigated?": verdict, what applies now (including
// covering networks), every mitigation of it, and its timeline of ledger changes (a page
// of them, oldest first from ?after=SEQ; timeline_next continues when there are more).
void EntityView(Context& ctx, Call&& call) {
  auto entity = Entity::Parse(call.params[0]);
  if (!entity.ok()) return call.Fail(ApiError::Field("path.entity", Message(entity.status())));
  if (auto e = OnlyParams(call.req, {"after"})) return call.Fail(*e);
  int64_t after = 0;
  if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
  ctx.OffLoop(std::move(call), [&ctx, after, entity = *std::move(entity)](Call& call) {
    ledger::Store& store = ctx.deps.ledger->store();
    ledger::MitigationQuery q;
    q.entity = entity;
    q.limit = ctx.options.max_page;
    auto page = store.ListMitigations(q);
    if (!page.ok()) return call.Fail(ApiError::FromStatus(page.status()));
    // One more than a page: whether another follows.
    auto changes = store.ReadEntityChanges(entity, ctx.options.max_page + 1, after);
    if (!changes.ok()) return call.Fail(ApiError::FromStatus(changes.status()));
    const bool more = static_cast<int>(changes->size()) > ctx.options.max_page;
    if (more) changes->pop_back();

    index::Hits hits;
    ctx.deps.index->Lookup(entity, ctx.deps.clock->Now(), &hits);
    core::Verdict verdict = core::Verdict::kAllow;
    std::string active = "[";
    const std::shared_ptr<const core::ActionCatalog> catalog = ctx.Catalog();
    for (const index::Hit& h : hits)
      AppendHit(*ctx.deps.index, catalog->Find(ctx.deps.index->ActionName(h.action)), entity, h,
                &active, &verdict);
    std::string body = "{\"entity\":";
    core::AppendJsonString(entity.str(), &body);
    absl::StrAppend(&body, ",\"verdict\":\"", AV(core::VerdictName(verdict)),
                    "\",\"active\":", active, "],\"mitigations\":[");
    for (size_t i = 0; i < page->mitigations.size(); ++i) {
      if (i) body += ',';
      core::AppendMitigationJson(page->mitigations[i], &body);
    }
    body += "],\"timeline\":[";
    for (size_t i = 0; i < changes->size(); ++i) {
      const ledger::Change& c = (*changes)[i];
      if (i) body += ',';
      absl::StrAppend(&body, "{\"seq\":", c.seq, ",\"at\":\"", core::FormatRfc3339(c.at),
                      "\",\"kind\":\"", AV(ledger::ChangeKindName(c.kind)), "\",\"actor\":");
      core::AppendJsonString(c.actor, &body);
      absl::StrAppend(&body, ",\"",
                      c.kind == ledger::ChangeKind::kMitigation ? "mitigation" : "payload",
                      "\":", c.payload);
      if (c.kind == ledger::ChangeKind::kMitigation) {
        if (auto m = core::MitigationFromJson(c.payload); m.ok()) AppendCause(c, *m, &body);
      }
      body += "}";
    }
    body += "]";
    if (more) absl::StrAppend(&body, ",\"timeline_next\":", changes->back().seq);
    if (!page->next_cursor.empty()) {
      body += ",\"mitigations_next_cursor\":";  // GET /v1/mitigations?entity=E&cursor=...
      core::AppendJsonString(page->next_cursor, &body);
    }
    body += ",\"lists\":[";
    if (ctx.safeguards != nullptr && ctx.policies != nullptr) {
      auto set = ctx.policies->Current();
      std::set<std::string> protected_lists;
      for (const auto& l : set->lists()) {
        if (l.is_protected) protected_lists.insert(l.name);
      }
      if (auto lists = store.Lists(); lists.ok()) {
        for (const auto& l : *lists) {
          if (l.is_protected) protected_lists.insert(l.name);
        }
      }
      std::vector<std::string> names = ctx.safeguards->Memberships(entity);
      for (size_t i = 0; i < names.size(); ++i) {
        if (i) body += ',';
        body += "{\"name\":";
        core::AppendJsonString(names[i], &body);
        absl::StrAppend(&body,
                        ",\"protected\":", protected_lists.count(names[i]) ? "true" : "false", "}");
      }
      auto why = ctx.safeguards->WhyProtected(*set, entity);
      body += "],\"protected\":";
      core::AppendJsonString(why.value_or(""), &body);
      body += "}";
    } else {
      body += "]}";
    }
    call.Send(200, std::move(body));
  });
}

}  // namespace

void AddMitigationRoutes(Router& router, Context& ctx) {
  using auth::Permission;
  auto bind = [&ctx](void (*fn)(Context&, Call &&)) {
    return [&ctx, fn](Call&& call) { fn(ctx, std::move(call)); };
  };
  router.Add("GET", "/v1/check", Access::Bearer(Permission::kCheck), bind(Check),
             Router::Query::kHandler);
  router.Add("POST", "/v1/check", Access::Bearer(Permission::kCheck), bind(Check));
  router.Add("GET", "/v1/mitigations", Access::Bearer(Permission::kRead), bind(ListMitigations),
             Router::Query::kHandler);
  router.Add("POST", "/v1/mitigations", Access::Bearer(Permission::kMitigate),
             bind(CreateMitigation));
  router.Add("GET", "/v1/mitigations/{id}", Access::Bearer(Permission::kRead), bind(GetMitigation));
  router.Add("POST", "/v1/mitigations/{id}/revoke", Access::Bearer(Permission::kMitigate),
             bind(Revoke));
  router.Add("GET", "/v1/entities/{entity*}", Access::Bearer(Permission::kRead), bind(EntityView),
             Router::Query::kHandler);
}

}  // namespace quell::api::internal
