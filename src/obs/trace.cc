#include "obs/trace.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/threads.h"
#include "obs/internal/http_client.h"
#include "obs/internal/random.h"
#include "obs/internal/text.h"
#include "obs/log.h"
#include "obs/metrics.h"

namespace quell::obs {
namespace {

constexpr char kHex[] = "0123456789abcdef";
constexpr std::size_t kTraceparentLength = 55;
constexpr std::size_t kMaxTracestateBytes = 512;
constexpr std::size_t kMaxTracestateMembers = 32;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is invalid in traceparent
}

bool DecodeHex(std::string_view in, std::span<uint8_t> out) {
  if (in.size() != out.size() * 2) return false;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = HexValue(in[2 * i]);
    const int lo = HexValue(in[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

void FillRandom(std::span<uint8_t> out) {
  do {
    for (std::size_t i = 0; i < out.size(); i += 8) {
      uint64_t v = internal::RandomU64();
      for (std::size_t j = i; j < std::min(out.size(), i + 8); ++j, v >>= 8) {
        out[j] = static_cast<uint8_t>(v);
      }
    }
  } while (IsZeroId(out));
}

bool IsLcAlpha(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsKeyChar(char c) {
  return IsLcAlpha(c) || IsDigit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

// simple-key = lcalpha 0*255(keychar); multi-tenant-key = tenant "@" system, where
// tenant = (lcalpha / DIGIT) 0*240(keychar) and system = lcalpha 0*13(keychar).
bool IsValidTracestateKey(std::string_view key) {
  const std::size_t at = key.find('@');
  auto all_key_chars = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), IsKeyChar);
  };
  if (at == std::string_view::npos) {
    return !key.empty() && key.size() <= 256 && IsLcAlpha(key[0]) && all_key_chars(key);
  }
  std::string_view tenant = key.substr(0, at);
  std::string_view system = key.substr(at + 1);
  return !tenant.empty() && tenant.size() <= 241 && (IsLcAlpha(tenant[0]) || IsDigit(tenant[0])) &&
         all_key_chars(tenant) && !system.empty() && system.size() <= 14 && IsLcAlpha(system[0]) &&
         all_key_chars(system);
}

// value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E.
bool IsValidTracestateValue(std::string_view value) {
  if (value.empty() || value.size() > 256) return false;
  for (char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c > 0x7e || c == ',' || c == '=') return false;
  }
  return value.back() != ' ';
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void AppendAttributes(std::string& out, const std::vector<Attribute>& attributes) {
  out.append("[");
  bool first = true;
  for (const Attribute& a : attributes) {
    if (!first) out.push_back(',');
    first = false;
    out.append("{\"key\":");
    internal::AppendJsonString(out, a.key);
    out.append(",\"value\":{");
    if (const auto* s = std::get_if<std::string>(&a.value)) {
      out.append("\"stringValue\":");
      internal::AppendJsonString(out, *s);
    } else if (const auto* i = std::get_if<int64_t>(&a.value)) {
      out.append("\"intValue\":\"");
      internal::AppendInt(out, *i);
      out.push_back('"');
    } else if (const auto* d = std::get_if<double>(&a.value)) {
      out.append("\"doubleValue\":");
      internal::AppendJsonDouble(out, *d);
    } else {
      out.append("\"boolValue\":").append(std::get<bool>(a.value) ? "true" : "false");
    }
    out.append("}}");
  }
  out.append("]");
}

void AppendStringAttribute(std::vector<Attribute>& attributes, std::string_view key,
                           AttributeValue value) {
  for (Attribute& a : attributes) {
    if (a.key == key) {
      a.value = std::move(value);
      return;
    }
  }
  attributes.push_back(Attribute{std::string(key), std::move(value)});
}

}  // namespace

// ---- trace context ----

bool SpanContext::IsValid() const { return !IsZeroId(trace_id) && !IsZeroId(span_id); }

std::string HexId(std::span<const uint8_t> bytes) {
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

bool IsZeroId(std::span<const uint8_t> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

absl::StatusOr<SpanContext> ParseTraceparent(std::string_view h) {
  if (h.size() != kTraceparentLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("traceparent must be ", kTraceparentLength, " characters, got ", h.size()));
  }
  if (h.substr(0, 2) != "00") return absl::InvalidArgumentError("traceparent version must be 00");
  if (h[2] != '-' || h[35] != '-' || h[52] != '-') {
    return absl::InvalidArgumentError("traceparent fields must be separated by '-'");
  }
  SpanContext c;
  if (!DecodeHex(h.substr(3, 32), c.trace_id)) {
    return absl::InvalidArgumentError("traceparent trace-id must be 32 lowercase hex digits");
  }
  if (!DecodeHex(h.substr(36, 16), c.span_id)) {
    return absl::InvalidArgumentError("traceparent parent-id must be 16 lowercase hex digits");
  }
  uint8_t flags[1];
  if (!DecodeHex(h.substr(53, 2), flags)) {
    return absl::InvalidArgumentError("traceparent flags must be 2 lowercase hex digits");
  }
  c.flags = flags[0];
  if (IsZeroId(c.trace_id)) return absl::InvalidArgumentError("traceparent trace-id is all zeros");
  if (IsZeroId(c.span_id)) return absl::InvalidArgumentError("traceparent parent-id is all zeros");
  return c;
}

std::string FormatTraceparent(const SpanContext& c) {
  std::string out = "00-";
  out.append(HexId(c.trace_id)).push_back('-');
  out.append(HexId(c.span_id)).push_back('-');
  out.push_back(kHex[c.flags >> 4]);
  out.push_back(kHex[c.flags & 15]);
  return out;
}

absl::StatusOr<std::string> ParseTracestate(std::string_view header) {
  if (header.size() > kMaxTracestateBytes) {
    return absl::InvalidArgumentError("tracestate longer than 512 characters");
  }
  std::string out;
  std::set<std::string_view> keys;
  std::size_t members = 0;
  std::size_t pos = 0;
  while (pos <= header.size()) {
    std::size_t comma = header.find(',', pos);
    if (comma == std::string_view::npos) comma = header.size();
    std::string_view member = TrimOws(header.substr(pos, comma - pos));
    pos = comma + 1;
    if (member.empty()) continue;
    const std::size_t eq = member.find('=');
    if (eq == std::string_view::npos) {
      return absl::InvalidArgumentError("tracestate member without '='");
    }
    std::string_view key = member.substr(0, eq);
    if (!IsValidTracestateKey(key)) return absl::InvalidArgumentError("tracestate: invalid key");
    if (!IsValidTracestateValue(member.substr(eq + 1))) {
      return absl::InvalidArgumentError("tracestate: invalid value");
    }
    if (!keys.insert(key).second) return absl::InvalidArgumentError("tracestate: duplicate key");
    if (++members > kMaxTracestateMembers) {
      return absl::InvalidArgumentError("tracestate: more than 32 members");
    }
    if (!out.empty()) out.push_back(',');
    out.append(member);
  }
  return out;
}

// ---- OTLP JSON ----

std::string EncodeOtlpJson(std::span<const SpanData> spans, const Resource& resource) {
  std::string out;
  out.reserve(256 + spans.size() * 400);
  out.append("{\"resourceSpans\":[{\"resource\":{\"attributes\":");
  std::vector<Attribute> res{{"service.name", resource.service_name}};
  if (!resource.service_version.empty()) {
    res.push_back({"service.version", resource.service_version});
  }
  AppendAttributes(out, res);
  out.append("},\"scopeSpans\":[{\"scope\":{\"name\":\"quell\"");
  if (!resource.service_version.empty()) {
    out.append(",\"version\":");
    internal::AppendJsonString(out, resource.service_version);
  }
  out.append("},\"spans\":[");
  bool first = true;
  for (const SpanData& s : spans) {
    if (!first) out.push_back(',');
    first = false;
    out.append("{\"traceId\":\"").append(HexId(s.context.trace_id));
    out.append("\",\"spanId\":\"").append(HexId(s.context.span_id)).append("\"");
    if (!IsZeroId(s.parent_span_id)) {
      out.append(",\"parentSpanId\":\"").append(HexId(s.parent_span_id)).append("\"");
    }
    if (!s.context.trace_state.empty()) {
      out.append(",\"traceState\":");
      internal::AppendJsonString(out, s.context.trace_state);
    }
    out.append(",\"flags\":");
    internal::AppendUint(out, s.context.flags);
    out.append(",\"name\":");
    internal::AppendJsonString(out, s.name);
    out.append(",\"kind\":");
    internal::AppendInt(out, static_cast<int>(s.kind));
    out.append(",\"startTimeUnixNano\":\"");
    internal::AppendInt(out, s.start_unix_nanos);
    out.append("\",\"endTimeUnixNano\":\"");
    internal::AppendInt(out, s.end_unix_nanos);
    out.append("\",\"attributes\":");
    AppendAttributes(out, s.attributes);
    out.append(",\"status\":{");
    if (s.status != SpanStatus::kUnset) {
      out.append("\"code\":");
      internal::AppendInt(out, static_cast<int>(s.status));
      if (!s.status_message.empty()) {
        out.append(",\"message\":");
        internal::AppendJsonString(out, s.status_message);
      }
    }
    out.append("}}");
  }
  out.append("]}]}]}");
  return out;
}

// ---- Span ----

Span& Span::operator=(Span&& other) noexcept {
  if (this != &other) {
    End();
    tracer_ = other.tracer_;
    data_ = std::move(other.data_);
  }
  return *this;
}

const SpanContext& Span::context() const {
  static const SpanContext kInvalid;
  return data_ ? data_->context : kInvalid;
}

Span Span::StartChild(std::string_view name, SpanKind kind) const {
  if (!data_) return Span();
  return tracer_->NewSpan(name, kind, &data_->context, /*sampled=*/true);
}

Span Span::StartChildAt(std::string_view name, absl::Time start, SpanKind kind) const {
  if (!data_) return Span();
  Span child = tracer_->NewSpan(name, kind, &data_->context, /*sampled=*/true);
  child.data_->start_unix_nanos = absl::ToUnixNanos(start);
  return child;
}

void Span::SetAttribute(std::string_view key, std::string_view value) {
  if (data_) AppendStringAttribute(data_->attributes, key, std::string(value));
}
void Span::SetAttribute(std::string_view key, int64_t value) {
  if (data_) AppendStringAttribute(data_->attributes, key, value);
}
void Span::SetAttribute(std::string_view key, double value) {
  if (data_) AppendStringAttribute(data_->attributes, key, value);
}
void Span::SetAttribute(std::string_view key, bool value) {
  if (data_) AppendStringAttribute(data_->attributes, key, value);
}

void Span::SetStatus(SpanStatus status, std::string_view message) {
  if (!data_) return;
  data_->status = status;
  data_->status_message = std::string(message);
}

void Span::End() {
  if (!data_) return;
  data_->end_unix_nanos = tracer_->NowNanos();
  tracer_->Enqueue(std::move(data_));
}

void Span::EndAt(absl::Time end) {
  if (!data_) return;
  data_->end_unix_nanos = absl::ToUnixNanos(end);
  tracer_->Enqueue(std::move(data_));
}

// ---- OtlpHttpExporter ----

struct OtlpHttpExporter::Endpoint {
  internal::HttpUrl url;
};

OtlpHttpExporter::OtlpHttpExporter(std::unique_ptr<Endpoint> endpoint, Options options)
    : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
OtlpHttpExporter::~OtlpHttpExporter() = default;

absl::StatusOr<std::unique_ptr<OtlpHttpExporter>> OtlpHttpExporter::Create(std::string_view url,
                                                                           Options options) {
  absl::StatusOr<internal::HttpUrl> parsed = internal::ParseHttpUrl(url);
  if (!parsed.ok()) return parsed.status();
  auto endpoint = std::make_unique<Endpoint>();
  endpoint->url = *std::move(parsed);
  return std::unique_ptr<OtlpHttpExporter>(
      new OtlpHttpExporter(std::move(endpoint), std::move(options)));
}

absl::Status OtlpHttpExporter::Export(std::span<const SpanData> spans) {
  const std::string body = EncodeOtlpJson(spans, options_.resource);
  absl::StatusOr<internal::HttpResponse> r = internal::HttpPost(
      endpoint_->url, "application/json", body, options_.connect_timeout, options_.request_timeout);
  if (!r.ok()) return r.status();
  if (r->status < 200 || r->status > 299) {
    return absl::UnavailableError(absl::StrCat("collector answered HTTP ", r->status));
  }
  return absl::OkStatus();
}

// ---- Tracer ----

absl::StatusOr<std::unique_ptr<Tracer>> Tracer::Create(std::unique_ptr<SpanExporter> exporter,
                                                       Options options, Registry* metrics,
                                                       Logger* logger) {
  if (!(options.sample_ratio >= 0 && options.sample_ratio <= 1)) {
    return absl::InvalidArgumentError("tracing sample_ratio must be within [0, 1]");
  }
  if (options.max_queue_spans == 0 || options.max_batch_spans == 0) {
    return absl::InvalidArgumentError("tracing queue and batch sizes must be positive");
  }
  if (exporter == nullptr) return absl::InvalidArgumentError("tracing needs an exporter");
  Counter* exported = nullptr;
  Counter* dropped_full = nullptr;
  Counter* dropped_failed = nullptr;
  if (metrics != nullptr) {
    auto e = metrics->AddCounter("quell_trace_spans_exported_total",
                                 "Spans accepted by the trace collector.");
    if (!e.ok()) return e.status();
    auto d = metrics->AddCounterFamily(
        "quell_trace_spans_dropped_total",
        "Finished spans dropped instead of exported: queue_full (the export queue was full) "
        "or export_failed (the collector was down, slow or refused the batch).",
        {"reason"});
    if (!d.ok()) return d.status();
    exported = *e;
    dropped_full = (*d)->WithLabels({"queue_full"});
    dropped_failed = (*d)->WithLabels({"export_failed"});
  }
  std::unique_ptr<Tracer> t(new Tracer(std::move(exporter), std::move(options), logger));
  t->exported_metric_ = exported;
  t->dropped_full_metric_ = dropped_full;
  t->dropped_failed_metric_ = dropped_failed;
  t->thread_ = std::thread([p = t.get()] {
    core::NameThisThread("quell-otlp");
    p->ExportLoop();
  });
  return t;
}

Tracer::Tracer(std::unique_ptr<SpanExporter> exporter, Options options, Logger* logger)
    : options_(std::move(options)), exporter_(std::move(exporter)), logger_(logger) {
  absl::MutexLock lock(&mu_);
  queue_.reserve(std::min<std::size_t>(options_.max_queue_spans, 4096));
}

Tracer::~Tracer() { Shutdown(absl::Seconds(2)); }

bool Tracer::SampledByRatio(const TraceId& id, double ratio) {
  if (ratio <= 0) return false;
  if (ratio >= 1) return true;
  // The last 8 bytes (the random part even for trace ids that start with a timestamp).
  uint64_t v = 0;
  for (int i = 8; i < 16; ++i) v = v << 8 | id[static_cast<std::size_t>(i)];
  return static_cast<double>(v >> 11) < ratio * static_cast<double>(uint64_t{1} << 53);
}

Span Tracer::StartServerSpan(std::string_view name, std::string_view traceparent,
                             std::string_view tracestate) {
  if (!traceparent.empty()) {
    absl::StatusOr<SpanContext> parent = ParseTraceparent(traceparent);
    if (parent.ok()) {
      const bool sampled =
          parent->sampled() || SampledByRatio(parent->trace_id, options_.sample_ratio);
      if (!sampled) return Span();
      if (!tracestate.empty()) {
        absl::StatusOr<std::string> state = ParseTracestate(tracestate);
        if (state.ok()) parent->trace_state = *std::move(state);
      }
      return NewSpan(name, SpanKind::kServer, &*parent, true);
    }
  }
  return StartRootSpan(name, SpanKind::kServer);
}

Span Tracer::StartRootSpan(std::string_view name, SpanKind kind) {
  if (options_.sample_ratio <= 0) return Span();
  TraceId id;
  FillRandom(id);
  if (!SampledByRatio(id, options_.sample_ratio)) return Span();
  return NewSpan(name, kind, nullptr, true, &id);
}

Span Tracer::StartSpanAt(std::string_view name, const SpanContext& parent, absl::Time start,
                         SpanKind kind) {
  if (!parent.sampled() || !parent.IsValid()) return Span();
  Span span = NewSpan(name, kind, &parent, true);
  span.data_->start_unix_nanos = absl::ToUnixNanos(start);
  return span;
}

Span Tracer::NewSpan(std::string_view name, SpanKind kind, const SpanContext* parent, bool sampled,
                     const TraceId* trace_id) {
  if (!sampled) return Span();
  auto d = std::make_unique<SpanData>();
  if (parent != nullptr) {
    d->context.trace_id = parent->trace_id;
    d->context.trace_state = parent->trace_state;
    d->parent_span_id = parent->span_id;
  } else if (trace_id != nullptr) {
    d->context.trace_id = *trace_id;
  } else {
    FillRandom(d->context.trace_id);
  }
  FillRandom(d->context.span_id);
  d->attributes.reserve(6);  // a server span gets 4-5; no regrowth on the request path
  d->context.flags = 1;
  d->name = std::string(name);
  d->kind = kind;
  d->start_unix_nanos = NowNanos();
  return Span(this, std::move(d));
}

int64_t Tracer::NowNanos() const {
  return absl::ToUnixNanos(options_.now ? options_.now() : absl::Now());
}

void Tracer::Enqueue(std::unique_ptr<SpanData> span) {
  {
    // No explicit wake-up: absl::Mutex re-evaluates the export thread's Await
    // condition (a full batch) when this lock is released.
    absl::MutexLock lock(&mu_);
    if (!stopping_ && queue_.size() < options_.max_queue_spans) {
      queue_.push_back(std::move(*span));
      span.reset();
    }
  }
  if (span != nullptr) {
    dropped_full_.fetch_add(1, std::memory_order_relaxed);
    if (dropped_full_metric_ != nullptr) dropped_full_metric_->Increment();
  }
}

void Tracer::ExportLoop() {
  std::vector<SpanData> batch;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || queue_.size() >= options_.max_batch_spans;
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), options_.flush_interval);
      if (queue_.empty()) {
        exporting_ = false;
        if (stopping_) return;
        continue;
      }
      const std::size_t n = std::min(queue_.size(), options_.max_batch_spans);
      batch.assign(std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.begin() + static_cast<std::ptrdiff_t>(n)));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
      exporting_ = true;
      if (stopping_ && absl::Now() > stop_deadline_) {
        // Past the shutdown deadline: drop the rest rather than wait on the collector.
        const uint64_t lost = batch.size() + queue_.size();
        queue_.clear();
        exporting_ = false;
        dropped_failed_.fetch_add(lost, std::memory_order_relaxed);
        if (dropped_failed_metric_ != nullptr) dropped_failed_metric_->Increment(lost);
        return;
      }
    }
    const absl::Status s = exporter_->Export(batch);
    if (s.ok()) {
      exported_.fetch_add(batch.size(), std::memory_order_relaxed);
      if (exported_metric_ != nullptr) exported_metric_->Increment(batch.size());
      if (failing_ && logger_ != nullptr) logger_->Info("trace export recovered");
      failing_ = false;
    } else {
      dropped_failed_.fetch_add(batch.size(), std::memory_order_relaxed);
      if (dropped_failed_metric_ != nullptr) dropped_failed_metric_->Increment(batch.size());
      if (!failing_ && logger_ != nullptr) {
        logger_->Warn("trace export failing; spans are dropped until it recovers",
                      {{"error", SV(s.message())}, {"spans", batch.size()}});
      }
      failing_ = true;
    }
    batch.clear();
    absl::MutexLock lock(&mu_);
    exporting_ = false;
  }
}

void Tracer::FlushForTest() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !exporting_; };
  mu_.Await(absl::Condition(&idle));
}

void Tracer::Shutdown(absl::Duration deadline) {
  absl::MutexLock shutdown(&shutdown_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    stop_deadline_ = absl::Now() + deadline;
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace quell::obs
