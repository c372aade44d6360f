// What every route group shares: the request in flight (Call), the server-wide context
// (dependencies, worker pool, long-poll waiters, metrics) and the route table.
//
// Thread-safety: Context is thread-safe after construction. A Call is confined to one
// thread at a time (it moves from the IO thread to the worker pool or the commit
// thread); replying completes it.
#ifndef QUELL_API_INTERNAL_CONTEXT_H_
#define QUELL_API_INTERNAL_CONTEXT_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "api/api.h"
#include "api/errors.h"
#include "api/internal/change_waiters.h"
#include "api/internal/policy_holder.h"
#include "api/internal/worker_pool.h"
#include "auth/keys.h"
#include "ledger/ledger.h"
#include "obs/metrics.h"
#include "obs/trace.h"
#include "workflow/decisions.h"

namespace quell::obs {
class Counter;
class Histogram;
class Logger;
}  // namespace quell::obs

namespace quell::workflow {
class Safeguards;
}  // namespace quell::workflow

namespace quell::api::internal {

class CounterHolder;
struct RouteMetrics;

// One authenticated request and the means to answer it, exactly once.
class Call {
 public:
  // `logger` (may be null) gets the access log line when the call is answered.
  Call(http::Request req, http::Responder respond, RouteMetrics* metrics,
       obs::Logger* logger = nullptr);
  Call(Call&&) = default;
  Call& operator=(Call&&) = default;

  http::Request req;
  auth::Principal who;
  std::vector<std::string> params;  // path parameters, in pattern order
  // The request's server span (not recording when tracing is off or the request is
  // not sampled); route code parents its own spans on it with span.StartChild().
  // Ended by Reply.
  obs::Span span;

  void Reply(http::Response response);
  void Send(int status, std::string body);
  void Fail(const ApiError& error);
  bool replied() const { return !respond_; }
  //! The incoming X-Request-Id when sane, else a new one; echoed on the reply.
  const std::string& request_id() const { return request_id_; }

 private:
  void LogAccess(const http::Response& response, absl::Duration elapsed) const;

  http::Responder respond_;
  RouteMetrics* metrics_;  // null for unrouted requests
  obs::Logger* logger_;    // null: no access log
  absl::Time start_;
  std::string request_id_;
};

// Counts detached background work that borrows the Context's dependencies (snapshot
// producers); the destructor waits for it, so nothing outlives the store it reads.
// Thread-safe.
class BackgroundTasks {
 public:
  ~BackgroundTasks();
  //! False when `max` tasks already run.
  bool TryEnter(int max);
  void Exit();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;  // guarded by mu_
};

// Decision-path metrics shared by every route that applies detections:
//   quell_detections_total{origin, status}   origin: api | rule | import; status:
//                                            accepted | duplicate | rejected
//   quell_decisions_total{policy, action, state}
// Labels are bounded by the policy set and the catalog, never entity ids. Thread-safe.
class DecisionMetrics {
 public:
  explicit DecisionMetrics(obs::Registry* registry);  // null: records nothing
  void Detections(std::string_view origin, std::string_view status, int64_t n);
  //! Counts the applied outcomes (accepted / duplicate) and their decisions.
  void Outcomes(std::string_view origin, const std::vector<workflow::DetectionOutcome>& outcomes);
  //! Counts an evaluation's errors by policy and kind (a condition that failed at run time,
  //! read as false; an event policy's target absent or not an entity): invisible in the
  //! replies, they would otherwise stop a policy from ever firing unseen.
  void Errors(const engine::Evaluation& ev);

 private:
  obs::CounterFamily* detections_ = nullptr;
  obs::CounterFamily* decisions_ = nullptr;
  obs::CounterFamily* errors_ = nullptr;
};

class Context {
 public:
  Context(ApiDeps deps, ApiOptions options);

  ApiDeps deps;
  ApiOptions options;
  std::atomic<bool> ready{true};
  WorkerPool pool;
  ChangeWaiters waiters;
  PolicyHolder* policies = nullptr;  // set by the Api before routes are added
  BackgroundTasks background;
  DecisionMetrics decision_metrics{deps.metrics};
  workflow::Safeguards* safeguards = nullptr;  // set by the Api before routes are added
  //! The velocity counters of the active policy set (POST /v1/events records, policies/
  //! test reads). Set by the Api before routes are added.
  CounterHolder* counters = nullptr;
  //! How long a pending approval can be approved (SafeguardOptions::pending_ttl): past
  //! it, one is over for revokes, appeals and rollbacks too. Infinite without safeguards.
  absl::Duration pending_ttl() const;

  //! Why a policy's decision on an entity would be held for a person now: a protected
  //! list holds it, or a person made it immune (the expiry scheduler's check at a
  //! scheduled start, and a rollback's before a merged decision comes back into force).
  //! Call once policies and safeguards are set; the function lives as long as this.
  workflow::WhyHeldFn WhyHeld() const;

  //! The action catalog in force: the active policy set's.
  std::shared_ptr<const core::ActionCatalog> Catalog() const;

  //! Runs `task` on the worker pool (for anything that may wait on storage), or answers
  //! 503 + Retry-After when the pool is saturated.
  void OffLoop(Call call, absl::AnyInvocable<void(Call&)> task);

  // Idempotency-Key protocol for create routes.
  struct Idempotency {
    std::string scope, key, request_hash;
  };
  struct WriteOutcome {
    bool mismatch = false;
    bool replayed = false;
    int status = 0;
    std::string body;
  };
  //! Reads the Idempotency-Key header (absent: *out stays empty). Errors: a key > 255 bytes.
  std::optional<ApiError> ReadIdempotency(const Call& call, std::optional<Idempotency>* out) const;
  //! Wraps `inner`: a replay returns the stored reply and writes nothing; the same key
  //! with another body is refused (422). The record is written in the same transaction
  //! as the mutation, so it exists iff the write does. `render` gives (status, body).
  static ledger::Mutation WithIdempotency(std::optional<Idempotency> idem, ledger::Mutation inner,
                                          absl::AnyInvocable<std::pair<int, std::string>()> render,
                                          std::shared_ptr<WriteOutcome> out);
  //! Submits to the ledger and answers the call from the outcome once durable.
  void SubmitWrite(ledger::Mutation mutation, std::shared_ptr<WriteOutcome> out, Call call);
  //! Wraps `inner`, a person's decision that may revoke or reject the mitigations `ids`:
  //! once it has, in the transaction, the safeguards note the immunity it gives, so that a
  //! policy decision later in the same commit batch is held (the commit listener notes it
  //! only after the batch). A batch that then fails leaves the immunity noted: more held,
  //! never fewer.
  ledger::Mutation NotingHumanDecisions(ledger::Mutation inner, std::vector<std::string> ids);
};

// Who may call a route.
struct Access {
  enum class Kind { kPublic, kBearer, kCrowdSecKey };
  Kind kind = Kind::kBearer;
  auth::Permission permission = auth::Permission::kRead;
  static Access Public() { return {Kind::kPublic, auth::Permission::kRead}; }
  static Access Bearer(auth::Permission p) { return {Kind::kBearer, p}; }
};

// The route table. Patterns are literal segments, `{name}` (one segment) and a final
// `{name*}` (the rest of the path, slashes included: entities such as cidr:10.0.0.0/8).
class Router {
 public:
  using Fn = std::function<void(Call&&)>;
  explicit Router(Context* context);
  ~Router();

  // Who checks a route's query parameters. A route takes none unless its handler says
  // which (`kHandler`, with OnlyParams or its own loop): the router refuses any other, so
  // `POST /v1/rollbacks?dry_run=true` is a 400, not a rollback, and `GET /v1/breakers?name=x`
  // a 400, not every breaker.
  enum class Query { kDefault, kHandler };
  //! Registers a route; call before serving. The pattern is also the metrics label.
  void Add(std::string_view method, std::string_view pattern, Access access, Fn fn,
           Query query = Query::kDefault);
  //! Finds, authenticates and runs the route; 400/401/403/404/405 otherwise.
  void Dispatch(http::Request req, http::Responder respond);
  //! A request the HTTP layer refused itself: an access log line (route "-") and
  //! quell_http_refused_total{code}. Thread-safe.
  void Refused(const http::Refusal& refusal);

 private:
  struct Route;
  obs::Logger* access_logger() const;
  Context* context_;
  std::vector<std::unique_ptr<Route>> routes_;
  obs::CounterFamily* refused_ = nullptr;  // null: metrics off
};

// Route groups (one file each).
void AddHealthRoutes(Router& router, Context& ctx);
void AddMitigationRoutes(Router& router, Context& ctx);
void AddFeedRoutes(Router& router, Context& ctx);
void AddKeyRoutes(Router& router, Context& ctx);
void AddCrowdSecRoutes(Router& router, Context& ctx);

// Shared helpers for route code.
//! The per-item reply of an applied detection; a replay's stored reply is marked as the
//! duplicate it is. Moves the reply out of `outcome`.
std::string TakeReply(workflow::DetectionOutcome& outcome);
bool StartsWith(std::string_view s, std::string_view prefix);
std::string Sha256Hex(std::string_view s);
//! Parses an optional integer query parameter within [lo, hi].
std::optional<ApiError> QueryInt(const http::Request& req, std::string_view name, int64_t lo,
                                 int64_t hi, int64_t* out);
//! 400 at query.cursor unless `cursor` is empty or a mitigation id (what a list's
//! next_cursor is): anything else was read as "ids before it", an empty or a full page.
std::optional<ApiError> CheckMitigationCursor(std::string_view cursor);

//! Fails on any query parameter not in `allowed`, and on one given twice (which of the
//! two would win is not the client's guess to make).
std::optional<ApiError> OnlyParams(const http::Request& req,
                                   std::initializer_list<std::string_view> allowed);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_CONTEXT_H_
