// Distributed tracing: W3C trace-context (traceparent / tracestate) parsing and
// formatting, spans, and a Tracer that exports finished spans in batches over
// OTLP/HTTP with the JSON encoding.
//
// Usage:
//   auto tracer = obs::Tracer::Create(obs::OtlpHttpExporter::Create(url).value(), opts, &registry);
//   obs::Span server = (*tracer)->StartServerSpan("GET /v1/check", req.Header("traceparent"),
//                                                 req.Header("tracestate"));
//   obs::Span child = server.StartChild("ledger.commit");
//   child.SetAttribute("quell.ledger.changes", int64_t{3});
//   child.End();                              // or let it go out of scope
//
// A request never waits on export: Span::End puts the span in a bounded queue (a
// short mutex, no I/O); a background thread exports batches. When the queue is full
// or an export fails (collector down, slow, or answering non-2xx) the spans are
// dropped and counted in quell_trace_spans_dropped_total{reason}.
//
// Sampling: a request whose traceparent has the sampled flag is always recorded;
// any other trace is recorded with probability `sample_ratio`, decided from the
// trace id (so every service using the same ratio rule agrees). A child is
// recorded iff its parent is. A span that is not recorded costs no allocation.
#ifndef QUELL_OBS_TRACE_H_
#define QUELL_OBS_TRACE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quell::obs {

class Counter;
class Logger;
class Registry;

using TraceId = std::array<uint8_t, 16>;
using SpanId = std::array<uint8_t, 8>;

// The propagated identity of a span (W3C trace-context). Value type.
struct SpanContext {
  TraceId trace_id{};
  SpanId span_id{};
  uint8_t flags = 0;        // bit 0: sampled; the other bits are reserved
  std::string trace_state;  // a valid tracestate header value, or empty

  bool sampled() const { return (flags & 1) != 0; }
  //! Both ids non-zero.
  bool IsValid() const;
};

//! Lowercase hex of `bytes`.
std::string HexId(std::span<const uint8_t> bytes);
//! All bytes zero.
bool IsZeroId(std::span<const uint8_t> bytes);

//! Parses a traceparent header. Strict: exactly "00-" 32 hex "-" 16 hex "-" 2 hex
//! (55 characters, lowercase hex), version 00 only, neither id all zeros.
//! Errors: kInvalidArgument saying what is wrong. trace_state is left empty.
absl::StatusOr<SpanContext> ParseTraceparent(std::string_view header);
//! "00-<trace id>-<span id>-<flags>".
std::string FormatTraceparent(const SpanContext& context);
//! Validates a tracestate header (W3C: comma-separated key=value members, at most 32,
//! keys unique, key and value grammar, at most 512 characters) and returns it with
//! optional whitespace and empty members removed. Errors: kInvalidArgument (the
//! caller then drops the tracestate, keeping the traceparent).
absl::StatusOr<std::string> ParseTracestate(std::string_view header);

// OTLP SpanKind numbers.
enum class SpanKind : int { kInternal = 1, kServer = 2, kClient = 3, kProducer = 4, kConsumer = 5 };
// OTLP Status codes.
enum class SpanStatus : int { kUnset = 0, kOk = 1, kError = 2 };

using AttributeValue = std::variant<std::string, int64_t, double, bool>;
struct Attribute {
  std::string key;
  AttributeValue value;
};

// Everything exported about one span. Value type.
struct SpanData {
  SpanContext context;
  SpanId parent_span_id{};  // all zero for a root span (also when the parent is remote-less)
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  int64_t start_unix_nanos = 0;
  int64_t end_unix_nanos = 0;
  std::vector<Attribute> attributes;
  SpanStatus status = SpanStatus::kUnset;
  std::string status_message;
};

struct Resource {
  std::string service_name = "quell";
  std::string service_version;
};

//! The OTLP/HTTP JSON body (ExportTraceServiceRequest) for `spans`: one resourceSpans
//! with one scopeSpans; ids as lowercase hex, times as decimal strings, integer
//! attributes as strings (proto3 JSON mapping).
std::string EncodeOtlpJson(std::span<const SpanData> spans, const Resource& resource);

class Tracer;

// A span in progress. Move-only; a default-constructed Span is not recording, and
// every method on it is a no-op. Ends (and is handed to its tracer) at End() or on
// destruction. Confined to one thread at a time; may move between threads. The
// Tracer must outlive it.
class Span {
 public:
  Span() = default;
  Span(Span&& other) noexcept = default;
  Span& operator=(Span&& other) noexcept;
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  ~Span() { End(); }

  bool recording() const { return data_ != nullptr; }
  //! The span's identity; an invalid (all-zero) context when not recording.
  const SpanContext& context() const;
  //! A child of this span (recorded iff this one is).
  Span StartChild(std::string_view name, SpanKind kind = SpanKind::kInternal) const;
  //! A child that started at `start` (work timed elsewhere, e.g. on another thread).
  Span StartChildAt(std::string_view name, absl::Time start,
                    SpanKind kind = SpanKind::kInternal) const;

  void SetAttribute(std::string_view key, std::string_view value);
  void SetAttribute(std::string_view key, const char* value) {
    SetAttribute(key, std::string_view(value));
  }
  void SetAttribute(std::string_view key, int64_t value);
  void SetAttribute(std::string_view key, double value);
  void SetAttribute(std::string_view key, bool value);
  void SetStatus(SpanStatus status, std::string_view message = {});
  //! Records the end time and queues the span for export. Idempotent.
  void End();
  //! End() with an explicit end time (work timed elsewhere).
  void EndAt(absl::Time end);

 private:
  friend class Tracer;
  Span(Tracer* tracer, std::unique_ptr<SpanData> data) : tracer_(tracer), data_(std::move(data)) {}

  Tracer* tracer_ = nullptr;
  std::unique_ptr<SpanData> data_;
};

// Sends batches of finished spans somewhere. Called only from the Tracer's export
// thread, one call at a time; must return within a bounded time.
class SpanExporter {
 public:
  virtual ~SpanExporter() = default;
  //! Errors: anything; the batch is then dropped and counted.
  virtual absl::Status Export(std::span<const SpanData> spans) = 0;
};

// Exports to an OTLP/HTTP collector (JSON encoding) with a small blocking HTTP/1.1
// client: one connection per batch, bounded connect and request times. Only plain
// http:// endpoints. Thread-compatible (the Tracer calls it from one thread).
class OtlpHttpExporter final : public SpanExporter {
 public:
  struct Options {
    absl::Duration connect_timeout = absl::Seconds(1);
    absl::Duration request_timeout = absl::Seconds(3);  // whole exchange, connect included
    Resource resource;
  };
  //! `url` like "http://127.0.0.1:4318/v1/traces". Errors: kInvalidArgument for a
  //! malformed URL or a scheme other than http.
  static absl::StatusOr<std::unique_ptr<OtlpHttpExporter>> Create(std::string_view url,
                                                                  Options options);
  ~OtlpHttpExporter() override;

  //! Errors: kUnavailable (resolve/connect failed, collector answered non-2xx),
  //! kDeadlineExceeded (timeouts).
  absl::Status Export(std::span<const SpanData> spans) override;

 private:
  struct Endpoint;
  OtlpHttpExporter(std::unique_ptr<Endpoint> endpoint, Options options);
  std::unique_ptr<Endpoint> endpoint_;
  Options options_;
};

// Creates spans and exports them on a background thread. Thread-safe. Owns its
// exporter; borrows the registry and logger, which must outlive it.
class Tracer {
 public:
  struct Options {
    double sample_ratio = 0;             // [0, 1], for traces not sampled upstream
    std::size_t max_queue_spans = 2048;  // finished spans waiting for export
    std::size_t max_batch_spans = 512;   // spans per export call
    absl::Duration flush_interval = absl::Milliseconds(500);  // longest wait before export
    std::function<absl::Time()> now;                          // span clock; absl::Now when empty
  };

  //! Starts the export thread. `metrics` (may be null) gets quell_trace_spans_*;
  //! `logger` (may be null) gets one line when exports start and stop failing.
  //! Errors: kInvalidArgument (ratio outside [0, 1], zero sizes), registration errors.
  static absl::StatusOr<std::unique_ptr<Tracer>> Create(std::unique_ptr<SpanExporter> exporter,
                                                        Options options, Registry* metrics,
                                                        Logger* logger);
  ~Tracer();  // Shutdown(absl::Seconds(2))
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  //! The server span of an incoming request: a child of `traceparent` when it parses
  //! (recorded if its sampled flag is set, else by ratio), with `tracestate` kept when
  //! valid; otherwise the root of a new trace, recorded by ratio.
  Span StartServerSpan(std::string_view name, std::string_view traceparent,
                       std::string_view tracestate);
  //! The root of a new trace (background work), recorded by ratio.
  Span StartRootSpan(std::string_view name, SpanKind kind = SpanKind::kInternal);
  //! A child of `parent` -- a span's context carried to another thread, where the
  //! parent Span itself is not reachable -- that started at `start`. Recorded iff
  //! `parent` is valid and sampled; otherwise a non-recording Span (no allocation).
  Span StartSpanAt(std::string_view name, const SpanContext& parent, absl::Time start,
                   SpanKind kind = SpanKind::kInternal);

  //! Stops accepting spans, exports what is queued (starting no export after
  //! `deadline`; one already running may take up to its request timeout),
  //! joins the thread. Idempotent. Spans ended afterwards are dropped (counted).
  void Shutdown(absl::Duration deadline);

  //! True if a trace with this id is recorded at `ratio` when no upstream decision
  //! applies. Exposed for tests.
  static bool SampledByRatio(const TraceId& id, double ratio);

  // Counters, for tests (also exported as metrics when a registry was given).
  uint64_t exported_spans() const { return exported_.load(std::memory_order_relaxed); }
  uint64_t dropped_spans() const {
    return dropped_full_.load(std::memory_order_relaxed) +
           dropped_failed_.load(std::memory_order_relaxed);
  }
  //! Blocks until the queue is empty and no export is running. For tests.
  void FlushForTest();

 private:
  friend class Span;
  Tracer(std::unique_ptr<SpanExporter> exporter, Options options, Logger* logger);

  Span NewSpan(std::string_view name, SpanKind kind, const SpanContext* parent, bool sampled,
               const TraceId* trace_id = nullptr);
  int64_t NowNanos() const;
  void Enqueue(std::unique_ptr<SpanData> span);
  void ExportLoop();

  const Options options_;
  const std::unique_ptr<SpanExporter> exporter_;
  Logger* const logger_;
  Counter* exported_metric_ = nullptr;
  Counter* dropped_full_metric_ = nullptr;
  Counter* dropped_failed_metric_ = nullptr;
  std::atomic<uint64_t> exported_{0}, dropped_full_{0}, dropped_failed_{0};

  absl::Mutex mu_;
  std::vector<SpanData> queue_ ABSL_GUARDED_BY(mu_);
  bool exporting_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stop_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool failing_ = false;  // export thread only
  std::thread thread_;
  absl::Mutex shutdown_mu_;  // serialises Shutdown
};

}  // namespace quell::obs

#endif  // QUELL_OBS_TRACE_H_
