// The gRPC front end (proto/quell/v1): Enforcement.Check and Enforcement.Watch with the
// semantics of GET /v1/check and GET /v1/changes, and Detections.Submit with those of
// POST /v1/detections (through GrpcDeps::submit_detections). See docs/grpc.md.
//
// Auth is the HTTP API's: metadata `authorization: Bearer <key>`, the same roles
// (Check and Watch need auth::Permission::kCheck). Status codes: UNAUTHENTICATED,
// PERMISSION_DENIED, INVALID_ARGUMENT (the field named in the message), UNAVAILABLE
// (storage), DEADLINE_EXCEEDED / CANCELLED.
//
// Threads: Check and CheckStream use gRPC's async API: GrpcOptions::check_threads threads,
// each polling its own completion queue, run every step of a call without blocking
// (index lookups only). Watch and Submit use the synchronous API: each open
// stream holds one thread of gRPC's sync pool while it waits for commits (Submit also
// evaluates its detections on that thread, never on an event loop).
//
// Tracing (GrpcDeps::tracer set): each call reads the W3C `traceparent` / `tracestate`
// metadata and records a server span named after the method ("quell.v1.Enforcement/Check")
// as its child when sampled (upstream-sampled, or by the tracer's ratio), as the HTTP API
// does for a request. A CheckStream gets one span for the whole stream, not one per message.
//
// grpc++ headers stay inside this module: this header has none.
#ifndef QUELL_GRPC_GRPC_SERVER_H_
#define QUELL_GRPC_GRPC_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "auth/keys.h"
#include "core/action.h"
#include "core/time.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "obs/trace.h"

namespace quell::obs {
class Logger;
class Registry;
}  // namespace quell::obs

namespace quell::grpc_api {

// Everything the service uses, borrowed; all must outlive the GrpcServer.
struct GrpcDeps {
  ledger::Ledger* ledger = nullptr;
  index::Index* index = nullptr;
  auth::KeyRing* keys = nullptr;
  core::Clock* clock = nullptr;
  // The action catalog in force (verdicts, surfaces); called on every Check, so it must
  // be cheap and thread-safe (e.g. a copy of a shared_ptr under a short lock).
  std::function<std::shared_ptr<const core::ActionCatalog>()> catalog;
  // Optional: records a server span per call (see above). Null: no tracing work at all.
  obs::Tracer* tracer = nullptr;
  // Optional: quell_grpc_requests_total{method, code} and
  // quell_grpc_request_duration_seconds{method} for every call, as the HTTP API's
  // quell_http_requests_total.
  obs::Registry* metrics = nullptr;
  // Optional: one info line "rpc" per call when it ends (the HTTP access log's "request"):
  // method, code, duration_us, remote, caller (the key id once authenticated), trace_id.
  obs::Logger* access_log = nullptr;

  // Detections.Submit's decision path: evaluates and applies one chunk of detections with
  // the semantics of POST /v1/detections (quell serve passes api::DetectionIntake's
  // SubmitJson; the gRPC module does not depend on the HTTP API). `items` are detection
  // JSON objects, or why an item could not even be made one (a message protobuf cannot
  // read): rejected with that message, and counted, as any rejected item; `done` is
  // called once, on any thread, with one per-item reply per item
  // in order (the HTTP per-item result object: "status" accepted | duplicate | rejected,
  // "decisions", "error"), or with the chunk's error (kPermissionDenied: a source the key
  // may not submit as, nothing of the chunk applied; a storage error). Called on a gRPC
  // sync thread, which may block. Unset: Submit answers UNIMPLEMENTED. `trace_parent` is the
  // Submit call's server span (invalid when not traced): the intake may parent its
  // evaluation and ledger commit spans on it.
  using SubmitDone = std::function<void(absl::StatusOr<std::vector<std::string>>)>;
  std::function<void(const auth::Principal& who, std::vector<absl::StatusOr<std::string>> items,
                     SubmitDone done, const obs::SpanContext& trace_parent)>
      submit_detections;
};

struct GrpcOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  int max_check_entities = 100;        // as the HTTP API
  int watch_page = 1000;               // changes read from the store at a time
  // How long a Watch sleeps between store reads when no commit wakes it (a safety net;
  // commits wake it at once).
  absl::Duration watch_poll = absl::Seconds(1);
  // Detections.Submit applies a stream in chunks of this many detections as they arrive
  // (one ledger step each), so a long stream holds at most one chunk in memory.
  int submit_chunk = 1000;
  // Check and CheckStream run on this many threads, each polling its own completion
  // queue and doing a call's every step itself (read, lookup, write). 0: one per core.
  // The default 1 is the fastest measured on 2 cores: gRPC's poller (epoll1) serves every
  // connection from whichever thread polls, so with more queues most messages are handed
  // to another queue's thread (69k vs 95k CheckStream checks/s; docs/grpc.md).
  int check_threads = 1;
};

// A running gRPC server. Thread-safety: port() is thread-safe; Shutdown and the
// destructor must not race each other.
class GrpcServer {
 public:
  //! Registers a ledger listener (for Watch wake-ups; safe while the ledger takes
  //! writes) and starts serving. kInvalidArgument for a bad listen address or missing
  //! deps; kUnavailable if the port cannot be bound. The first call also installs a
  //! process-wide protobuf log handler that drops one line: the one protobuf wrote on
  //! stderr for each string a client sent that is not UTF-8 (that call's answered error
  //! instead); every other line is written as protobuf writes it.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(GrpcDeps deps, GrpcOptions options);
  //! Shuts down (see Shutdown).
  ~GrpcServer();

  //! The bound port.
  int port() const;
  //! Stops accepting calls, ends open Watch streams (CANCELLED to the client) and waits
  //! up to `grace` for in-flight calls. Idempotent. Call before the ledger goes away.
  void Shutdown(absl::Duration grace = absl::Seconds(5));

  class Impl;

 private:
  explicit GrpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quell::grpc_api

#endif  // QUELL_GRPC_GRPC_SERVER_H_
