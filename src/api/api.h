// The v1 HTTP API (SPEC "HTTP API"): routing, authentication, JSON in and out. It turns
// requests into reads of the index (check), reads of the store (lists, timelines, feed)
// and mutations submitted to the ledger (writes). No business rule lives here: those are
// in workflow/ (and engine/ later); this file chooses status codes and shapes.
//
// Thread-safety: Handle is called concurrently from every IO thread. Check runs inline
// on the IO thread; anything that touches storage runs on the worker pool.
#ifndef QUELL_API_API_H_
#define QUELL_API_API_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "api/http/http_server.h"
#include "auth/keys.h"
#include "core/action.h"
#include "core/time.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "workflow/mitigations.h"
#include "workflow/safeguards.h"

namespace quell::obs {
class Logger;
class Registry;
class Tracer;
}  // namespace quell::obs

namespace quell::webhooks {
class Dispatcher;
}  // namespace quell::webhooks

namespace quell::api {

class DetectionIntake;

// The velocity counters behind POST /v1/events (config `counters:`).
struct CounterOptions {
  bool redis = false;  // backend: memory (default) | redis
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379;
  bool fail_closed = false;  // on_error: fail_open (default) | fail_closed
  absl::Duration lateness = absl::Minutes(5);
  int64_t max_keys = 1'000'000;  // in-process cap on (counter, key) entries
};

struct ApiOptions {
  int worker_threads = 4;                       // storage reads off the event loops
  int max_check_entities = 100;                 // entities in one check
  int max_page = 1000;                          // list and feed pages
  absl::Duration max_wait = absl::Seconds(60);  // long-poll bound
  int max_detections_batch = 10000;             // detections in one POST; past it 413
  bool access_log = true;                       // one log line per request (http.access_log)
  std::string version = "dev";
  int max_events_batch = 10000;  // events in one POST /v1/events; past it 413
  CounterOptions counters;
  // The safeguards' options (config `safeguards:` and QUELL_SAFEGUARDS_*, read by the
  // CLI: cli::ToSafeguardOptions); unset: workflow::SafeguardOptions' defaults.
  std::optional<workflow::SafeguardOptions> safeguards;
  // The background work that must run on one node at a time (the safeguards' sweeper:
  // pending approvals that expire, stale idempotency keys). true: Create starts it; false:
  // the caller does, with StartBackground/StopBackground (several nodes: under a lease).
  bool start_background = true;
};

// Everything the API uses, borrowed; all must outlive the Api.
struct ApiDeps {
  ledger::Ledger* ledger = nullptr;
  index::Index* index = nullptr;
  auth::KeyRing* keys = nullptr;
  core::Clock* clock = nullptr;
  std::shared_ptr<const core::ActionCatalog> catalog;
  obs::Registry* metrics = nullptr;          // may be null: no metrics
  obs::Logger* logger = nullptr;             // may be null: no access log
  obs::Tracer* tracer = nullptr;             // may be null: tracing off
  webhooks::Dispatcher* webhooks = nullptr;  // may be null: /v1/webhooks answers 503
  // Several nodes: the status of the change feed this node's index follows (not OK while
  // it reconnects or after it stopped: /readyz answers 503 "degraded"). Empty: one node.
  // Called on request threads until the server stops.
  std::function<absl::Status()> follower_status;
};

class Api final : public http::Handler {
 public:
  //! Loads the active policy set from the store and registers the API's ledger listeners
  //! (policy-set swaps, long-poll wake-ups). Call before the ledger takes writes.
  static absl::StatusOr<std::unique_ptr<Api>> Create(ApiDeps deps, ApiOptions options);
  ~Api() override;

  void Handle(http::Request request, http::Responder respond) override;
  //! An access log line and quell_http_refused_total. Thread-safe (any IO thread).
  void OnRefused(const http::Refusal& refusal) override;

  //! Readiness: false while draining for shutdown (/readyz answers 503).
  void set_ready(bool ready);
  //! Shutdown begins: not ready, and the long-polls waiting (GET /v1/changes?wait=)
  //! answer now with what they have. Thread-safe. Call before the HTTP server's
  //! Shutdown, which waits for in-flight requests.
  void Drain();
  //! Starts / stops the background work of ApiOptions::start_background (idempotent;
  //! StopBackground waits for a sweep in progress). Thread-safe.
  void StartBackground();
  void StopBackground();
  //! The action catalog of the active policy set (for other front ends: gRPC).
  std::shared_ptr<const core::ActionCatalog> Catalog() const;
  //! Why an entity is protected under the active policy set and the lists (for the
  //! expiry scheduler, which holds a policy's scheduled decision at its start on one).
  //! Thread-safe; lives as long as the Api.
  workflow::WhyHeldFn WhyHeld() const;
  //! The decision path of POST /v1/detections (for other front ends: gRPC's
  //! Detections.Submit). Thread-safe; lives as long as the Api.
  const DetectionIntake& detection_intake() const;

 private:
  class Impl;
  explicit Api(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quell::api

#endif  // QUELL_API_API_H_
