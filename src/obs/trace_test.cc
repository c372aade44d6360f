#include "obs/trace.h"

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "obs/metrics.h"
#include "rapidjson/document.h"

namespace quell::obs {
namespace {

constexpr char kParent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceparentTest, ParsesAndFormats) {
  auto c = ParseTraceparent(kParent);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(HexId(c->trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(HexId(c->span_id), "00f067aa0ba902b7");
  EXPECT_TRUE(c->sampled());
  EXPECT_TRUE(c->IsValid());
  EXPECT_EQ(FormatTraceparent(*c), kParent);
  auto unsampled = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(unsampled.ok());
  EXPECT_FALSE(unsampled->sampled());
  // Reserved flag bits are kept but do not mean "sampled".
  auto other = ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe");
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->sampled());
  EXPECT_EQ(other->flags, 0xfe);
}

TEST(TraceparentTest, RejectsMalformed) {
  const std::string ok = kParent;
  std::vector<std::string> bad = {
      "",
      ok.substr(0, 54),
      ok + "-",
      ok + "0",
      std::string("01").append(ok, 2),                            // version 01 (strict: 00 only)
      std::string("ff").append(ok, 2),                            // forbidden version
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // separator
      "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
      "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  // non-hex
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
      " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
  };
  for (const std::string& h : bad) {
    EXPECT_FALSE(ParseTraceparent(h).ok()) << h;
  }
}

TEST(TracestateTest, ValidatesAndNormalises) {
  auto s = ParseTracestate("rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE,,\tt@vendor=x y");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@vendor=x y");
  EXPECT_EQ(*ParseTracestate(""), "");
  for (std::string bad : {"novalue", "Upper=1", "a=1,a=2", "a=", "a=x\x7f", "1a=x", "a=b=c",
                          "a@toolongsystemid1=x", "a=\x01"}) {
    EXPECT_FALSE(ParseTracestate(bad).ok()) << bad;
  }
  std::string many;
  for (int i = 0; i < 33; ++i) many.append("k").append(std::to_string(i)).append("=v,");
  EXPECT_FALSE(ParseTracestate(many).ok());
  EXPECT_FALSE(ParseTracestate("a=" + std::string(600, 'x')).ok());
}

TEST(SamplingTest, RatioBounds) {
  TraceId id{};
  id[15] = 1;
  EXPECT_FALSE(Tracer::SampledByRatio(id, 0));
  EXPECT_TRUE(Tracer::SampledByRatio(id, 1));
  int sampled = 0;
  for (int i = 0; i < 10000; ++i) {
    TraceId t{};
    uint64_t v = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL;
    for (int b = 8; b < 16; ++b, v >>= 8) t[static_cast<size_t>(b)] = static_cast<uint8_t>(v);
    sampled += Tracer::SampledByRatio(t, 0.25);
  }
  EXPECT_GT(sampled, 2000);
  EXPECT_LT(sampled, 3000);
}

// Records every batch; optionally blocks inside Export until released, or fails.
class FakeExporter : public SpanExporter {
 public:
  absl::Status Export(std::span<const SpanData> spans) override {
    absl::MutexLock lock(&mu);
    ++calls;
    entered = true;
    mu.Await(absl::Condition(
        +[](bool* b) { return !*b; }, &block));
    if (fail) return absl::UnavailableError("collector down");
    for (const SpanData& s : spans) got.push_back(s);
    return absl::OkStatus();
  }
  absl::Mutex mu;
  bool block = false;
  bool fail = false;
  bool entered = false;
  int calls = 0;
  std::vector<SpanData> got;
};

TEST(TracerTest, ServerSpanContinuesIncomingTraceAndParentsChildren) {
  Registry registry;
  auto e = std::make_unique<FakeExporter>();
  FakeExporter* exporter = e.get();
  Tracer::Options o;
  o.flush_interval = absl::Milliseconds(5);
  auto tracer = Tracer::Create(std::move(e), o, &registry, nullptr);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  {
    Span server = (*tracer)->StartServerSpan("GET /v1/check", kParent, "rojo=1");
    ASSERT_TRUE(server.recording());
    server.SetAttribute("http.response.status_code", int64_t{200});
    Span child = server.StartChild("ledger.commit");
    ASSERT_TRUE(child.recording());
    child.SetAttribute("quell.ledger.changes", int64_t{2});
    child.End();
    child.End();  // idempotent
  }
  (*tracer)->FlushForTest();
  absl::MutexLock lock(&exporter->mu);
  ASSERT_EQ(exporter->got.size(), 2u);
  const SpanData& child = exporter->got[0];
  const SpanData& server = exporter->got[1];
  EXPECT_EQ(HexId(server.context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(HexId(server.parent_span_id), "00f067aa0ba902b7");
  EXPECT_EQ(server.context.trace_state, "rojo=1");
  EXPECT_EQ(server.kind, SpanKind::kServer);
  EXPECT_EQ(child.context.trace_id, server.context.trace_id);
  EXPECT_EQ(child.parent_span_id, server.context.span_id);
  EXPECT_NE(child.context.span_id, server.context.span_id);
  EXPECT_EQ(child.name, "ledger.commit");
  EXPECT_LE(server.start_unix_nanos, child.start_unix_nanos);
  EXPECT_LE(child.end_unix_nanos, server.end_unix_nanos);
  EXPECT_EQ((*tracer)->exported_spans(), 2u);
  EXPECT_NE(registry.Render().find("quell_trace_spans_exported_total 2"), std::string::npos);
}

TEST(TracerTest, SpanAtExplicitParentAndTimes) {
  auto e = std::make_unique<FakeExporter>();
  FakeExporter* exporter = e.get();
  Tracer::Options o;
  o.flush_interval = absl::Milliseconds(5);
  auto tracer = Tracer::Create(std::move(e), o, nullptr, nullptr);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  SpanContext parent = *ParseTraceparent(kParent);
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  {
    // Carried to another thread as a context: recorded with the given times.
    Span commit = (*tracer)->StartSpanAt("ledger.commit", parent, t0);
    ASSERT_TRUE(commit.recording());
    Span apply = commit.StartChildAt("index.apply", t0 + absl::Milliseconds(2));
    apply.EndAt(t0 + absl::Milliseconds(3));
    commit.EndAt(t0 + absl::Milliseconds(2));
    // Not sampled, or invalid: nothing recorded.
    SpanContext unsampled = parent;
    unsampled.flags = 0;
    EXPECT_FALSE((*tracer)->StartSpanAt("x", unsampled, t0).recording());
    EXPECT_FALSE((*tracer)->StartSpanAt("x", SpanContext{}, t0).recording());
  }
  (*tracer)->FlushForTest();
  absl::MutexLock lock(&exporter->mu);
  ASSERT_EQ(exporter->got.size(), 2u);
  const SpanData& apply = exporter->got[0];
  const SpanData& commit = exporter->got[1];
  EXPECT_EQ(commit.name, "ledger.commit");
  EXPECT_EQ(commit.context.trace_id, parent.trace_id);
  EXPECT_EQ(commit.parent_span_id, parent.span_id);
  EXPECT_EQ(commit.start_unix_nanos, absl::ToUnixNanos(t0));
  EXPECT_EQ(commit.end_unix_nanos, absl::ToUnixNanos(t0 + absl::Milliseconds(2)));
  EXPECT_EQ(apply.parent_span_id, commit.context.span_id);
  EXPECT_EQ(apply.context.trace_id, parent.trace_id);
  EXPECT_EQ(apply.start_unix_nanos, absl::ToUnixNanos(t0 + absl::Milliseconds(2)));
  EXPECT_EQ(apply.end_unix_nanos, absl::ToUnixNanos(t0 + absl::Milliseconds(3)));
}

TEST(TracerTest, SamplingDecisions) {
  Tracer::Options o;
  o.sample_ratio = 0;
  auto off = Tracer::Create(std::make_unique<FakeExporter>(), o, nullptr, nullptr);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE((*off)->StartServerSpan("x", "", "").recording());
  EXPECT_FALSE((*off)->StartServerSpan("x", "garbage", "").recording());
  EXPECT_FALSE(
      (*off)
          ->StartServerSpan("x", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "")
          .recording());
  EXPECT_TRUE((*off)->StartServerSpan("x", kParent, "").recording());
  Span none;
  EXPECT_FALSE(none.StartChild("y").recording());
  EXPECT_FALSE(none.context().IsValid());

  o.sample_ratio = 1;
  auto on = Tracer::Create(std::make_unique<FakeExporter>(), o, nullptr, nullptr);
  ASSERT_TRUE(on.ok());
  Span root = (*on)->StartServerSpan("x", "garbage", "");
  ASSERT_TRUE(root.recording());
  EXPECT_TRUE(root.context().IsValid());
  EXPECT_NE(HexId(root.context().trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");

  o.sample_ratio = 1.5;
  EXPECT_FALSE(Tracer::Create(std::make_unique<FakeExporter>(), o, nullptr, nullptr).ok());
}

TEST(TracerTest, FullQueueDropsInsteadOfBlocking) {
  Registry registry;
  auto e = std::make_unique<FakeExporter>();
  FakeExporter* exporter = e.get();
  exporter->block = true;
  Tracer::Options o;
  o.sample_ratio = 1;
  o.max_queue_spans = 4;
  o.max_batch_spans = 1;
  o.flush_interval = absl::Milliseconds(1);
  auto tracer = Tracer::Create(std::move(e), o, &registry, nullptr);
  ASSERT_TRUE(tracer.ok());
  (*tracer)->StartRootSpan("first").End();
  {
    absl::MutexLock lock(&exporter->mu);
    exporter->mu.Await(absl::Condition(&exporter->entered));
  }
  // The exporter is stuck on "first": four spans fit in the queue, six are dropped.
  for (int i = 0; i < 10; ++i) (*tracer)->StartRootSpan("more").End();
  EXPECT_EQ((*tracer)->dropped_spans(), 6u);
  EXPECT_NE(registry.Render().find("quell_trace_spans_dropped_total{reason=\"queue_full\"} 6"),
            std::string::npos)
      << registry.Render();
  {
    absl::MutexLock lock(&exporter->mu);
    exporter->block = false;
  }
  (*tracer)->FlushForTest();
  EXPECT_EQ((*tracer)->exported_spans(), 5u);
}

TEST(TracerTest, FailedExportDropsAndCounts) {
  Registry registry;
  auto e = std::make_unique<FakeExporter>();
  e->fail = true;
  Tracer::Options o;
  o.sample_ratio = 1;
  o.flush_interval = absl::Milliseconds(1);
  auto tracer = Tracer::Create(std::move(e), o, &registry, nullptr);
  ASSERT_TRUE(tracer.ok());
  for (int i = 0; i < 3; ++i) (*tracer)->StartRootSpan("x").End();
  (*tracer)->FlushForTest();
  EXPECT_EQ((*tracer)->dropped_spans(), 3u);
  EXPECT_EQ((*tracer)->exported_spans(), 0u);
  EXPECT_NE(registry.Render().find("quell_trace_spans_dropped_total{reason=\"export_failed\"} 3"),
            std::string::npos);
}

TEST(TracerTest, ShutdownFlushesAndLaterSpansAreDropped) {
  auto e = std::make_unique<FakeExporter>();
  FakeExporter* exporter = e.get();
  Tracer::Options o;
  o.sample_ratio = 1;
  o.flush_interval = absl::Hours(1);  // only shutdown exports
  auto tracer = Tracer::Create(std::move(e), o, nullptr, nullptr);
  ASSERT_TRUE(tracer.ok());
  (*tracer)->StartRootSpan("a").End();
  Span late = (*tracer)->StartRootSpan("late");
  (*tracer)->Shutdown(absl::Seconds(10));
  {
    absl::MutexLock lock(&exporter->mu);
    EXPECT_EQ(exporter->got.size(), 1u);
  }
  late.End();
  EXPECT_EQ((*tracer)->dropped_spans(), 1u);
  (*tracer)->Shutdown(absl::Seconds(1));  // idempotent
}

TEST(OtlpJsonTest, EncodesSpans) {
  SpanData s;
  s.context = *ParseTraceparent(kParent);
  s.context.trace_state = "rojo=1";
  s.parent_span_id = {1, 2, 3, 4, 5, 6, 7, 8};
  s.name = "GET /v1/check \"quoted\"";
  s.kind = SpanKind::kServer;
  s.start_unix_nanos = 1700000000123456789;
  s.end_unix_nanos = 1700000000223456789;
  s.attributes = {{"s", std::string("v")}, {"i", int64_t{-5}}, {"d", 0.5}, {"b", true}};
  s.status = SpanStatus::kError;
  s.status_message = "boom";
  SpanData root;
  root.context.trace_id = s.context.trace_id;
  root.context.span_id = {9, 9, 9, 9, 9, 9, 9, 9};
  root.name = "root";
  const std::string json = EncodeOtlpJson(std::vector<SpanData>{s, root}, Resource{"quell", "1.2"});
  rapidjson::Document d;
  ASSERT_FALSE(d.Parse(json.c_str()).HasParseError()) << json;
  const auto& rs = d["resourceSpans"][0];
  EXPECT_STREQ(rs["resource"]["attributes"][0]["key"].GetString(), "service.name");
  EXPECT_STREQ(rs["resource"]["attributes"][0]["value"]["stringValue"].GetString(), "quell");
  const auto& spans = rs["scopeSpans"][0]["spans"];
  ASSERT_EQ(spans.Size(), 2u);
  const auto& j = spans[0];
  EXPECT_STREQ(j["traceId"].GetString(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_STREQ(j["spanId"].GetString(), "00f067aa0ba902b7");
  EXPECT_STREQ(j["parentSpanId"].GetString(), "0102030405060708");
  EXPECT_STREQ(j["traceState"].GetString(), "rojo=1");
  EXPECT_STREQ(j["name"].GetString(), "GET /v1/check \"quoted\"");
  EXPECT_EQ(j["kind"].GetInt(), 2);
  EXPECT_STREQ(j["startTimeUnixNano"].GetString(), "1700000000123456789");
  EXPECT_STREQ(j["endTimeUnixNano"].GetString(), "1700000000223456789");
  EXPECT_STREQ(j["attributes"][0]["value"]["stringValue"].GetString(), "v");
  EXPECT_STREQ(j["attributes"][1]["value"]["intValue"].GetString(), "-5");
  EXPECT_EQ(j["attributes"][2]["value"]["doubleValue"].GetDouble(), 0.5);
  EXPECT_TRUE(j["attributes"][3]["value"]["boolValue"].GetBool());
  EXPECT_EQ(j["status"]["code"].GetInt(), 2);
  EXPECT_STREQ(j["status"]["message"].GetString(), "boom");
  EXPECT_FALSE(spans[1].HasMember("parentSpanId"));
  EXPECT_FALSE(spans[1].HasMember("traceState"));
}

}  // namespace
}  // namespace quell::obs
