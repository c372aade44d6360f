#include "grpc/grpc_server.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/method_handler.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "core/time.h"
#include "grpc/internal/convert.h"
#include "grpc/internal/seq_notifier.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/trace.h"
#include "quell/v1/detections.grpc.pb.h"
#include "quell/v1/enforcement.grpc.pb.h"

namespace quell::grpc_api {
namespace {

namespace v1 = ::quell::v1;

::grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return ::grpc::Status::OK;
  return ::grpc::Status(static_cast<::grpc::StatusCode>(internal::GrpcCode(s.code())),
                        std::string(SV(s.message())));
}

// The ledger keeps listeners for its whole life and has no way to remove one, while a
// GrpcServer is stopped before the ledger goes away. So the ledger gets this small
// forwarder, which outlives both (it is deliberately never freed: one per server start)
// and is detached when the server stops.
class ListenerSlot final : public ledger::ChangeListener {
 public:
  explicit ListenerSlot(ledger::ChangeListener* target) : target_(target) {}
  void OnCommitted(const std::vector<ledger::Change>& changes) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (target_ != nullptr) target_->OnCommitted(changes);
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    target_ = nullptr;
  }

 private:
  std::mutex mu_;
  ledger::ChangeListener* target_;  // guarded by mu_
};

// Checks `authorization: Bearer <key>` and the permission.
absl::StatusOr<auth::Principal> Authorize(auth::KeyRing& keys, const ::grpc::ServerContextBase& ctx,
                                          auth::Permission permission) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("missing metadata \"authorization: Bearer <key>\"");
  }
  if (md.count("authorization") > 1) {  // which one counts would be a guess (as over HTTP)
    return absl::UnauthenticatedError("metadata \"authorization\" given more than once");
  }
  std::string_view credential(it->second.data(), it->second.size());
  auto who = keys.AuthenticateBearer(credential);
  if (absl::IsUnavailable(who.status())) return who.status();  // UNAVAILABLE: retry
  if (!who.ok()) return absl::UnauthenticatedError("invalid or revoked key");
  if (!auth::Allows(who->role, permission)) {
    return absl::PermissionDeniedError(
        absl::StrCat("role ", AV(auth::RoleName(who->role)), " may not call this method"));
  }
  return who;
}

// A metadata value, or empty.
std::string_view Metadata(const ::grpc::ServerContextBase& ctx, std::string_view key) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(::grpc::string_ref(key.data(), key.size()));
  if (it == md.end()) return {};
  return std::string_view(it->second.data(), it->second.size());
}

// A method as its server span names it.
struct Method {
  std::string_view full;  // the span name
  std::string_view service;
  std::string_view name;
};
constexpr Method kCheckMethod{"quell.v1.Enforcement/Check", "quell.v1.Enforcement", "Check"};
constexpr Method kCheckStreamMethod{"quell.v1.Enforcement/CheckStream", "quell.v1.Enforcement",
                                    "CheckStream"};
constexpr Method kWatchMethod{"quell.v1.Enforcement/Watch", "quell.v1.Enforcement", "Watch"};
constexpr Method kSubmitMethod{"quell.v1.Detections/Submit", "quell.v1.Detections", "Submit"};
constexpr char kSubmitPath[] = "/quell.v1.Detections/Submit";  // gRPC's method path

// Check, CheckStream and Submit read their messages raw and parse them here. With a typed
// reader, gRPC treats a message it cannot parse (a string field that is not UTF-8, nesting
// deeper than protobuf's limit) as the end of a client stream: the rest of a Submit was
// dropped and the call answered OK, a CheckStream ended early, a unary Check was INTERNAL
// before its key was even read. Parsed here, it is that one message's error.
//
// Protobuf's recursion limit (100) counts every message level, and a JSON level of a
// Detection's `evidence` (google.protobuf.Struct) takes three (Struct, map entry, Value):
// evidence nested 33 deep was refused, which POST /v1/detections takes up to its own limit
// of 100 (api::DetectionIntake checks it for both). The limit here only keeps the parser's
// stack bounded; the intake decides.
constexpr int kRecursionLimit = 3 * 100 + 20;
template <typename M>
bool ParseRaw(::grpc::ByteBuffer* raw, M* out) {
  bool ok = false;
  {
    ::grpc::ProtoBufferReader reader(raw);
    if (reader.status().ok()) {
      google::protobuf::io::CodedInputStream in(&reader);
      in.SetTotalBytesLimit(INT_MAX);  // gRPC's max receive size bounds it already
      in.SetRecursionLimit(kRecursionLimit);
      ok = out->ParseFromCodedStream(&in) && in.ConsumedEntireMessage();
    }
  }
  raw->Clear();
  return ok;
}
// The reply's bytes. Fails only for a message protobuf cannot serialise (over 2 GiB):
// the call's error then, never an empty reply.
template <typename M>
::grpc::Status SerializeRaw(const M& message, ::grpc::ByteBuffer* out) {
  bool own_buffer = false;
  return ::grpc::SerializationTraits<M>::Serialize(message, out, &own_buffer);
}
// protobuf logs a line on stderr for each string it cannot parse as UTF-8: any client
// could flood the server's log, and the disk under it, with them. Each such failure is
// already its call's answer and counted, so that line is dropped; every other line is
// written as protobuf's own handler writes it (a FATAL one, then aborting, included).
void FilterProtobufLogLine(google::protobuf::LogLevel level, const char* file, int line,
                           const std::string& message) {
  if (level == google::protobuf::LOGLEVEL_ERROR &&
      message.find("when parsing a protocol buffer") != std::string::npos) {
    return;
  }
  static constexpr const char* kNames[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  const int i = std::clamp(static_cast<int>(level), 0, 3);
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", kNames[i], file, line, message.c_str());
  std::fflush(stderr);
}

std::string Unreadable(std::string_view type) {
  return absl::StrCat("not a ", AV(type),
                      " message the server can read (a string field that is not UTF-8, "
                      "nesting past the API's limit, or broken wire data)");
}

// The server span of a call: a child of the caller's `traceparent` metadata (with its
// `tracestate`) when that parses, recorded by the HTTP API's rule (upstream-sampled, or
// the tracer's ratio). Not recording (and no work) without a tracer.
obs::Span StartCallSpan(obs::Tracer* tracer, const ::grpc::ServerContextBase& ctx,
                        const Method& method) {
  if (tracer == nullptr) return {};
  obs::Span span = tracer->StartServerSpan(method.full, Metadata(ctx, "traceparent"),
                                           Metadata(ctx, "tracestate"));
  if (span.recording()) {
    span.SetAttribute("rpc.system", "grpc");
    span.SetAttribute("rpc.service", method.service);
    span.SetAttribute("rpc.method", method.name);
  }
  return span;
}

// Records the call's status code and ends the span. As OpenTelemetry's gRPC server
// convention (and HTTP's 5xx rule): only server-side failures mark the span an error.
void EndCallSpan(obs::Span& span, ::grpc::StatusCode code, std::string_view message) {
  if (!span.recording()) return;
  span.SetAttribute("rpc.grpc.status_code", static_cast<int64_t>(code));
  switch (code) {
    case ::grpc::StatusCode::UNKNOWN:
    case ::grpc::StatusCode::DEADLINE_EXCEEDED:
    case ::grpc::StatusCode::UNIMPLEMENTED:
    case ::grpc::StatusCode::INTERNAL:
    case ::grpc::StatusCode::UNAVAILABLE:
    case ::grpc::StatusCode::DATA_LOSS:
      span.SetStatus(obs::SpanStatus::kError, message);
      break;
    default:
      break;
  }
  span.End();
}
void EndCallSpan(obs::Span& span, const ::grpc::Status& status) {
  if (span.recording()) EndCallSpan(span, status.error_code(), status.error_message());
}

// Each call's access-log line and its count and duration in the metrics, as the HTTP API
// records a request: the method (never what it was asked), the status code, the duration,
// the peer, the caller (its key id, once authenticated: never the secret) and the trace id.
// Thread-safety: Record is thread-safe (lock-free metrics, a thread-safe logger).
class CallRecorder {
 public:
  CallRecorder(obs::Registry* metrics, obs::Logger* log) : log_(log) {
    if (metrics == nullptr) return;
    auto calls = metrics->AddCounterFamily("quell_grpc_requests_total",
                                           "gRPC calls ended, by method and status code.",
                                           {"method", "code"});
    auto seconds = metrics->AddHistogramFamily(
        "quell_grpc_request_duration_seconds",
        "Time from a gRPC call's start to its end (a stream: its whole life), by method.",
        {"method"}, obs::DefaultLatencyBuckets());
    if (!calls.ok() || !seconds.ok()) return;
    for (size_t m = 0; m < kMethods.size(); ++m) {
      for (int code = 0; code < kCodes; ++code) {
        calls_[m][code] = (*calls)->WithLabels({kMethods[m]->full, CodeName(code)});
      }
      seconds_[m] = (*seconds)->WithLabels({kMethods[m]->full});
    }
  }

  void Record(const Method& method, ::grpc::StatusCode code, absl::Duration elapsed,
              const ::grpc::ServerContextBase& ctx, std::string_view caller,
              const obs::Span& span) const {
    const int c = static_cast<int>(code);
    const size_t m = Index(method);
    if (m < kMethods.size() && c >= 0 && c < kCodes && calls_[m][c] != nullptr) {
      calls_[m][c]->Increment();
      seconds_[m]->Observe(absl::ToDoubleSeconds(elapsed));
    }
    if (log_ == nullptr || !log_->Enabled(obs::Level::kInfo)) return;
    const std::string trace_id = span.recording() ? obs::HexId(span.context().trace_id) : "";
    const std::string peer = ctx.peer();
    const std::string code_name = CodeName(c);
    const obs::Field fields[] = {{"method", method.full},
                                 {"code", code_name},
                                 {"duration_us", absl::ToInt64Microseconds(elapsed)},
                                 {"remote", peer},
                                 {"caller", caller},
                                 {"trace_id", trace_id}};
    log_->Log(obs::Level::kInfo, "rpc",
              std::span<const obs::Field>(fields, trace_id.empty() ? 5 : 6));
  }

 private:
  static constexpr int kCodes = 17;  // OK .. UNAUTHENTICATED
  static constexpr std::array<const Method*, 4> kMethods = {&kCheckMethod, &kCheckStreamMethod,
                                                            &kWatchMethod, &kSubmitMethod};
  static size_t Index(const Method& method) {
    for (size_t i = 0; i < kMethods.size(); ++i) {
      if (kMethods[i] == &method) return i;
    }
    return kMethods.size();
  }
  // gRPC's code names are absl's (the same numbering): "OK" .. "UNAUTHENTICATED".
  static std::string CodeName(int code) {
    return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  }

  obs::Logger* log_;
  std::array<std::array<obs::Counter*, kCodes>, 4> calls_{};
  std::array<obs::Histogram*, 4> seconds_{};
};

absl::Time DeadlineOf(const ::grpc::ServerContext& ctx) {
  auto d = ctx.deadline();
  if (d >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(d);
}

// How a call that gRPC marked cancelled ended: its deadline passed (gRPC cancels the call
// then, and the client sees DEADLINE_EXCEEDED), or the client broke it. gRPC's timer and
// this clock differ by a few milliseconds (1 in 6 calls of a test read "cancelled" just
// before the deadline): within kDeadlineSlack of it counts as the deadline.
::grpc::Status EndedStatus(const ::grpc::ServerContext& ctx) {
  constexpr absl::Duration kDeadlineSlack = absl::Milliseconds(50);
  if (absl::Now() + kDeadlineSlack >= DeadlineOf(ctx)) {
    return ::grpc::Status(::grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline passed");
  }
  return ::grpc::Status(::grpc::StatusCode::CANCELLED, "the call was cancelled");
}

// One completion queue of the Check path and the thread that polls it. Every operation
// of a Check or CheckStream call is started through Issue, which refuses once the queue is
// closed (a queue must not take operations after its Shutdown). Thread-safety: Issue and
// Close are thread-safe; the queue is polled by `thread` only.
struct CheckQueue {
  std::unique_ptr<::grpc::ServerCompletionQueue> cq;
  std::thread thread;
  std::mutex mu;
  bool closed = false;  // guarded by mu

  // Runs `start` (which starts one operation on cq) unless the queue is closed.
  template <typename F>
  bool Issue(F&& start) {
    std::lock_guard<std::mutex> lock(mu);
    if (closed) return false;
    start();
    return true;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu);
    closed = true;
    cq->Shutdown();
  }
};

// A Check-path call waiting on a CheckQueue; the polling thread calls Proceed with the
// outcome of its pending operation. Owned by itself (deletes itself when done).
class CheckCall {
 public:
  virtual ~CheckCall() = default;
  virtual void Proceed(bool ok) = 0;
};

}  // namespace

class GrpcServer::Impl final : public v1::Enforcement::WithRawMethod_CheckStream<
                                   v1::Enforcement::WithRawMethod_Check<v1::Enforcement::Service>> {
 public:
  Impl(GrpcDeps deps, GrpcOptions options)
      : deps_(std::move(deps)),
        options_(std::move(options)),
        recorder_(deps_.metrics, deps_.access_log),
        notifier_(deps_.ledger->last_seq()),
        slot_(new ListenerSlot(&notifier_)) {}

  ~Impl() override { Shutdown(absl::ZeroDuration()); }

  absl::Status Start() {
    deps_.ledger->AddListener(slot_, ledger::ListenerTiming::kDurable);
    ::grpc::ServerBuilder builder;
    builder.AddListeningPort(options_.listen, ::grpc::InsecureServerCredentials(), &port_);
    // Not gRPC's default SO_REUSEPORT: with it a second server (another Quell's gRPC, or
    // its HTTP port, itself SO_REUSEPORT) bound the same port and took half its connections.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.RegisterService(this);
    builder.RegisterService(&detections_);
    // 0: one per core (as documented); never none, or Check calls would wait forever.
    const int threads = options_.check_threads > 0
                            ? options_.check_threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    for (int i = 0; i < threads; ++i) {
      queues_.push_back(std::make_unique<CheckQueue>());
      queues_.back()->cq = builder.AddCompletionQueue();
    }
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      for (auto& q : queues_) {
        q->Close();
        void* tag;
        bool ok;
        while (q->cq->Next(&tag, &ok)) {
        }
      }
      return absl::UnavailableError(absl::StrCat("gRPC cannot listen on ", options_.listen));
    }
    for (size_t i = 0; i < queues_.size(); ++i) {
      CheckQueue* q = queues_[i].get();
      UnaryCheck::Spawn(this, q);
      StreamCheck::Spawn(this, q);
      q->thread = std::thread([cq = q, i] {
        core::NameThisThread("quell-grpc-", static_cast<int>(i));
        void* tag;
        bool ok;
        while (cq->cq->Next(&tag, &ok)) static_cast<CheckCall*>(tag)->Proceed(ok);
      });
    }
    return absl::OkStatus();
  }

  int port() const { return port_; }

  void Shutdown(absl::Duration grace) {
    if (stopped_.exchange(true)) return;
    stopping_.store(true);
    notifier_.WakeAll();
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
      server_->Wait();
    }
    // Only now (gRPC's rule): the queues take no more operations, their threads see the
    // remaining completions (each call deletes itself) and end.
    for (auto& q : queues_) q->Close();
    for (auto& q : queues_) {
      if (q->thread.joinable()) q->thread.join();
    }
    slot_->Detach();
  }

  // ---- Enforcement ----

  ::grpc::Status Watch(::grpc::ServerContext* ctx, const v1::WatchRequest* request,
                       ::grpc::ServerWriter<v1::Change>* writer) override {
    const absl::Time start = absl::Now();
    obs::Span span = StartCallSpan(deps_.tracer, *ctx, kWatchMethod);
    std::string caller;
    ::grpc::Status status = DoWatch(ctx, request, writer, &caller);
    EndCallSpan(span, status);
    recorder_.Record(kWatchMethod, status.error_code(), absl::Now() - start, *ctx, caller, span);
    return status;
  }

 private:
  ::grpc::Status DoWatch(::grpc::ServerContext* ctx, const v1::WatchRequest* request,
                         ::grpc::ServerWriter<v1::Change>* writer, std::string* caller) {
    auto who = Authorize(*deps_.keys, *ctx, auth::Permission::kCheck);
    if (!who.ok()) return ToGrpc(who.status());
    *caller = who->key_id;
    if (request->after_seq() < 0) {
      return ::grpc::Status(::grpc::StatusCode::INVALID_ARGUMENT, "after_seq: must be >= 0");
    }
    const absl::Time deadline = DeadlineOf(*ctx);
    int64_t cursor = request->after_seq();
    v1::Change out;
    while (true) {
      // A wake-up at the deadline finds the call cancelled: counted as what it is.
      if (ctx->IsCancelled()) return EndedStatus(*ctx);
      if (stopping_.load()) {
        return ::grpc::Status(::grpc::StatusCode::UNAVAILABLE, "server shutting down");
      }
      // Checked again at every wake-up (a commit, or watch_poll): a key revoked meanwhile
      // ends the stream, as it fails any new call.
      if (auto again = Authorize(*deps_.keys, *ctx, auth::Permission::kCheck); !again.ok()) {
        return ToGrpc(again.status());
      }
      auto changes = ledger::ReadDurableChanges(*deps_.ledger, cursor, options_.watch_page);
      if (!changes.ok()) return ToGrpc(changes.status());
      if (changes->empty() && cursor == request->after_seq()) {
        // Waiting on a cursor past the ledger's last change would skip every change up to
        // it: OUT_OF_RANGE, and the client reloads. (Once past it, the cursor is a real seq.)
        if (absl::Status st = ledger::CheckCursor(*deps_.ledger, cursor, "after_seq"); !st.ok()) {
          return ToGrpc(st);
        }
      }
      for (const ledger::Change& c : *changes) {
        cursor = c.seq;
        if (c.kind != ledger::ChangeKind::kMitigation) continue;
        auto m = core::MitigationFromJson(c.payload);
        if (!m.ok()) {
          return ::grpc::Status(::grpc::StatusCode::INTERNAL,
                                absl::StrCat("change ", c.seq, " has an unreadable mitigation"));
        }
        out.Clear();
        out.set_seq(c.seq);
        // As the HTTP feed: the enforced set holds a mitigation while it is active.
        out.set_op(m->state == core::MitigationState::kActive ? v1::Change::OP_UPSERT
                                                              : v1::Change::OP_DELETE);
        internal::ToProto(*m, out.mutable_mitigation());
        if (!writer->Write(out)) return EndedStatus(*ctx);  // the client went away (or time)
      }
      if (static_cast<int>(changes->size()) == options_.watch_page) continue;  // more stored
      absl::Time now = absl::Now();
      if (now >= deadline) {
        return ::grpc::Status(::grpc::StatusCode::DEADLINE_EXCEEDED, "watch deadline reached");
      }
      WaitForCommit(*ctx, cursor, std::min(deadline, now + options_.watch_poll));
    }
  }

  // One Enforcement.Check call, from its arrival to its answer, all on its queue's
  // thread: authorize, look up, finish. Deletes itself when the answer is sent.
  class UnaryCheck final : public CheckCall {
   public:
    // Waits for the next Check call on `q` (nothing if the queue is closed).
    static void Spawn(Impl* owner, CheckQueue* q) {
      auto* call = new UnaryCheck(owner, q);
      if (!q->Issue([&] {
            owner->RequestCheck(&call->ctx_, &call->raw_request_, &call->responder_, q->cq.get(),
                                q->cq.get(), call);
          })) {
        delete call;
      }
    }
    void Proceed(bool ok) override {
      if (!ok || finishing_) {  // no call (the server stops), or the answer went out
        delete this;
        return;
      }
      Spawn(owner_, q_);  // the next call
      const absl::Time start = absl::Now();
      obs::Span span = StartCallSpan(owner_->deps_.tracer, ctx_, kCheckMethod);
      auto who = Authorize(*owner_->deps_.keys, ctx_, auth::Permission::kCheck);
      absl::Status s = who.status();
      if (s.ok() && !ParseRaw(&raw_request_, &request_)) {
        s = absl::InvalidArgumentError(absl::StrCat("request: ", Unreadable("CheckRequest")));
      }
      if (s.ok()) s = owner_->DoCheck(request_, &response_);
      const auto code = static_cast<::grpc::StatusCode>(internal::GrpcCode(s.code()));
      if (span.recording()) EndCallSpan(span, code, SV(s.message()));
      owner_->recorder_.Record(kCheckMethod, code, absl::Now() - start, ctx_,
                               who.ok() ? std::string_view(who->key_id) : std::string_view(), span);
      finishing_ = true;
      if (!q_->Issue([&] {
            ::grpc::Status sent = s.ok() ? SerializeRaw(response_, &raw_response_) : ToGrpc(s);
            if (sent.ok()) {
              responder_.Finish(raw_response_, ::grpc::Status::OK, this);
            } else {
              responder_.FinishWithError(sent, this);
            }
          })) {
        delete this;
      }
    }

   private:
    UnaryCheck(Impl* owner, CheckQueue* q) : owner_(owner), q_(q), responder_(&ctx_) {}
    Impl* owner_;
    CheckQueue* q_;
    ::grpc::ServerContext ctx_;
    ::grpc::ByteBuffer raw_request_, raw_response_;
    v1::CheckRequest request_;
    v1::CheckResponse response_;
    ::grpc::ServerAsyncResponseWriter<::grpc::ByteBuffer> responder_;
    bool finishing_ = false;
  };

  // One CheckStream call: read a request, answer it, read the next, each step on its
  // queue's thread (no hand-off to another thread). Deletes itself when the call is done.
  //
  // A client that half-closes and one whose call breaks both end the pending Read with
  // ok=false; only the call's done notification (AsyncNotifyWhenDone, delivered on the same
  // queue) tells them apart, through IsCancelled. So the call is logged and counted when
  // both its last operation and that notification have come back, whichever is last. A
  // call that never arrived (its request came back !ok: the server stops) gets no
  // notification, as gRPC documents, and is deleted at once.
  class StreamCheck final : public CheckCall {
   public:
    static void Spawn(Impl* owner, CheckQueue* q) {
      auto* call = new StreamCheck(owner, q);
      call->ctx_.AsyncNotifyWhenDone(&call->done_);  // before the call is requested
      if (!q->Issue([&] {
            owner->RequestCheckStream(&call->ctx_, &call->stream_, q->cq.get(), q->cq.get(), call);
          })) {
        delete call;
      }
    }
    void Proceed(bool ok) override {
      switch (state_) {
        case State::kArriving: {
          if (!ok) {  // the server stops: no call, and no done notification to wait for
            delete this;
            return;
          }
          Spawn(owner_, q_);
          // One span for the whole stream (none per message).
          start_ = absl::Now();
          span_ = StartCallSpan(owner_->deps_.tracer, ctx_, kCheckStreamMethod);
          auto who = Authorize(*owner_->deps_.keys, ctx_, auth::Permission::kCheck);
          if (!who.ok()) {
            Finish(ToGrpc(who.status()));
            return;
          }
          caller_ = who->key_id;
          authorized_at_ = owner_->deps_.clock->Now();
          Read();
          return;
        }
        case State::kReading: {
          if (!ok) {  // the client finished writing, or the call broke (told apart at End)
            Finish(::grpc::Status::OK);
            return;
          }
          // The key again, at most once a second: a key revoked meanwhile ends the stream.
          if (const absl::Time now = owner_->deps_.clock->Now();
              now - authorized_at_ >= absl::Seconds(1)) {
            absl::Status again =
                Authorize(*owner_->deps_.keys, ctx_, auth::Permission::kCheck).status();
            if (!again.ok()) {
              Finish(ToGrpc(again));
              return;
            }
            authorized_at_ = now;
          }
          response_.Clear();
          ++requests_;
          absl::Status s = ParseRaw(&raw_request_, &request_)
                               ? owner_->DoCheck(request_, &response_)
                               : absl::InvalidArgumentError(
                                     absl::StrCat("request: ", Unreadable("CheckRequest")));
          if (!s.ok()) {
            response_.Clear();
            response_.set_error(std::string(SV(s.message())));
          }
          raw_response_.Clear();
          if (::grpc::Status sent = SerializeRaw(response_, &raw_response_); !sent.ok()) {
            Finish(sent);
            return;
          }
          state_ = State::kWriting;
          if (!q_->Issue([&] { stream_.Write(raw_response_, this); })) OperationsOver();
          return;
        }
        case State::kWriting:
          if (!ok) {
            Finish(::grpc::Status::CANCELLED);
            return;
          }
          Read();
          return;
        case State::kFinishing:
          OperationsOver();
          return;
      }
    }

   private:
    enum class State { kArriving, kReading, kWriting, kFinishing };
    // The done notification's tag: the same queue, so the same thread as Proceed.
    struct Done final : CheckCall {
      explicit Done(StreamCheck* call) : call(call) {}
      void Proceed(bool) override { call->Notified(); }
      StreamCheck* call;
    };

    StreamCheck(Impl* owner, CheckQueue* q) : owner_(owner), q_(q), stream_(&ctx_), done_(this) {}
    void Read() {
      state_ = State::kReading;
      if (!q_->Issue([&] { stream_.Read(&raw_request_, this); })) OperationsOver();
    }
    void Finish(const ::grpc::Status& status) {
      status_ = status;
      finished_ = true;
      state_ = State::kFinishing;
      if (!q_->Issue([&] { stream_.Finish(status, this); })) OperationsOver();
    }
    // No operation of the call is pending, and none will be started.
    void OperationsOver() {
      operations_over_ = true;
      if (notified_) End();
    }
    void Notified() {
      notified_ = true;
      if (operations_over_) End();
    }
    // Logs and counts the call once: as the client saw it end. A stream whose queue
    // refused an operation before Finish (the server stops) counts as UNAVAILABLE.
    void End() {
      ::grpc::Status status = status_;
      if (!finished_) {
        status = ::grpc::Status(::grpc::StatusCode::UNAVAILABLE, "the server stopped");
      } else if (ctx_.IsCancelled()) {
        status = EndedStatus(ctx_);
      }
      if (span_.recording()) {
        span_.SetAttribute("quell.check.requests", requests_);
        EndCallSpan(span_, status);
      }
      owner_->recorder_.Record(kCheckStreamMethod, status.error_code(), absl::Now() - start_, ctx_,
                               caller_, span_);
      delete this;
    }

    Impl* owner_;
    CheckQueue* q_;
    State state_ = State::kArriving;
    obs::Span span_;      // the stream's server span (not recording when untraced)
    absl::Time start_;    // when the call arrived
    std::string caller_;  // the key id, once authorized
    int64_t requests_ = 0;
    absl::Time authorized_at_;  // the key's last check
    ::grpc::Status status_;     // what Finish sent
    bool finished_ = false;     // Finish was started
    bool operations_over_ = false;
    bool notified_ = false;  // the done notification came
    ::grpc::ServerContext ctx_;
    ::grpc::ByteBuffer raw_request_, raw_response_;
    v1::CheckRequest request_;
    v1::CheckResponse response_;
    ::grpc::ServerAsyncReaderWriter<::grpc::ByteBuffer, ::grpc::ByteBuffer> stream_;
    Done done_;
  };

  // Detections.Submit: reads the stream, applies it in chunks of options_.submit_chunk
  // through deps_.submit_detections (the HTTP API's decision path) and answers one result
  // per detection, in order. Sync API: the handler thread blocks while a chunk commits.
  // The service is registered by hand, as generated code would, but with a raw reader
  // (sync raw methods are not generated): see ParseRaw.
  class DetectionsImpl final : public ::grpc::Service {
   public:
    explicit DetectionsImpl(Impl* owner) : owner_(owner) {
      using Handler = ::grpc::internal::ClientStreamingHandler<DetectionsImpl, ::grpc::ByteBuffer,
                                                               ::grpc::ByteBuffer>;
      AddMethod(new ::grpc::internal::RpcServiceMethod(
          kSubmitPath, ::grpc::internal::RpcMethod::CLIENT_STREAMING,
          new Handler([](DetectionsImpl* self, ::grpc::ServerContext* ctx,
                         ::grpc::ServerReader<::grpc::ByteBuffer>* reader,
                         ::grpc::ByteBuffer* out) { return self->Submit(ctx, reader, out); },
                      this)));
    }
    ::grpc::Status Submit(::grpc::ServerContext* ctx,
                          ::grpc::ServerReader<::grpc::ByteBuffer>* reader,
                          ::grpc::ByteBuffer* out) {
      const absl::Time start = absl::Now();
      obs::Span span = StartCallSpan(owner_->deps_.tracer, *ctx, kSubmitMethod);
      v1::SubmitResponse response;
      std::string caller;
      ::grpc::Status status = DoSubmit(ctx, reader, &response, span.context(), &caller);
      if (status.ok()) status = SerializeRaw(response, out);
      if (span.recording()) {
        span.SetAttribute("quell.detections", static_cast<int64_t>(response.results_size()));
        EndCallSpan(span, status);
      }
      owner_->recorder_.Record(kSubmitMethod, status.error_code(), absl::Now() - start, *ctx,
                               caller, span);
      return status;
    }

   private:
    ::grpc::Status DoSubmit(::grpc::ServerContext* ctx,
                            ::grpc::ServerReader<::grpc::ByteBuffer>* reader,
                            v1::SubmitResponse* response, const obs::SpanContext& trace,
                            std::string* caller) {
      auto who = Authorize(*owner_->deps_.keys, *ctx, auth::Permission::kSubmit);
      if (!who.ok()) return ToGrpc(who.status());
      *caller = who->key_id;
      if (!owner_->deps_.submit_detections) {
        return ::grpc::Status(::grpc::StatusCode::UNIMPLEMENTED,
                              "Detections.Submit is not wired on this server");
      }
      const absl::Time deadline = DeadlineOf(*ctx);
      const size_t chunk_size = static_cast<size_t>(owner_->options_.submit_chunk);
      Chunk chunk;
      ::grpc::ByteBuffer raw;
      v1::Detection d;
      int64_t n = 0;
      while (reader->Read(&raw)) {
        // An item that is not even JSON goes too, as its error: the intake rejects it with
        // that message and counts it, as any rejected item.
        chunk.items.push_back(ParseRaw(&raw, &d)
                                  ? internal::DetectionJson(d)
                                  : absl::InvalidArgumentError(Unreadable("Detection")));
        chunk.results.push_back(response->add_results());
        ++n;
        if (chunk.items.size() >= chunk_size) {
          if (auto s = Apply(*ctx, *who, deadline, trace, &chunk); !s.ok()) return s;
        }
      }
      if (ctx->IsCancelled()) return EndedStatus(*ctx);
      if (n == 0) {
        return ::grpc::Status(::grpc::StatusCode::INVALID_ARGUMENT,
                              "detections: at least one detection is required");
      }
      return Apply(*ctx, *who, deadline, trace, &chunk);
    }

    struct Chunk {
      std::vector<absl::StatusOr<std::string>> items;  // detection JSON, or why it is not
      std::vector<v1::DetectionResult*> results;       // where each item's result goes
    };
    // What the intake answers, handed from the ledger's finisher thread to the waiting handler.
    struct Outcome {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;  // guarded by mu
      absl::StatusOr<std::vector<std::string>> replies{absl::UnknownError("pending")};
    };

    // Applies the chunk (if any) and fills its results; empties it.
    ::grpc::Status Apply(::grpc::ServerContext& ctx, const auth::Principal& who,
                         absl::Time deadline, const obs::SpanContext& trace, Chunk* chunk) {
      if (chunk->items.empty()) return ::grpc::Status::OK;
      if (ctx.IsCancelled()) return EndedStatus(ctx);
      auto outcome = std::make_shared<Outcome>();
      owner_->deps_.submit_detections(
          who, std::move(chunk->items),
          [outcome](absl::StatusOr<std::vector<std::string>> r) {
            std::lock_guard<std::mutex> lock(outcome->mu);
            outcome->replies = std::move(r);
            outcome->done = true;
            outcome->cv.notify_all();
          },
          trace);
      chunk->items.clear();
      {
        // Waits for the chunk to be durable even when the call is cancelled or its
        // deadline passes meanwhile (gRPC tells the client at once in both cases): the
        // intake's completion borrows the API, which must not go before it runs, and a
        // commit is short. Nothing is undone: a resend is idempotent.
        std::unique_lock<std::mutex> lock(outcome->mu);
        outcome->cv.wait(lock, [&] { return outcome->done; });
      }
      if (ctx.IsCancelled()) return EndedStatus(ctx);
      if (!outcome->replies.ok()) return ToGrpc(outcome->replies.status());
      const std::vector<std::string>& replies = *outcome->replies;
      if (replies.size() != chunk->results.size()) {
        return ::grpc::Status(::grpc::StatusCode::INTERNAL, "detection replies out of step");
      }
      for (size_t i = 0; i < replies.size(); ++i) {
        if (auto s = internal::ReadDetectionResult(replies[i], chunk->results[i]); !s.ok()) {
          return ToGrpc(s);
        }
      }
      chunk->results.clear();
      return ::grpc::Status::OK;
    }

    Impl* owner_;
  };

  absl::Status DoCheck(const v1::CheckRequest& request, v1::CheckResponse* response) {
    const int n = request.entities_size();
    if (n == 0) return absl::InvalidArgumentError("entities: at least one entity is required");
    if (n > options_.max_check_entities) {
      return absl::InvalidArgumentError(
          absl::StrCat("entities: at most ", options_.max_check_entities, " entities per check"));
    }
    if (request.surface().size() > core::Action::kMaxSurfaceBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("surface: at most ", core::Action::kMaxSurfaceBytes, " bytes"));
    }
    const std::string_view surface = request.surface();
    const absl::Time now = deps_.clock->Now();
    const int64_t seq = deps_.index->seq();
    // Fetched at the first hit only: most checks hit nothing, and the fetch is a
    // shared_ptr copy whose reference count every stream's thread would bounce.
    std::shared_ptr<const core::ActionCatalog> catalog;
    core::Verdict verdict = core::Verdict::kAllow;
    index::Hits hits;
    // Each mitigation once, however many asked entities it applies to (as over HTTP).
    absl::InlinedVector<std::array<uint8_t, 16>, 8> listed;
    for (int i = 0; i < n; ++i) {
      auto entity = core::Entity::Parse(request.entities(i));
      if (!entity.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("entities[", i, "]: ", entity.status().message()));
      }
      hits.clear();
      deps_.index->Lookup(*entity, now, &hits);
      for (const index::Hit& h : hits) {
        std::string_view action = deps_.index->ActionName(h.action);
        if (catalog == nullptr) catalog = deps_.catalog();
        const core::Action* a = catalog->Find(action);
        if (a != nullptr && !a->AppliesTo(surface)) continue;
        core::Verdict v = a != nullptr ? a->verdict : core::Verdict::kAllow;
        verdict = std::max(verdict, v);
        if (std::find(listed.begin(), listed.end(), h.id) != listed.end()) continue;
        listed.push_back(h.id);
        v1::CheckedMitigation* m = response->add_mitigations();
        m->set_id(index::DecodeId(h.id));
        if (h.cidr_prefix >= 0) {
          auto ip = core::ParseIp(entity->id());
          core::Network net{core::MaskIp(*ip, h.cidr_prefix), h.cidr_prefix};
          m->set_entity(absl::StrCat("cidr:", core::FormatNetwork(net)));
        } else {
          m->set_entity(entity->str());
        }
        m->set_action(std::string(action));
        m->set_verdict(internal::ToProto(v));
        internal::SetTimestamp(h.expires_us, m->mutable_expires_at());
      }
    }
    response->set_verdict(internal::ToProto(verdict));
    response->set_seq(seq);
    return absl::OkStatus();
  }

  // Blocks until a change after `after` is durable, `until`, a cancel or shutdown. The store
  // is read again afterwards in every case, so a missed wake-up costs at most `until`.
  void WaitForCommit(::grpc::ServerContext& ctx, int64_t after, absl::Time until) {
    notifier_.WaitPast(after, until, [&] { return ctx.IsCancelled() || stopping_.load(); });
  }

  GrpcDeps deps_;
  GrpcOptions options_;
  CallRecorder recorder_;
  internal::SeqNotifier notifier_;
  ListenerSlot* slot_;  // never freed: see ListenerSlot
  DetectionsImpl detections_{this};
  // Check's queues and their threads; they outlive server_ (gRPC's rule).
  std::vector<std::unique_ptr<CheckQueue>> queues_;
  std::unique_ptr<::grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
};

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(GrpcDeps deps, GrpcOptions options) {
  if (deps.ledger == nullptr || deps.index == nullptr || deps.keys == nullptr ||
      deps.clock == nullptr || !deps.catalog) {
    return absl::InvalidArgumentError("GrpcServer needs ledger, index, keys, clock and catalog");
  }
  if (options.listen.rfind(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("gRPC listen address must be HOST:PORT, got \"", options.listen, "\""));
  }
  if (options.watch_page < 1 || options.watch_page > 10000) {
    return absl::InvalidArgumentError("watch_page must be in [1, 10000]");
  }
  if (options.check_threads < 0) {
    return absl::InvalidArgumentError("check_threads must be >= 0 (0: one per core)");
  }
  static std::once_flag quiet_protobuf;  // SetLogHandler is not thread-safe: once, up front
  std::call_once(quiet_protobuf, [] { google::protobuf::SetLogHandler(&FilterProtobufLogLine); });
  auto impl = std::make_unique<Impl>(std::move(deps), std::move(options));
  QUELL_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<GrpcServer>(new GrpcServer(std::move(impl)));
}

GrpcServer::GrpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GrpcServer::~GrpcServer() = default;
int GrpcServer::port() const { return impl_->port(); }
void GrpcServer::Shutdown(absl::Duration grace) { impl_->Shutdown(grace); }

}  // namespace quell::grpc_api
