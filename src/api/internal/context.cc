#include "api/internal/context.h"

#include <openssl/sha.h>

#include <array>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/request_id.h"

namespace quell::api::internal {

// Request metrics of one route: a counter per status code (created on first use, then
// lock-free) and a latency histogram.
struct RouteMetrics {
  obs::CounterFamily* requests = nullptr;  // null: metrics off
  obs::Histogram* latency = nullptr;
  std::string route, method;
  std::array<std::atomic<obs::Counter*>, 600> by_status{};

  void Record(int status, absl::Duration elapsed) {
    if (requests == nullptr) return;
    if (status < 100 || status >= 600) status = 500;
    obs::Counter* c = by_status[status].load(std::memory_order_acquire);
    if (c == nullptr) {
      std::string code = std::to_string(status);
      c = requests->WithLabels(
          {std::string_view(route), std::string_view(method), std::string_view(code)});
      by_status[status].store(c, std::memory_order_release);
    }
    c->Increment();
    latency->Observe(absl::ToDoubleSeconds(elapsed));
  }
};

Call::Call(http::Request r, http::Responder respond, RouteMetrics* metrics, obs::Logger* logger)
    : req(std::move(r)),
      respond_(std::move(respond)),
      metrics_(metrics),
      logger_(logger),
      start_(absl::Now()),
      request_id_(obs::RequestIdFrom(req.Header("x-request-id"))) {}

void Call::Reply(http::Response response) {
  if (!respond_) return;
  const absl::Duration elapsed = absl::Now() - start_;
  if (metrics_ != nullptr) metrics_->Record(response.status, elapsed);
  if (logger_ != nullptr && logger_->Enabled(obs::Level::kInfo)) LogAccess(response, elapsed);
  if (span.recording()) {
    span.SetAttribute("http.response.status_code", static_cast<int64_t>(response.status));
    if (response.status >= 500) span.SetStatus(obs::SpanStatus::kError);
    span.End();
  }
  response.headers.emplace_back("X-Request-Id", request_id_);
  std::move(respond_)(std::move(response));
}

// The route pattern, never the raw path: paths carry entity ids (unbounded, personal)
// and the query may carry anything. Headers are never logged, so neither is a key.
void Call::LogAccess(const http::Response& response, absl::Duration elapsed) const {
  const std::string_view route = metrics_ != nullptr ? std::string_view(metrics_->route) : "-";
  const int64_t bytes = response.stream ? -1 : static_cast<int64_t>(response.body.size());
  const std::string trace_id = span.recording() ? obs::HexId(span.context().trace_id) : "";
  const obs::Field fields[] = {{"request_id", request_id_},
                               {"method", req.method},
                               {"route", route},
                               {"status", response.status},
                               {"duration_us", absl::ToInt64Microseconds(elapsed)},
                               {"bytes", bytes},
                               {"remote", req.remote_address},
                               {"caller", who.key_id},
                               {"trace_id", trace_id}};
  logger_->Log(obs::Level::kInfo, "request",
               std::span<const obs::Field>(fields, trace_id.empty() ? 8 : 9));
}

void Call::Send(int status, std::string body) {
  http::Response r;
  r.status = status;
  r.body = std::move(body);
  Reply(std::move(r));
}

void Call::Fail(const ApiError& error) { Reply(ToResponse(error)); }

absl::Duration Context::pending_ttl() const {
  return safeguards != nullptr ? safeguards->options().pending_ttl : absl::InfiniteDuration();
}

Context::Context(ApiDeps d, ApiOptions o)
    : deps(std::move(d)),
      options(std::move(o)),
      pool(options.worker_threads),
      waiters(deps.ledger->last_seq()) {
  deps.ledger->AddListener(&waiters, ledger::ListenerTiming::kDurable);
}

DecisionMetrics::DecisionMetrics(obs::Registry* registry) {
  if (registry == nullptr) return;
  auto d = registry->AddCounterFamily("quell_detections_total",
                                      "Detections received, by origin and outcome.",
                                      {"origin", "status"});
  auto m = registry->AddCounterFamily("quell_decisions_total",
                                      "Decisions made, by policy, action and resulting state.",
                                      {"policy", "action", "state"});
  auto e = registry->AddCounterFamily(
      "quell_policy_errors_total",
      "Policy evaluations that failed, by policy and kind: condition (a runtime error, read as "
      "false) or target (an event policy's target attribute absent or not an entity).",
      {"policy", "kind"});
  if (d.ok()) detections_ = *d;
  if (m.ok()) decisions_ = *m;
  if (e.ok()) errors_ = *e;
}

void DecisionMetrics::Errors(const engine::Evaluation& ev) {
  if (errors_ == nullptr) return;
  for (const auto& [kind, policy] : ev.errors) errors_->WithLabels({*policy, kind})->Increment();
}

void DecisionMetrics::Detections(std::string_view origin, std::string_view status, int64_t n) {
  if (detections_ == nullptr || n <= 0) return;
  detections_->WithLabels({origin, status})->Increment(static_cast<uint64_t>(n));
}

void DecisionMetrics::Outcomes(std::string_view origin,
                               const std::vector<workflow::DetectionOutcome>& outcomes) {
  int64_t duplicates = 0;
  for (const workflow::DetectionOutcome& o : outcomes) duplicates += o.duplicate ? 1 : 0;
  Detections(origin, "duplicate", duplicates);
  Detections(origin, "accepted", static_cast<int64_t>(outcomes.size()) - duplicates);
  for (const workflow::DetectionOutcome& o : outcomes) {
    for (const workflow::DecisionSummary& d : o.decisions) {
      if (decisions_ == nullptr) return;
      decisions_
          ->WithLabels(
              {std::string_view(d.policy), std::string_view(d.action), core::StateName(d.state)})
          ->Increment();
    }
  }
}

BackgroundTasks::~BackgroundTasks() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return running_ == 0; });
}

bool BackgroundTasks::TryEnter(int max) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_ >= max) return false;
  ++running_;
  return true;
}

void BackgroundTasks::Exit() {
  std::lock_guard<std::mutex> lock(mu_);
  --running_;
  cv_.notify_all();
}

workflow::WhyHeldFn Context::WhyHeld() const {
  return [this](const core::Mitigation& m, absl::Time now) -> std::optional<std::string> {
    if (auto why = safeguards->WhyProtected(*policies->Current(), m.entity)) return why;
    // Immunity too: a delayed decision taken before a person revoked the entity's
    // mitigation of that policy and action went active at its start all the same.
    return safeguards->WhyImmune(m.entity.str(), m.policy, m.action, now);
  };
}

std::shared_ptr<const core::ActionCatalog> Context::Catalog() const {
  return policies != nullptr ? policies->Catalog() : deps.catalog;
}

void Context::OffLoop(Call call, absl::AnyInvocable<void(Call&)> task) {
  auto shared = std::make_shared<std::pair<Call, absl::AnyInvocable<void(Call&)>>>(std::move(call),
                                                                                   std::move(task));
  if (!pool.Post([shared] { shared->second(shared->first); })) {
    shared->first.Fail(ApiError::Unavailable("server busy, retry shortly"));
  }
}

std::optional<ApiError> Context::ReadIdempotency(const Call& call,
                                                 std::optional<Idempotency>* out) const {
  bool repeated = false;
  const std::string_view key = call.req.Header("idempotency-key", &repeated);
  // Given, it is meant: an empty one (a client's unset variable) or two must not quietly
  // turn into a request that is not idempotent at all.
  if (repeated) return ApiError::Field("header.Idempotency-Key", "given more than once");
  if (key.data() == nullptr) return std::nullopt;  // absent (a present empty one is "")
  if (key.empty() || key.size() > 255)
    return ApiError::Field("header.Idempotency-Key", "must be 1-255 bytes");
  *out = Idempotency{absl::StrCat(call.who.key_id, " ", call.req.method, " ", call.req.path),
                     std::string(key), Sha256Hex(call.req.body)};
  return std::nullopt;
}

ledger::Mutation Context::WithIdempotency(std::optional<Idempotency> idem, ledger::Mutation inner,
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
      ledger::IdempotencyRecord rec{idem->scope, idem->key, idem->request_hash,
                                    out->status, out->body, now};
      QUELL_RETURN_IF_ERROR(txn.PutIdempotency(rec));
    }
    return absl::OkStatus();
  };
}

ledger::Mutation Context::NotingHumanDecisions(ledger::Mutation inner,
                                               std::vector<std::string> ids) {
  if (safeguards == nullptr) return inner;
  return [inner = std::move(inner), ids = std::move(ids), sg = safeguards](
             ledger::Txn& txn, absl::Time now) mutable -> absl::Status {
    const int64_t first = txn.NextSeq();
    QUELL_RETURN_IF_ERROR(inner(txn, now));
    for (const std::string& id : ids) {
      QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m, txn.GetMitigation(id));
      // Changed by this very mutation (one ended before keeps the immunity it gave then).
      if (m && m->seq >= first) sg->NoteHumanDecisionNow(*m, now);
    }
    return absl::OkStatus();
  };
}

void Context::SubmitWrite(ledger::Mutation mutation, std::shared_ptr<WriteOutcome> out, Call call) {
  // "ledger.submit" spans queueing, the group commit and the index apply as this request
  // sees them; the ledger parents its commit-thread spans ("ledger.commit", then
  // "index.apply") on it.
  obs::Span commit = call.span.StartChild("ledger.submit");
  obs::SpanContext trace_parent = commit.context();
  auto shared = std::make_shared<Call>(std::move(call));
  deps.ledger->Submit(
      std::move(mutation),
      [out, shared, commit = std::move(commit)](absl::Status status,
                                                std::vector<ledger::Change> changes) mutable {
        if (commit.recording()) {
          commit.SetAttribute("quell.ledger.changes", static_cast<int64_t>(changes.size()));
          if (!changes.empty()) commit.SetAttribute("quell.ledger.seq", changes.back().seq);
          if (!status.ok()) commit.SetStatus(obs::SpanStatus::kError, SV(status.message()));
          commit.End();
        }
        if (!status.ok()) return shared->Fail(ApiError::FromStatus(status));
        if (out->mismatch) return shared->Fail(ApiError::IdempotencyMismatch());
        http::Response r;
        r.status = out->status;
        r.body = std::move(out->body);
        if (out->replayed) r.headers.emplace_back("Idempotent-Replayed", "true");
        shared->Reply(std::move(r));
      },
      std::move(trace_parent));
}

// ---- router ----

struct Router::Route {
  std::string method;
  std::vector<std::string> segments;  // "{x}" and "{x*}" are parameters
  Access access;
  Fn fn;
  RouteMetrics metrics;
  std::string span_name;       // "GET /v1/check"
  bool refuses_query = false;  // a route whose handler reads no query parameter
};

namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    out.push_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

// Matches `path` against `segments`; fills params. A trailing {x*} takes the rest
// (raw, slashes included).
bool Match(const std::vector<std::string>& segments, std::string_view path,
           std::vector<std::string>* params) {
  params->clear();
  size_t pos = 0;
  for (size_t k = 0; k < segments.size(); ++k) {
    const std::string& seg = segments[k];
    if (pos >= path.size() || path[pos] != '/') return false;
    ++pos;
    bool is_param = seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
    if (is_param && seg[seg.size() - 2] == '*') {
      if (pos >= path.size()) return false;
      params->emplace_back(path.substr(pos));
      return true;
    }
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(pos, end - pos);
    if (is_param) {
      if (part.empty()) return false;
      params->emplace_back(part);
    } else if (part != seg) {
      return false;
    }
    pos = end;
  }
  return pos == path.size();
}

}  // namespace

Router::Router(Context* context) : context_(context) {
  if (obs::Registry* reg = context_->deps.metrics) {
    auto fam = reg->AddCounterFamily(
        "quell_http_refused_total",
        "Requests the HTTP layer answered itself, before any route: 400 unreadable, 408 not "
        "received in time, 413 body too large, 431 header too large.",
        {"code"});
    if (fam.ok()) refused_ = *fam;
  }
}

void Router::Refused(const http::Refusal& r) {
  if (refused_ != nullptr) refused_->WithLabels({std::to_string(r.status)})->Increment();
  obs::Logger* logger = access_logger();
  if (logger == nullptr || !logger->Enabled(obs::Level::kInfo)) return;
  const obs::Field fields[] = {
      {"request_id", r.request_id}, {"method", r.method},         {"route", "-"},
      {"status", r.status},         {"remote", r.remote_address}, {"error", r.message}};
  logger->Log(obs::Level::kInfo, "request", fields);
}
Router::~Router() = default;

void Router::Add(std::string_view method, std::string_view pattern, Access access, Fn fn,
                 Query query) {
  auto r = std::make_unique<Route>();
  r->method = std::string(method);
  r->refuses_query = query == Query::kDefault;
  for (std::string_view s : SplitPath(pattern)) r->segments.emplace_back(s);
  r->access = access;
  r->fn = std::move(fn);
  r->metrics.route = std::string(pattern);
  r->metrics.method = r->method;
  r->span_name = absl::StrCat(r->method, " ", AV(pattern));
  if (obs::Registry* reg = context_->deps.metrics) {
    auto fam = reg->AddCounterFamily("quell_http_requests_total",
                                     "HTTP requests answered, by route pattern, method and status.",
                                     {"route", "method", "code"});
    auto lat =
        reg->AddHistogramFamily("quell_http_request_duration_seconds",
                                "Time from routing a request to its reply, by route pattern.",
                                {"route", "method"}, obs::DefaultLatencyBuckets());
    if (fam.ok() && lat.ok()) {
      r->metrics.requests = *fam;
      r->metrics.latency = (*lat)->WithLabels(
          {std::string_view(r->metrics.route), std::string_view(r->metrics.method)});
    }
  }
  routes_.push_back(std::move(r));
}

obs::Logger* Router::access_logger() const {
  return context_->options.access_log ? context_->deps.logger : nullptr;
}

void Router::Dispatch(http::Request req, http::Responder respond) {
  std::vector<std::string> params;
  Route* found = nullptr;
  std::string allow;  // the methods the path takes, for a 405 (RFC 9110: Allow)
  for (auto& r : routes_) {
    if (!Match(r->segments, req.path, &params)) continue;
    if (r->method == req.method || (r->method == "GET" && req.method == "HEAD")) {
      found = r.get();
      break;
    }
    absl::StrAppend(&allow, allow.empty() ? "" : ", ", r->method,
                    r->method == "GET" ? ", HEAD" : "");
  }
  if (found == nullptr) {
    Call call(std::move(req), std::move(respond), nullptr, access_logger());
    if (!allow.empty()) {
      ApiError e{405,
                 "method_not_allowed",
                 absl::StrCat(call.req.method, " is not allowed on ", call.req.path),
                 {}};
      e.allow = std::move(allow);
      return call.Fail(e);
    }
    return call.Fail(ApiError::NotFound(absl::StrCat("no route ", call.req.path)));
  }
  Call call(std::move(req), std::move(respond), &found->metrics, access_logger());
  call.params = std::move(params);
  if (obs::Tracer* tracer = context_->deps.tracer) {
    call.span = tracer->StartServerSpan(found->span_name, call.req.Header("traceparent"),
                                        call.req.Header("tracestate"));
    if (call.span.recording()) {
      call.span.SetAttribute("http.request.method", call.req.method);
      call.span.SetAttribute("http.route", found->metrics.route);
      call.span.SetAttribute("quell.request_id", call.request_id());
    }
  }
  switch (found->access.kind) {
    case Access::Kind::kPublic:
      break;
    case Access::Kind::kBearer:
    case Access::Kind::kCrowdSecKey: {
      const bool bearer = found->access.kind == Access::Kind::kBearer;
      // One credential: with two, which one a proxy or this server reads is a guess.
      bool repeated = false;
      const std::string_view credential =
          call.req.Header(bearer ? "authorization" : "x-api-key", &repeated);
      if (repeated) {
        return call.Fail(ApiError::Field(bearer ? "header.Authorization" : "header.X-Api-Key",
                                         "given more than once: send one credential"));
      }
      auth::KeyRing& keys = *context_->deps.keys;
      auto who = bearer ? keys.AuthenticateBearer(credential) : keys.Authenticate(credential);
      if (absl::IsUnavailable(who.status())) {
        return call.Fail(ApiError::FromStatus(who.status()));  // 503: the store is down
      }
      if (!who.ok()) {
        return call.Fail(found->access.kind == Access::Kind::kBearer
                             ? ApiError::Unauthenticated()
                             : ApiError::Unauthenticated("X-Api-Key: <enforcer key>"));
      }
      call.who = *std::move(who);
      if (!auth::Allows(call.who.role, found->access.permission)) {
        return call.Fail(ApiError::Forbidden(
            absl::StrCat(AV(auth::RoleWithArticle(call.who.role)), " key may not do this")));
      }
      break;
    }
  }
  if (found->refuses_query && !call.req.query.empty()) {
    return call.Fail(ApiError::Field(absl::StrCat("query.", call.req.query.front().first),
                                     "unknown parameter (this route takes none)"));
  }
  found->fn(std::move(call));
}

// ---- helpers ----

std::string TakeReply(workflow::DetectionOutcome& outcome) {
  std::string reply = std::move(outcome.reply);
  if (outcome.duplicate) {
    static constexpr std::string_view kAccepted = "\"status\":\"accepted\"";
    size_t pos = reply.find(kAccepted);
    if (pos != std::string::npos) reply.replace(pos, kAccepted.size(), "\"status\":\"duplicate\"");
  }
  return reply;
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

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

std::optional<ApiError> QueryInt(const http::Request& req, std::string_view name, int64_t lo,
                                 int64_t hi, int64_t* out) {
  auto v = req.QueryParam(name);
  if (!v) return std::nullopt;
  // Decimal digits with an optional '-' only: SimpleAtoi alone also took "+5" and " 5 ".
  const std::string_view text = *v;
  const std::string_view digits = text.starts_with('-') ? text.substr(1) : text;
  int64_t n;
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos ||
      !absl::SimpleAtoi(AV(text), &n) || n < lo || n > hi) {
    return ApiError::Field(absl::StrCat("query.", AV(name)),
                           absl::StrCat("must be an integer in ", lo, "..", hi));
  }
  *out = n;
  return std::nullopt;
}

std::optional<ApiError> CheckMitigationCursor(std::string_view cursor) {
  if (cursor.empty() || core::IsId(cursor, "m_")) return std::nullopt;
  return ApiError::Field("query.cursor", "not a cursor (the next_cursor of a previous page)");
}

std::optional<ApiError> OnlyParams(const http::Request& req,
                                   std::initializer_list<std::string_view> allowed) {
  for (size_t i = 0; i < req.query.size(); ++i) {
    const std::string& k = req.query[i].first;
    bool ok = false;
    for (std::string_view a : allowed) ok = ok || a == k;
    if (!ok) return ApiError::Field(absl::StrCat("query.", k), "unknown parameter");
    for (size_t j = 0; j < i; ++j) {
      if (req.query[j].first == k) {
        return ApiError::Field(absl::StrCat("query.", k), "must be given once");
      }
    }
  }
  return std::nullopt;
}

}  // namespace quell::api::internal
