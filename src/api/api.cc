#include "api/api.h"

#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "api/errors.h"
#include "api/internal/change_waiters.h"
#include "api/internal/worker_pool.h"
#include "api/json_reader.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "ledger/store.h"
#include "workflow/mitigations.h"

namespace quell::api {
namespace {

using core::Entity;
using core::Mitigation;
using http::Request;
using http::Responder;
using http::Response;

constexpr size_t kMaxIdempotencyKey = 255;

std::string Sha256Hex(std::string_view s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '\0');
  for (int i = 0; i < 32; ++i) {
    out[2 * i] = kHex[d[i] >> 4];
    out[2 * i + 1] = kHex[d[i] & 15];
  }
  return out;
}

Response Json(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

void Send(Responder& respond, int status, std::string body) {
  std::move(respond)(Json(status, std::move(body)));
}
void Fail(Responder& respond, const ApiError& e) { std::move(respond)(ToResponse(e)); }

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Parses an optional non-negative integer query parameter.
std::optional<ApiError> QueryInt(const Request& req, std::string_view name, int64_t lo,
                                 int64_t hi, int64_t* out) {
  auto v = req.QueryParam(name);
  if (!v) return std::nullopt;
  int64_t n;
  if (!absl::SimpleAtoi(AV(*v), &n) || n < lo || n > hi) {
    return ApiError::Field(absl::StrCat("query.", AV(name)),
                           absl::StrCat("must be an integer in ", lo, "..", hi));
  }
  *out = n;
  return std::nullopt;
}

}  // namespace

class Api::Impl {
 public:
  Impl(Api* api, ApiDeps deps, ApiOptions options)
      : api_(api),
        deps_(std::move(deps)),
        options_(std::move(options)),
        pool_(options_.worker_threads),
        waiters_(deps_.ledger->last_seq()) {
    deps_.ledger->AddListener(&waiters_);
  }

  void Handle(Request req, Responder respond) {
    const std::string& path = req.path;
    if (path == "/healthz") return Send(respond, 200, "{\"status\":\"ok\"}");
    if (path == "/readyz") return Ready(respond);
    if (path == "/metrics") return Metrics(respond);
    if (!StartsWith(path, "/v1/")) return Fail(respond, ApiError::NotFound("no such route"));

    auto who = deps_.keys->Authenticate(req.Header("authorization"));
    if (!who.ok()) return Fail(respond, ApiError::Unauthenticated());
    Route(std::move(req), *std::move(who), std::move(respond));
  }

 private:
  struct Ctx {
    Request req;
    auth::Principal who;
  };

  bool Permit(const auth::Principal& who, auth::Permission p, Responder& respond) {
    if (auth::Allows(who.role, p)) return true;
    Fail(respond, ApiError::Forbidden(absl::StrCat("a ", AV(auth::RoleName(who.role)),
                                                   " key may not do this")));
    return false;
  }

  void Route(Request req, auth::Principal who, Responder respond) {
    const std::string path = req.path;
    const std::string& m = req.method;
    auto method_not_allowed = [&] {
      ApiError e{405, "method_not_allowed", absl::StrCat(m, " is not allowed on ", path)};
      Fail(respond, e);
    };
    if (path == "/v1/check") {
      if (m != "GET" && m != "POST") return method_not_allowed();
      if (!Permit(who, auth::Permission::kCheck, respond)) return;
      return Check(req, respond);
    }
    if (path == "/v1/mitigations") {
      if (m == "GET") {
        if (!Permit(who, auth::Permission::kRead, respond)) return;
        return ListMitigations(std::move(req), std::move(respond));
      }
      if (m == "POST") {
        if (!Permit(who, auth::Permission::kMitigate, respond)) return;
        return CreateMitigation(std::move(req), std::move(who), std::move(respond));
      }
      return method_not_allowed();
    }
    if (StartsWith(path, "/v1/mitigations/")) {
      std::string_view rest = std::string_view(path).substr(16);
      size_t slash = rest.find('/');
      std::string id(rest.substr(0, slash));
      if (slash != std::string_view::npos && rest.substr(slash) == "/revoke") {
        if (m != "POST") return method_not_allowed();
        if (!Permit(who, auth::Permission::kMitigate, respond)) return;
        return Revoke(std::move(req), std::move(who), std::move(id), std::move(respond));
      }
      if (slash == std::string_view::npos) {
        if (m != "GET") return method_not_allowed();
        if (!Permit(who, auth::Permission::kRead, respond)) return;
        return GetMitigation(std::move(id), std::move(respond));
      }
      return Fail(respond, ApiError::NotFound("no such route"));
    }
    if (StartsWith(path, "/v1/entities/")) {
      if (m != "GET") return method_not_allowed();
      if (!Permit(who, auth::Permission::kRead, respond)) return;
      return EntityView(path.substr(13), std::move(respond));
    }
    if (path == "/v1/changes") {
      if (m != "GET") return method_not_allowed();
      if (!Permit(who, auth::Permission::kCheck, respond)) return;
      return Changes(req, std::move(respond));
    }
    if (path == "/v1/snapshot") {
      if (m != "GET") return method_not_allowed();
      if (!Permit(who, auth::Permission::kCheck, respond)) return;
      return Snapshot(std::move(respond));
    }
    if (path == "/v1/audit") {
      if (m != "GET") return method_not_allowed();
      if (!Permit(who, auth::Permission::kRead, respond)) return;
      return Audit(req, std::move(respond));
    }
    if (path == "/v1/keys" || StartsWith(path, "/v1/keys/")) {
      if (!Permit(who, auth::Permission::kAdmin, respond)) return;
      return Keys(std::move(req), std::move(respond));
    }
    Fail(respond, ApiError::NotFound(absl::StrCat("no route ", path)));
  }

  // Runs `task` on the worker pool, or answers 503 when the pool is saturated.
  void OffLoop(Responder respond, absl::AnyInvocable<void(Responder&)> task) {
    auto shared = std::make_shared<std::pair<Responder, absl::AnyInvocable<void(Responder&)>>>(
        std::move(respond), std::move(task));
    if (!pool_.Post([shared] { shared->second(shared->first); })) {
      Fail(shared->first, ApiError::Unavailable("server busy, retry shortly"));
    }
  }

  // ---- /healthz /readyz /metrics ----

  void Ready(Responder& respond) {
    auto seq = deps_.ledger->store().LastSeq();
    if (!api_->ready_.load() || !seq.ok()) {
      ApiError e = ApiError::Unavailable(
          seq.ok() ? "shutting down" : absl::StrCat("store unreachable: ", seq.status().message()));
      return Fail(respond, e);
    }
    Send(respond, 200,
         absl::StrCat("{\"status\":\"ready\",\"seq\":", *seq, ",\"index_seq\":",
                      deps_.index->seq(), ",\"index_size\":", deps_.index->size(), "}"));
  }

  void Metrics(Responder& respond) {
    Response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = RenderMetrics();
    std::move(respond)(std::move(r));
  }

  std::string RenderMetrics();

  // ---- check ----

  void Check(const Request& req, Responder& respond) {
    std::vector<std::string> texts;
    std::string surface;
    if (req.method == "GET") {
      for (const auto& [k, v] : req.query) {
        if (k == "entity") {
          texts.push_back(v);
        } else if (k == "surface") {
          surface = v;
        } else {
          return Fail(respond, ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
        }
      }
    } else {
      rapidjson::Document doc;
      if (auto e = ParseJsonBody(req.body, &doc)) return Fail(respond, *e);
      std::vector<FieldError> errors;
      ObjectReader r(doc, "", &errors);
      auto list = r.Strings("entities", true, options_.max_check_entities);
      auto s = r.String("surface", false, 64);
      r.RejectUnknown();
      if (!errors.empty()) return Fail(respond, ApiError::InvalidArgument("invalid check", errors));
      texts = std::move(*list);
      surface = s.value_or("");
    }
    if (texts.empty()) return Fail(respond, ApiError::Field("entity", "at least one entity is required"));
    if (static_cast<int>(texts.size()) > options_.max_check_entities) {
      return Fail(respond, ApiError::Field("entity", absl::StrCat("at most ", options_.max_check_entities,
                                                                  " entities per check")));
    }
    absl::Time now = deps_.clock->Now();
    int64_t seq = deps_.index->seq();
    const core::ActionCatalog& catalog = *deps_.catalog;
    core::Verdict verdict = core::Verdict::kAllow;
    std::string items;
    index::Hits hits;
    for (size_t i = 0; i < texts.size(); ++i) {
      auto entity = Entity::Parse(texts[i]);
      if (!entity.ok()) {
        std::string field = req.method == "GET" ? "entity" : absl::StrCat("entities[", i, "]");
        return Fail(respond, ApiError::Field(field, std::string(SV(entity.status().message()))));
      }
      hits.clear();
      deps_.index->Lookup(*entity, now, &hits);
      for (const index::Hit& h : hits) {
        std::string_view action = deps_.index->ActionName(h.action);
        const core::Action* a = catalog.Find(action);
        if (a != nullptr && !a->AppliesTo(surface)) continue;
        core::Verdict v = a ? a->verdict : core::Verdict::kAllow;
        verdict = std::max(verdict, v);
        if (!items.empty()) items += ',';
        items += "{\"id\":\"";
        items += index::DecodeId(h.id);
        items += "\",\"entity\":";
        if (h.cidr_prefix >= 0) {
          core::Network net;
          auto ip = core::ParseIp(entity->id());
          net.address = core::MaskIp(*ip, h.cidr_prefix);
          net.prefix = h.cidr_prefix;
          core::AppendJsonString(absl::StrCat("cidr:", core::FormatNetwork(net)), &items);
        } else {
          core::AppendJsonString(entity->str(), &items);
        }
        items += ",\"action\":";
        core::AppendJsonString(action, &items);
        items += ",\"verdict\":\"";
        items += core::VerdictName(v);
        items += "\",\"expires_at\":\"";
        items += core::FormatRfc3339(core::FromMicros(h.expires_us));
        items += "\"}";
      }
    }
    Send(respond, 200,
         absl::StrCat("{\"verdict\":\"", AV(core::VerdictName(verdict)), "\",\"mitigations\":[",
                      items, "],\"seq\":", seq, "}"));
  }

  // ---- mitigations ----

  void ListMitigations(Request req, Responder respond) {
    ledger::MitigationQuery q;
    for (const auto& [k, v] : req.query) {
      if (k == "entity") {
        auto e = Entity::Parse(v);
        if (!e.ok()) return Fail(respond, ApiError::Field("query.entity", std::string(SV(e.status().message()))));
        q.entity = *std::move(e);
      } else if (k == "state") {
        q.state = core::ParseState(v);
        if (!q.state) {
          return Fail(respond, ApiError::Field("query.state", "unknown state"));
        }
      } else if (k == "action") {
        q.action = v;
      } else if (k == "policy") {
        q.policy = v;
      } else if (k == "source") {
        q.source = v;
      } else if (k == "cursor") {
        q.cursor = v;
      } else if (k != "limit") {
        return Fail(respond, ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
      }
    }
    int64_t limit = 100;
    if (auto e = QueryInt(req, "limit", 1, options_.max_page, &limit)) return Fail(respond, *e);
    q.limit = static_cast<int>(limit);
    OffLoop(std::move(respond), [this, q = std::move(q)](Responder& respond) {
      auto page = deps_.ledger->store().ListMitigations(q);
      if (!page.ok()) return Fail(respond, ApiError::FromStatus(page.status()));
      std::string body = "{\"mitigations\":[";
      for (size_t i = 0; i < page->mitigations.size(); ++i) {
        if (i) body += ',';
        core::AppendMitigationJson(page->mitigations[i], &body);
      }
      body += "],\"next_cursor\":";
      core::AppendJsonString(page->next_cursor, &body);
      body += '}';
      Send(respond, 200, std::move(body));
    });
  }

  void GetMitigation(std::string id, Responder respond) {
    OffLoop(std::move(respond), [this, id = std::move(id)](Responder& respond) {
      auto m = deps_.ledger->store().GetMitigation(id);
      if (!m.ok()) return Fail(respond, ApiError::FromStatus(m.status()));
      if (!m->has_value()) return Fail(respond, ApiError::NotFound(absl::StrCat("no mitigation ", id)));
      Send(respond, 200, core::MitigationToJson(**m));
    });
  }

  struct Idempotency {
    std::string scope, key, request_hash;
  };
  struct WriteOutcome {
    bool mismatch = false;
    bool replayed = false;
    int status = 0;
    std::string body;
  };

  // Reads the Idempotency-Key header. Returns an error for an unusable key.
  std::optional<ApiError> ReadIdempotency(const Request& req, const auth::Principal& who,
                                          std::optional<Idempotency>* out) {
    std::string_view key = req.Header("idempotency-key");
    if (key.empty()) return std::nullopt;
    if (key.size() > kMaxIdempotencyKey) {
      return ApiError::Field("header.Idempotency-Key", "must be at most 255 bytes");
    }
    *out = Idempotency{absl::StrCat(who.key_id, " ", req.method, " ", req.path), std::string(key),
                       Sha256Hex(req.body)};
    return std::nullopt;
  }

  // Wraps a mutation with the Idempotency-Key protocol: a replay returns the stored reply
  // and writes nothing; the same key with another body is refused (422). The record is
  // written in the same transaction as the mutation, so it exists iff the write does.
  static ledger::Mutation WithIdempotency(std::optional<Idempotency> idem, ledger::Mutation inner,
                                          absl::AnyInvocable<std::pair<int, std::string>()> render,
                                          std::shared_ptr<WriteOutcome> out) {
    return [idem = std::move(idem), inner = std::move(inner), render = std::move(render),
            out = std::move(out)](ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
      if (idem) {
        QUELL_ASSIGN_OR_RETURN(auto rec, txn.GetIdempotency(idem->scope, idem->key));
        if (rec) {
          if (rec->request_hash != idem->request_hash) {
            out->mismatch = true;
          } else {
            out->replayed = true;
            out->status = rec->status;
            out->body = std::move(rec->response);
          }
          return absl::OkStatus();
        }
      }
      QUELL_RETURN_IF_ERROR(inner(txn, now));
      std::tie(out->status, out->body) = render();
      if (idem) {
        ledger::IdempotencyRecord rec{idem->scope, idem->key,  idem->request_hash,
                                      out->status, out->body, now};
        QUELL_RETURN_IF_ERROR(txn.PutIdempotency(rec));
      }
      return absl::OkStatus();
    };
  }

  void SubmitWrite(ledger::Mutation mutation, std::shared_ptr<WriteOutcome> out,
                   Responder respond) {
    auto shared = std::make_shared<Responder>(std::move(respond));
    deps_.ledger->Submit(std::move(mutation),
                         [out, shared](absl::Status status, std::vector<ledger::Change>) {
                           if (!status.ok()) return Fail(*shared, ApiError::FromStatus(status));
                           if (out->mismatch) return Fail(*shared, ApiError::IdempotencyMismatch());
                           Response r = Json(out->status, std::move(out->body));
                           if (out->replayed) r.headers.emplace_back("Idempotent-Replayed", "true");
                           std::move(*shared)(std::move(r));
                         });
  }

  void CreateMitigation(Request req, auth::Principal who, Responder respond) {
    rapidjson::Document doc;
    if (auto e = ParseJsonBody(req.body, &doc)) return Fail(respond, *e);
    std::vector<FieldError> errors;
    ObjectReader r(doc, "", &errors);
    auto entity_text = r.String("entity", true, 300);
    auto action = r.String("action", true, 64);
    auto ttl_text = r.String("ttl", false, 40);
    auto reason = r.String("reason", true, 2000);
    r.RejectUnknown();
    workflow::CreateRequest cr;
    if (entity_text) {
      auto e = Entity::Parse(*entity_text);
      if (e.ok()) {
        cr.entity = *std::move(e);
      } else {
        errors.push_back({"entity", std::string(SV(e.status().message()))});
      }
    }
    if (action && deps_.catalog->Find(*action) == nullptr) {
      std::string known;
      for (const auto& a : deps_.catalog->actions()) absl::StrAppend(&known, known.empty() ? "" : ", ", a.name);
      errors.push_back({"action", absl::StrCat("unknown action \"", *action, "\"; known: ", known)});
    }
    if (ttl_text) {
      auto d = core::ParseDuration(*ttl_text);
      if (d.ok()) {
        cr.ttl = *d;
      } else {
        errors.push_back({"ttl", std::string(SV(d.status().message()))});
      }
    }
    if (reason && reason->empty()) errors.push_back({"reason", "must not be empty"});
    if (!errors.empty()) {
      std::string summary = absl::StrCat("invalid mitigation: ", errors[0].field, ": ", errors[0].message);
      return Fail(respond, ApiError::InvalidArgument(std::move(summary), std::move(errors)));
    }
    std::optional<Idempotency> idem;
    if (auto e = ReadIdempotency(req, who, &idem)) return Fail(respond, *e);
    cr.action = *action;
    cr.reason = *reason;
    cr.source = "manual";
    cr.actor = who.key_id;
    auto result = std::make_shared<workflow::CreateResult>();
    auto out = std::make_shared<WriteOutcome>();
    auto inner = workflow::CreateMitigation(std::move(cr), deps_.catalog, result);
    auto render = [result] {
      return std::make_pair(result->created ? 201 : 200, core::MitigationToJson(result->mitigation));
    };
    SubmitWrite(WithIdempotency(std::move(idem), std::move(inner), std::move(render), out), out,
                std::move(respond));
  }

  void Revoke(Request req, auth::Principal who, std::string id, Responder respond) {
    std::string reason;
    if (!req.body.empty()) {
      rapidjson::Document doc;
      if (auto e = ParseJsonBody(req.body, &doc)) return Fail(respond, *e);
      std::vector<FieldError> errors;
      ObjectReader r(doc, "", &errors);
      reason = r.String("reason", false, 2000).value_or("");
      r.RejectUnknown();
      if (!errors.empty()) return Fail(respond, ApiError::InvalidArgument("invalid revoke", errors));
    }
    if (reason.empty()) reason = "revoked";
    auto m = std::make_shared<Mitigation>();
    auto out = std::make_shared<WriteOutcome>();
    auto inner = workflow::RevokeMitigation(std::move(id), std::move(reason), who.key_id, m);
    auto render = [m] { return std::make_pair(200, core::MitigationToJson(*m)); };
    SubmitWrite(WithIdempotency(std::nullopt, std::move(inner), std::move(render), out), out,
                std::move(respond));
  }

  // ---- entities ----

  void EntityView(std::string text, Responder respond) {
    auto entity = Entity::Parse(text);
    if (!entity.ok()) {
      return Fail(respond, ApiError::Field("path.entity", std::string(SV(entity.status().message()))));
    }
    OffLoop(std::move(respond), [this, entity = *std::move(entity)](Responder& respond) {
      ledger::Store& store = deps_.ledger->store();
      ledger::MitigationQuery q;
      q.entity = entity;
      q.limit = options_.max_page;
      auto page = store.ListMitigations(q);
      if (!page.ok()) return Fail(respond, ApiError::FromStatus(page.status()));
      auto changes = store.ReadEntityChanges(entity, options_.max_page);
      if (!changes.ok()) return Fail(respond, ApiError::FromStatus(changes.status()));

      index::Hits hits;
      deps_.index->Lookup(entity, deps_.clock->Now(), &hits);
      core::Verdict verdict = core::Verdict::kAllow;
      std::string active;
      for (const index::Hit& h : hits) {
        std::string_view action = deps_.index->ActionName(h.action);
        const core::Action* a = deps_.catalog->Find(action);
        if (a) verdict = std::max(verdict, a->verdict);
        if (!active.empty()) active += ',';
        absl::StrAppend(&active, "{\"id\":\"", index::DecodeId(h.id), "\",\"action\":\"", AV(action),
                        "\",\"via_cidr_prefix\":", h.cidr_prefix, "}");
      }
      std::string body = "{\"entity\":";
      core::AppendJsonString(entity.str(), &body);
      absl::StrAppend(&body, ",\"verdict\":\"", AV(core::VerdictName(verdict)), "\",\"active\":[", active,
                      "],\"mitigations\":[");
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
        absl::StrAppend(&body, ",\"", c.kind == ledger::ChangeKind::kMitigation ? "mitigation" : "payload",
                        "\":", c.payload, "}");
      }
      body += "],\"lists\":[]}";
      Send(respond, 200, std::move(body));
    });
  }

  // ---- change feed, snapshot, audit ----

  void Changes(const Request& req, Responder respond) {
    int64_t after = 0, limit = 1000, wait = 0;
    for (const auto& [k, v] : req.query) {
      if (k != "after" && k != "limit" && k != "wait") {
        return Fail(respond, ApiError::Field(absl::StrCat("query.", k), "unknown parameter"));
      }
    }
    if (auto e = QueryInt(req, "after", 0, INT64_MAX, &after)) return Fail(respond, *e);
    if (auto e = QueryInt(req, "limit", 1, 10000, &limit)) return Fail(respond, *e);
    if (auto e = QueryInt(req, "wait", 0, absl::ToInt64Seconds(options_.max_wait), &wait)) {
      return Fail(respond, *e);
    }
    absl::Time deadline = absl::Now() + absl::Seconds(wait);
    ServeChanges(after, static_cast<int>(limit), deadline, std::move(respond));
  }

  void ServeChanges(int64_t after, int limit, absl::Time deadline, Responder respond) {
    OffLoop(std::move(respond), [this, after, limit, deadline](Responder& respond) {
      auto changes = deps_.ledger->store().ReadChanges(after, limit);
      if (!changes.ok()) return Fail(respond, ApiError::FromStatus(changes.status()));
      if (changes->empty() && absl::Now() < deadline) {
        auto shared = std::make_shared<Responder>(std::move(respond));
        waiters_.Wait(after, deadline, [this, after, limit, deadline, shared] {
          // A commit or the deadline: read again. After the deadline the reply goes out even
          // if empty.
          ServeChanges(after, limit, std::min(deadline, absl::Now()), std::move(*shared));
        });
        return;
      }
      std::string body = "{\"changes\":[";
      int64_t next = after;
      bool first = true;
      for (const ledger::Change& c : *changes) {
        next = c.seq;
        if (c.kind != ledger::ChangeKind::kMitigation) continue;
        // The feed speaks of the enforced set: a mitigation is in it while active.
        bool active = c.payload.find("\"state\":\"active\"") != std::string::npos;
        if (!first) body += ',';
        first = false;
        absl::StrAppend(&body, "{\"seq\":", c.seq, ",\"op\":\"", active ? "upsert" : "delete",
                        "\",\"mitigation\":", c.payload, "}");
      }
      absl::StrAppend(&body, "],\"next\":", next, "}");
      Send(respond, 200, std::move(body));
    });
  }

  void Snapshot(Responder respond) {
    OffLoop(std::move(respond), [this](Responder& respond) {
      std::string lines;
      auto seq = deps_.ledger->store().ScanLive([&lines](const Mitigation& m) {
        if (m.state == core::MitigationState::kActive) {
          core::AppendMitigationJson(m, &lines);
          lines += '\n';
        }
        return absl::OkStatus();
      });
      if (!seq.ok()) return Fail(respond, ApiError::FromStatus(seq.status()));
      Response r;
      r.content_type = "application/x-ndjson";
      r.body = absl::StrCat("{\"seq\":", *seq, "}\n", lines);
      std::move(respond)(std::move(r));
    });
  }

  void Audit(const Request& req, Responder respond) {
    int64_t after = 0, limit = 1000;
    if (auto e = QueryInt(req, "after", 0, INT64_MAX, &after)) return Fail(respond, *e);
    if (auto e = QueryInt(req, "limit", 1, 10000, &limit)) return Fail(respond, *e);
    OffLoop(std::move(respond), [this, after, limit](Responder& respond) {
      auto changes = deps_.ledger->store().ReadChanges(after, static_cast<int>(limit));
      if (!changes.ok()) return Fail(respond, ApiError::FromStatus(changes.status()));
      std::string body = "{\"changes\":[";
      int64_t next = after;
      for (size_t i = 0; i < changes->size(); ++i) {
        const ledger::Change& c = (*changes)[i];
        next = c.seq;
        if (i) body += ',';
        absl::StrAppend(&body, "{\"seq\":", c.seq, ",\"at\":\"", core::FormatRfc3339(c.at),
                        "\",\"kind\":\"", AV(ledger::ChangeKindName(c.kind)), "\",\"actor\":");
        core::AppendJsonString(c.actor, &body);
        body += ",\"subject\":";
        core::AppendJsonString(c.subject, &body);
        body += ",\"entity\":";
        core::AppendJsonString(c.entity, &body);
        absl::StrAppend(&body, ",\"payload\":", c.payload, ",\"prev_hash\":\"", c.prev_hash,
                        "\",\"hash\":\"", c.hash, "\"}");
      }
      absl::StrAppend(&body, "],\"next\":", next, "}");
      Send(respond, 200, std::move(body));
    });
  }

  // ---- keys ----

  static std::string KeyJson(const ledger::ApiKey& k) {
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
    if (k.revoked_at) absl::StrAppend(&out, ",\"revoked_at\":\"", core::FormatRfc3339(*k.revoked_at), "\"");
    out += '}';
    return out;
  }

  void Keys(Request req, Responder respond) {
    const std::string& m = req.method;
    if (req.path == "/v1/keys" && m == "GET") {
      return OffLoop(std::move(respond), [this](Responder& respond) {
        auto keys = deps_.ledger->store().ListKeys();
        if (!keys.ok()) return Fail(respond, ApiError::FromStatus(keys.status()));
        std::string body = "{\"keys\":[";
        for (size_t i = 0; i < keys->size(); ++i) {
          if (i) body += ',';
          body += KeyJson((*keys)[i]);
        }
        body += "]}";
        Send(respond, 200, std::move(body));
      });
    }
    if (req.path == "/v1/keys" && m == "POST") {
      rapidjson::Document doc;
      if (auto e = ParseJsonBody(req.body, &doc)) return Fail(respond, *e);
      std::vector<FieldError> errors;
      ObjectReader r(doc, "", &errors);
      auto role_text = r.String("role", true, 32);
      auto sources = r.Strings("sources", false, 100);
      auto name = r.String("name", false, 200);
      r.RejectUnknown();
      std::optional<auth::Role> role;
      if (role_text) {
        role = auth::ParseRole(*role_text);
        if (!role) errors.push_back({"role", "must be admin, detector, enforcer, reviewer or viewer"});
      }
      if (!errors.empty()) return Fail(respond, ApiError::InvalidArgument("invalid key", errors));
      auto key = auth::MakeKey(*role, sources.value_or(std::vector<std::string>{}), name.value_or(""),
                               deps_.clock->Now());
      if (!key.ok()) return Fail(respond, ApiError::FromStatus(key.status()));
      return OffLoop(std::move(respond), [this, key = *std::move(key)](Responder& respond) {
        if (auto s = deps_.ledger->store().CreateKey(key.record); !s.ok()) {
          return Fail(respond, ApiError::FromStatus(s));
        }
        (void)deps_.keys->Refresh();  // best effort: the poller catches up anyway
        std::string body = KeyJson(key.record);
        body.pop_back();
        body += ",\"key\":";
        core::AppendJsonString(key.token, &body);
        body += '}';
        Send(respond, 201, std::move(body));
      });
    }
    if (StartsWith(req.path, "/v1/keys/") && m == "DELETE") {
      std::string id = req.path.substr(9);
      return OffLoop(std::move(respond), [this, id](Responder& respond) {
        if (auto s = deps_.ledger->store().RevokeKey(id, deps_.clock->Now()); !s.ok()) {
          return Fail(respond, ApiError::FromStatus(s));
        }
        (void)deps_.keys->Refresh();
        Send(respond, 200, absl::StrCat("{\"id\":\"", id, "\",\"revoked\":true}"));
      });
    }
    Fail(respond, ApiError{405, "method_not_allowed", "use GET/POST /v1/keys or DELETE /v1/keys/{id}"});
  }

  Api* api_;
  ApiDeps deps_;
  ApiOptions options_;
  internal::WorkerPool pool_;
  internal::ChangeWaiters waiters_;
};

std::string Api::Impl::RenderMetrics() {
  // Filled in by obs/ once the registry lands; until then the essentials.
  return absl::StrCat("# HELP quell_index_mitigations Active mitigations in the index.\n",
                      "# TYPE quell_index_mitigations gauge\nquell_index_mitigations ",
                      deps_.index->size(), "\n# HELP quell_ledger_seq Last committed ledger seq.\n",
                      "# TYPE quell_ledger_seq gauge\nquell_ledger_seq ", deps_.ledger->last_seq(), "\n");
}

Api::Api(ApiDeps deps, ApiOptions options)
    : impl_(std::make_unique<Impl>(this, std::move(deps), std::move(options))) {}
Api::~Api() = default;

void Api::Handle(http::Request request, http::Responder respond) {
  impl_->Handle(std::move(request), std::move(respond));
}

}  // namespace quell::api
