#include "obs/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::obs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------------------
// A small, strict parser of the text format, to read back what Render wrote.

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> help;  // family -> unescaped help
  std::map<std::string, std::string> type;  // family -> type
  std::vector<Sample> samples;
  std::vector<std::string> comments;
  std::vector<std::string> errors;

  // The value of the one sample with this name and exactly these labels.
  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const {
    const Sample* found = nullptr;
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) {
        if (found != nullptr) ADD_FAILURE() << "duplicate sample " << name;
        found = &s;
      }
    }
    if (found == nullptr) {
      ADD_FAILURE() << "no sample " << name;
      return NAN;
    }
    return found->value;
  }
  int Count(const std::string& name) const {
    int n = 0;
    for (const Sample& s : samples) n += s.name == name;
    return n;
  }
};

bool ParseValue(const std::string& text, double* out) {
  if (text == "+Inf") {
    *out = INFINITY;
  } else if (text == "-Inf") {
    *out = -INFINITY;
  } else if (text == "NaN") {
    *out = NAN;
  } else {
    char* end = nullptr;
    *out = std::strtod(text.c_str(), &end);
    return !text.empty() && *end == '\0';
  }
  return true;
}

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}

// The family a sample name belongs to, given the declared types.
std::string FamilyOf(const Exposition& e, const std::string& sample) {
  if (e.type.contains(sample)) return sample;
  for (std::string suffix : {"_bucket", "_sum", "_count"}) {
    if (sample.size() > suffix.size() && sample.ends_with(suffix)) {
      std::string base = sample.substr(0, sample.size() - suffix.size());
      auto it = e.type.find(base);
      if (it != e.type.end() && it->second == "histogram") return base;
    }
  }
  return "";
}

Exposition Parse(const std::string& text) {
  Exposition e;
  if (!text.empty() && text.back() != '\n') e.errors.push_back("no final newline");
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
      const std::string rest = line.substr(7);
      const std::size_t sp = rest.find(' ');
      if (sp == std::string::npos) {
        e.errors.push_back("bad header: " + line);
        continue;
      }
      const std::string name = rest.substr(0, sp);
      std::string value = rest.substr(sp + 1);
      if (line[2] == 'H') {
        std::string unescaped;
        for (std::size_t i = 0; i < value.size(); ++i) {
          if (value[i] == '\\' && i + 1 < value.size()) {
            ++i;
            unescaped.push_back(value[i] == 'n' ? '\n' : value[i]);
          } else {
            unescaped.push_back(value[i]);
          }
        }
        if (!e.help.emplace(name, unescaped).second) e.errors.push_back("second HELP " + name);
      } else {
        if (!e.help.contains(name)) e.errors.push_back("TYPE before HELP " + name);
        if (!e.type.emplace(name, value).second) e.errors.push_back("second TYPE " + name);
      }
      continue;
    }
    if (line.starts_with("#")) {
      e.comments.push_back(line);
      continue;
    }
    Sample s;
    std::size_t i = 0;
    while (i < line.size() && IsNameChar(line[i])) s.name.push_back(line[i++]);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        std::string label;
        while (i < line.size() && line[i] != '=') label.push_back(line[i++]);
        if (i + 1 >= line.size() || line[i + 1] != '"') {
          e.errors.push_back("bad label in: " + line);
          break;
        }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
            value.push_back(line[i] == 'n' ? '\n' : line[i]);
          } else {
            value.push_back(line[i]);
          }
          ++i;
        }
        ++i;  // closing quote
        if (!s.labels.emplace(label, value).second) e.errors.push_back("repeated label: " + line);
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // closing brace
    }
    if (i >= line.size() || line[i] != ' ') {
      e.errors.push_back("no space before value: " + line);
      continue;
    }
    if (!ParseValue(line.substr(i + 1), &s.value)) {
      e.errors.push_back("bad value: " + line);
      continue;
    }
    if (FamilyOf(e, s.name).empty()) e.errors.push_back("sample without TYPE: " + line);
    e.samples.push_back(std::move(s));
  }
  return e;
}

template <typename T>
T Must(absl::StatusOr<T> v) {
  EXPECT_TRUE(v.ok()) << v.status();
  return *std::move(v);
}

// ---------------------------------------------------------------------------

TEST(RegistryTest, RendersWhatWasRegistered) {
  Registry r;
  CounterFamily* requests = Must(r.AddCounterFamily(
      "quell_http_requests_total", "HTTP requests by route and code.", {"route", "code"}));
  requests->WithLabels({"GET /v1/check", "200"})->Increment(41);
  requests->WithLabels({"GET /v1/check", "200"})->Increment();
  requests->WithLabels({"POST /v1/mitigations", "422"})->Increment(3);
  Gauge* depth = Must(r.AddGauge("quell_review_queue_depth", "Items waiting for review."));
  depth->Set(7);
  depth->Add(-2.5);
  Histogram* latency =
      Must(r.AddHistogram("quell_commit_seconds", "Ledger commit latency.", {0.001, 0.01, 0.1}));
  latency->Observe(0.0005);
  latency->Observe(0.05);

  const Exposition e = Parse(r.Render());
  EXPECT_THAT(e.errors, ElementsAre());
  EXPECT_EQ(e.type.at("quell_http_requests_total"), "counter");
  EXPECT_EQ(e.type.at("quell_review_queue_depth"), "gauge");
  EXPECT_EQ(e.type.at("quell_commit_seconds"), "histogram");
  EXPECT_EQ(e.help.at("quell_http_requests_total"), "HTTP requests by route and code.");
  EXPECT_EQ(e.Value("quell_http_requests_total", {{"route", "GET /v1/check"}, {"code", "200"}}),
            42);
  EXPECT_EQ(
      e.Value("quell_http_requests_total", {{"route", "POST /v1/mitigations"}, {"code", "422"}}),
      3);
  EXPECT_EQ(e.Value("quell_review_queue_depth"), 4.5);
  EXPECT_EQ(e.Value("quell_commit_seconds_bucket", {{"le", "0.001"}}), 1);
  EXPECT_EQ(e.Value("quell_commit_seconds_bucket", {{"le", "0.01"}}), 1);
  EXPECT_EQ(e.Value("quell_commit_seconds_bucket", {{"le", "0.1"}}), 2);
  EXPECT_EQ(e.Value("quell_commit_seconds_bucket", {{"le", "+Inf"}}), 2);
  EXPECT_DOUBLE_EQ(e.Value("quell_commit_seconds_sum"), 0.0505);
  EXPECT_EQ(e.Value("quell_commit_seconds_count"), 2);
}

TEST(RegistryTest, ExactTextOfASmallRegistry) {
  Registry r;
  Must(r.AddCounter("b_total", "B things."))->Increment(2);
  HistogramFamily* h = Must(r.AddHistogramFamily("a_seconds", "A\\B\nC", {"op"}, {0.5, 1}));
  h->WithLabels({"x"})->Observe(0.75);
  EXPECT_EQ(r.Render(),
            "# HELP a_seconds A\\\\B\\nC\n"
            "# TYPE a_seconds histogram\n"
            "a_seconds_bucket{op=\"x\",le=\"0.5\"} 0\n"
            "a_seconds_bucket{op=\"x\",le=\"1\"} 1\n"
            "a_seconds_bucket{op=\"x\",le=\"+Inf\"} 1\n"
            "a_seconds_sum{op=\"x\"} 0.75\n"
            "a_seconds_count{op=\"x\"} 1\n"
            "# HELP b_total B things.\n"
            "# TYPE b_total counter\n"
            "b_total 2\n");
}

TEST(RegistryTest, OutputOrderDoesNotDependOnRegistrationOrder) {
  auto build = [](bool reverse) {
    Registry r;
    std::vector<std::string> names = {"z_total", "a_total", "m_total"};
    if (reverse) std::reverse(names.begin(), names.end());
    for (const std::string& n : names) {
      CounterFamily* f = Must(r.AddCounterFamily(n, "help", {"k"}));
      std::vector<std::string> values = {"3", "1", "2"};
      if (reverse) std::reverse(values.begin(), values.end());
      for (const std::string& v : values) f->WithLabels({v})->Increment();
    }
    return r.Render();
  };
  const std::string forward = build(false);
  EXPECT_EQ(forward, build(true));
  EXPECT_LT(forward.find("a_total"), forward.find("m_total"));
  EXPECT_LT(forward.find("k=\"1\""), forward.find("k=\"2\""));
}

TEST(RegistryTest, LabelValuesAreEscapedAndReadBack) {
  Registry r;
  GaugeFamily* g = Must(r.AddGaugeFamily("g", "help", {"v"}));
  const std::vector<std::string> values = {"back\\slash",  "quo\"te", "new\nline",
                                           "all\\\"\n\\n", "",        "{}=,# é"};
  for (std::size_t i = 0; i < values.size(); ++i) {
    g->WithLabels(std::span<const std::string>(&values[i], 1))->Set(static_cast<double>(i));
  }
  const std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("g{v=\"back\\\\slash\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("g{v=\"quo\\\"te\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("g{v=\"new\\nline\"} 2\n"));
  const Exposition e = Parse(text);
  EXPECT_THAT(e.errors, ElementsAre());
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(e.Value("g", {{"v", values[i]}}), static_cast<double>(i)) << values[i];
  }
}

TEST(RegistryTest, InvalidUtf8InLabelValuesIsReplaced) {
  Registry r;
  GaugeFamily* g = Must(r.AddGaugeFamily("g", "help", {"v"}));
  g->WithLabels({"a\xff"
                 "b"})
      ->Set(1);
  EXPECT_EQ(g->WithLabels({"a\xef\xbf\xbd"
                           "b"}),
            g->WithLabels({"a\xff"
                           "b"}));
  EXPECT_THAT(r.Render(), HasSubstr("g{v=\"a\xef\xbf\xbd"
                                    "b\"} 1\n"));
}

TEST(RegistryTest, WithLabelsReturnsStablePointers) {
  Registry r;
  CounterFamily* f = Must(r.AddCounterFamily("c_total", "help", {"a", "b"}));
  Counter* first = f->WithLabels({"x", "y"});
  for (int i = 0; i < 1000; ++i) f->WithLabels({"x", std::to_string(i)});
  EXPECT_EQ(first, f->WithLabels({"x", "y"}));
  EXPECT_NE(first, f->WithLabels({"y", "x"}));
  const std::vector<std::string> owned = {"x", "y"};
  EXPECT_EQ(first, f->WithLabels(std::span<const std::string>(owned)));
}

TEST(RegistryDeathTest, WrongNumberOfLabelValuesAborts) {
  Registry r;
  CounterFamily* f = Must(r.AddCounterFamily("c_total", "help", {"a", "b"}));
  EXPECT_DEATH(f->WithLabels({"only-one"}), "c_total has 2 label\\(s\\) but 1 value");
}

TEST(RegistryTest, MetricNameValidation) {
  for (std::string_view good : {"a", "_", ":", "quell_x", "a:b_c9", "A_Z"}) {
    EXPECT_TRUE(IsValidMetricName(good)) << good;
  }
  for (std::string_view bad : {"", "9a", "a-b", "a b", "a.b", "é", "a{", "a\n"}) {
    EXPECT_FALSE(IsValidMetricName(bad)) << bad;
  }
  for (std::string_view good : {"a", "_a", "route", "a_9", "_"}) {
    EXPECT_TRUE(IsValidLabelName(good)) << good;
  }
  for (std::string_view bad : {"", "__name__", "__x", "a:b", "9a", "a-b"}) {
    EXPECT_FALSE(IsValidLabelName(bad)) << bad;
  }
  Registry r;
  EXPECT_EQ(r.AddGauge("bad-name", "h").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.AddCounter("requests", "h").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.AddGaugeFamily("g", "h", {"__reserved"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.AddGaugeFamily("g", "h", {"a", "a"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.AddHistogramFamily("h", "h", {"le"}, {1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(r.AddGaugeFamily("g_le", "h", {"le"}).ok());  // only histograms reserve "le"
  EXPECT_EQ(r.AddCallbackGauge("bad name", "h", [] { return 1.0; }).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Render().find("bad"), std::string::npos);
}

TEST(RegistryTest, HistogramBoundsValidation) {
  Registry r;
  auto code = [&](std::vector<double> b) {
    return r.AddHistogram("h_seconds", "h", std::move(b)).status().code();
  };
  EXPECT_EQ(code({}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({INFINITY}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1, 1}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({2, 1}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1, NAN}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({-INFINITY, 1}), absl::StatusCode::kInvalidArgument);
  Histogram* h = Must(r.AddHistogram("h_seconds", "h", {-1, 0, 1, INFINITY}));
  EXPECT_THAT(h->bounds(), ElementsAre(-1, 0, 1));  // trailing +Inf dropped
  EXPECT_THAT(ExponentialBuckets(0.001, 10, 4), ElementsAre(0.001, 0.01, 0.1, 1.0));
  EXPECT_THAT(LinearBuckets(1, 2, 3), ElementsAre(1, 3, 5));
  EXPECT_TRUE(r.AddHistogram("d_seconds", "h", DefaultLatencyBuckets()).ok());
  EXPECT_FALSE(r.AddHistogram("e_seconds", "h", ExponentialBuckets(1, 1, 3)).ok());
}

TEST(RegistryTest, SameDefinitionReturnsTheExistingFamily) {
  Registry r;
  CounterFamily* a = Must(r.AddCounterFamily("x_total", "help", {"k"}));
  CounterFamily* b = Must(r.AddCounterFamily("x_total", "other help", {"k"}));
  EXPECT_EQ(a, b);
  Histogram* h1 = Must(r.AddHistogram("h_seconds", "h", {1, 2}));
  Histogram* h2 = Must(r.AddHistogram("h_seconds", "h", {1, 2, INFINITY}));
  EXPECT_EQ(h1, h2);
  Counter* c1 = Must(r.AddCounter("y_total", "h"));
  EXPECT_EQ(c1, Must(r.AddCounter("y_total", "h")));
}

TEST(RegistryTest, ConflictingDefinitionsAreErrors) {
  Registry r;
  ASSERT_TRUE(r.AddCounterFamily("x_total", "help", {"k"}).ok());
  EXPECT_EQ(r.AddCounterFamily("x_total", "help", {"j"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(r.AddCounterFamily("x_total", "help", {"k", "j"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(r.AddGaugeFamily("x_total", "help", {"k"}).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(r.AddHistogram("h", "help", {1, 2}).ok());
  EXPECT_EQ(r.AddHistogram("h", "help", {1, 3}).status().code(), absl::StatusCode::kAlreadyExists);
  // Sample names collide: h writes h_count, h_sum and h_bucket.
  EXPECT_EQ(r.AddGauge("h_count", "help").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(r.AddCounter("h_bucket_total", "help").status().code(), absl::StatusCode::kOk);
  ASSERT_TRUE(r.AddGauge("z_sum", "help").ok());
  EXPECT_EQ(r.AddHistogram("z", "help", {1}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(r.AddCallbackGauge("x_total", "help", [] { return 1.0; }).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Parse(r.Render()).errors, ElementsAre());
}

TEST(HistogramTest, BucketMath) {
  Registry r;
  Histogram* h = Must(r.AddHistogram("h_seconds", "h", {1, 2, 5}));
  for (double v : {0.5, 1.0, 1.5, 5.0, 7.0, -3.0}) h->Observe(v);
  Histogram::Snapshot s = h->Collect();
  // le=1: 0.5, 1.0, -3 · le=2: 1.5 · le=5: 5.0 · +Inf: 7.0
  EXPECT_THAT(s.bucket_counts, ElementsAre(3, 1, 1, 1));
  EXPECT_EQ(s.count, 6u);
  EXPECT_DOUBLE_EQ(s.sum, 12.0);

  const Exposition e = Parse(r.Render());
  EXPECT_EQ(e.Value("h_seconds_bucket", {{"le", "1"}}), 3);
  EXPECT_EQ(e.Value("h_seconds_bucket", {{"le", "2"}}), 4);
  EXPECT_EQ(e.Value("h_seconds_bucket", {{"le", "5"}}), 5);
  EXPECT_EQ(e.Value("h_seconds_bucket", {{"le", "+Inf"}}), 6);
  EXPECT_EQ(e.Value("h_seconds_count"), 6);
  EXPECT_EQ(e.Count("h_seconds_bucket"), 4);

  h->Observe(NAN);
  s = h->Collect();
  EXPECT_EQ(s.bucket_counts.back(), 2u);
  EXPECT_TRUE(std::isnan(s.sum));
  EXPECT_THAT(r.Render(), HasSubstr("h_seconds_sum NaN\n"));
}

TEST(HistogramTest, BoundsAreWrittenRoundTrip) {
  Registry r;
  const std::vector<double> bounds = {0.0001, 0.00025, 0.1, 1e-9, 123456789.125};
  std::vector<double> sorted = bounds;
  std::sort(sorted.begin(), sorted.end());
  Must(r.AddHistogram("h", "h", sorted))->Observe(0);
  const Exposition e = Parse(r.Render());
  std::vector<double> les;
  for (const Sample& s : e.samples) {
    if (s.name == "h_bucket" && s.labels.at("le") != "+Inf")
      les.push_back(std::stod(s.labels.at("le")));
  }
  EXPECT_EQ(les, sorted);
}

TEST(ConcurrencyTest, CountsAreExactUnderContention) {
  Registry r;
  Counter* c = Must(r.AddCounter("c_total", "h"));
  Gauge* g = Must(r.AddGauge("g", "h"));
  Histogram* h = Must(r.AddHistogram("h", "h", {0.5, 1.5}));
  CounterFamily* f = Must(r.AddCounterFamily("f_total", "h", {"k"}));
  constexpr int kThreads = 8;
  constexpr int kPerThread = 50000;
  std::vector<std::thread> threads;
  std::atomic<bool> stop_render{false};
  std::thread renderer([&] {
    while (!stop_render.load()) {
      EXPECT_THAT(Parse(r.Render()).errors, ElementsAre());
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter* mine = f->WithLabels({std::to_string(t % 3)});
      for (int i = 0; i < kPerThread; ++i) {
        c->Increment();
        g->Add(1);
        h->Observe(1.0);
        mine->Increment(2);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  stop_render = true;
  renderer.join();
  EXPECT_EQ(c->Value(), uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(g->Value(), double{kThreads} * kPerThread);
  const Histogram::Snapshot s = h->Collect();
  EXPECT_EQ(s.count, uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(s.sum, double{kThreads} * kPerThread);
  EXPECT_EQ(s.bucket_counts[1], uint64_t{kThreads} * kPerThread);
  const Exposition e = Parse(r.Render());
  EXPECT_EQ(e.Value("f_total", {{"k", "0"}}) + e.Value("f_total", {{"k", "1"}}) +
                e.Value("f_total", {{"k", "2"}}),
            2.0 * kThreads * kPerThread);
}

TEST(CallbackGaugeTest, ReadsTheValueAtRenderTime) {
  Registry r;
  std::atomic<int> size{3};
  CallbackHandle handle = Must(
      r.AddCallbackGauge("quell_index_size", "Active mitigations.", [&] { return size.load(); }));
  EXPECT_EQ(Parse(r.Render()).Value("quell_index_size"), 3);
  size = 10;
  const Exposition e = Parse(r.Render());
  EXPECT_EQ(e.Value("quell_index_size"), 10);
  EXPECT_EQ(e.type.at("quell_index_size"), "gauge");
}

TEST(CallbackGaugeTest, HandleRemovesTheGauge) {
  Registry r;
  int calls = 0;
  {
    CallbackHandle handle = Must(r.AddCallbackGauge("q", "h", [&] { return ++calls; }));
    CallbackHandle moved = std::move(handle);
    EXPECT_THAT(r.Render(), HasSubstr("q 1\n"));
    EXPECT_EQ(calls, 1);
  }
  EXPECT_EQ(r.Render(), "");
  EXPECT_EQ(calls, 1);
  // The name is free again.
  CallbackHandle again = Must(r.AddCallbackGauge("q", "h", [] { return 5.0; }));
  EXPECT_THAT(r.Render(), HasSubstr("q 5\n"));
  again.Reset();
  EXPECT_TRUE(r.AddGauge("q", "h").ok());
  again.Reset();  // idempotent; does not remove the plain gauge
  EXPECT_THAT(r.Render(), HasSubstr("q 0\n"));
}

TEST(CallbackGaugeTest, LabelledSamplesAreSortedAndBadOnesReported) {
  Registry r;
  CallbackHandle handle =
      Must(r.AddCallbackGaugeFamily("quell_index_entries", "Entries per action.", {"action"}, [] {
        return std::vector<LabelledValue>{{{"suspend"}, 2},
                                          {{"block"}, 5},
                                          {{"a", "b"}, 9},  // wrong arity
                                          {{"block"}, 6},   // duplicate
                                          {{"bad\xc0"}, 1}};
      }));
  const std::string text = r.Render();
  const Exposition e = Parse(text);
  EXPECT_THAT(e.errors, ElementsAre());
  EXPECT_EQ(e.Value("quell_index_entries", {{"action", "block"}}), 5);
  EXPECT_EQ(e.Value("quell_index_entries", {{"action", "suspend"}}), 2);
  EXPECT_EQ(e.Value("quell_index_entries", {{"action", "bad\xef\xbf\xbd"}}), 1);
  EXPECT_EQ(e.Count("quell_index_entries"), 3);
  EXPECT_EQ(e.comments.size(), 2u);
  EXPECT_LT(text.find("action=\"block\""), text.find("action=\"suspend\""));
}

TEST(CallbackGaugeTest, ResetWaitsForARunningCallback) {
  Registry r;
  std::atomic<bool> entered{false};
  std::atomic<bool> release{false};
  std::atomic<bool> alive{true};
  CallbackHandle handle = Must(r.AddCallbackGauge("slow", "h", [&] {
    entered = true;
    while (!release.load()) std::this_thread::yield();
    EXPECT_TRUE(alive.load());
    return 1.0;
  }));
  std::thread render([&] { r.Render(); });
  while (!entered.load()) std::this_thread::yield();
  std::atomic<bool> reset_done{false};
  std::thread resetter([&] {
    handle.Reset();
    reset_done = true;
  });
  // Reset cannot finish while the callback runs; let it go and check order.
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  EXPECT_FALSE(reset_done.load());
  release = true;
  resetter.join();
  alive = false;  // anything the callback captured may now die
  render.join();
  EXPECT_EQ(r.Render(), "");
}

TEST(CallbackCounterTest, RendersAsCounter) {
  Registry r;
  uint64_t failures = 12;
  EXPECT_EQ(
      r.AddCallbackCounter("quell_webhook_failures", "h", [&] { return 1.0; }).status().code(),
      absl::StatusCode::kInvalidArgument);
  CallbackHandle handle = Must(r.AddCallbackCounter(
      "quell_webhook_failures_total", "Failed deliveries.", [&] { return double(failures); }));
  const Exposition e = Parse(r.Render());
  EXPECT_THAT(e.errors, ElementsAre());
  EXPECT_EQ(e.type.at("quell_webhook_failures_total"), "counter");
  EXPECT_EQ(e.Value("quell_webhook_failures_total"), 12);
}

TEST(ScopedTimerTest, ObservesOnceUnlessCancelled) {
  Registry r;
  Histogram* h = Must(r.AddHistogram("t_seconds", "h", {1e-9, 3600}));
  {
    ScopedTimer timer(h);
    EXPECT_GE(timer.Elapsed(), 0.0);
  }
  Histogram::Snapshot s = h->Collect();
  EXPECT_EQ(s.count, 1u);
  EXPECT_GE(s.sum, 0.0);
  {
    ScopedTimer timer(h);
    timer.Cancel();
  }
  EXPECT_EQ(h->Collect().count, 1u);
}

TEST(BuildInfoTest, RendersVersionLabel) {
  Registry r;
  ASSERT_TRUE(AddBuildInfo(r, "0.1.0", {{"revision", "abc"}}).ok());
  ASSERT_TRUE(AddBuildInfo(r, "0.1.0", {{"revision", "abc"}}).ok());
  EXPECT_THAT(r.Render(), HasSubstr("quell_build_info{version=\"0.1.0\",revision=\"abc\"} 1\n"));
  EXPECT_EQ(Parse(r.Render()).Count("quell_build_info"), 1);
  EXPECT_FALSE(AddBuildInfo(r, "0.1.0").ok());  // different label set
}

TEST(RegistryTest, EmptyFamiliesRenderNothing) {
  Registry r;
  ASSERT_TRUE(r.AddCounterFamily("x_total", "help", {"k"}).ok());
  EXPECT_EQ(r.Render(), "");
}

TEST(RegistryTest, SpecialValues) {
  Registry r;
  GaugeFamily* g = Must(r.AddGaugeFamily("g", "h", {"k"}));
  g->WithLabels({"inf"})->Set(INFINITY);
  g->WithLabels({"ninf"})->Set(-INFINITY);
  g->WithLabels({"nan"})->Set(NAN);
  g->WithLabels({"big"})->Set(1e300);
  g->WithLabels({"tiny"})->Set(5e-324);
  const std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("g{k=\"inf\"} +Inf\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"ninf\"} -Inf\n"));
  EXPECT_THAT(text, HasSubstr("g{k=\"nan\"} NaN\n"));
  const Exposition e = Parse(text);
  EXPECT_EQ(e.Value("g", {{"k", "big"}}), 1e300);
  EXPECT_EQ(e.Value("g", {{"k", "tiny"}}), 5e-324);
  Counter* c = Must(r.AddCounter("c_total", "h"));
  c->Increment(uint64_t{1} << 60);
  EXPECT_THAT(r.Render(), HasSubstr("c_total 1152921504606846976\n"));
}

// `promtool check metrics` is Prometheus' own linter for the exposition format.
TEST(PromtoolTest, CheckMetricsAcceptsRender) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not on PATH (apt-get install prometheus provides it)";
  }
  Registry r;
  CounterFamily* requests =
      Must(r.AddCounterFamily("quell_http_requests_total", "HTTP requests.", {"route", "code"}));
  requests->WithLabels({"GET /v1/check", "200"})->Increment(5);
  requests->WithLabels({"weird \"route\"\\\n", "500"})->Increment();
  HistogramFamily* latency =
      Must(r.AddHistogramFamily("quell_http_request_duration_seconds", "Request latency.",
                                {"route"}, DefaultLatencyBuckets()));
  latency->WithLabels({"GET /v1/check"})->Observe(0.0003);
  Must(r.AddGauge("quell_ledger_seq", "Last committed sequence number."))->Set(1234);
  CallbackHandle handle = Must(r.AddCallbackGaugeFamily(
      "quell_index_mitigations", "Active mitigations per action.", {"action"}, [] {
        return std::vector<LabelledValue>{{{"block"}, 3}, {{"suspend"}, 1}};
      }));
  ASSERT_TRUE(AddBuildInfo(r, "0.1.0").ok());

  const std::string path = ::testing::TempDir() + "/obs_promtool_metrics.txt";
  {
    std::ofstream out(path, std::ios::binary);
    out << r.Render();
  }
  const std::string cmd = "promtool check metrics < " + path + " > " + path + ".out 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream diag(path + ".out");
  const std::string diagnostics((std::istreambuf_iterator<char>(diag)),
                                std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << diagnostics;
  EXPECT_EQ(diagnostics, "") << "promtool lint findings";
}

// And it must be able to fail: a deliberately broken exposition is rejected.
TEST(PromtoolTest, CheckMetricsRejectsBrokenText) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not on PATH (apt-get install prometheus provides it)";
  }
  const std::string path = ::testing::TempDir() + "/obs_promtool_broken.txt";
  {
    std::ofstream out(path, std::ios::binary);
    out << "# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"unterminated} 1\n";
  }
  const std::string cmd = "promtool check metrics < " + path + " > /dev/null 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
}

}  // namespace
}  // namespace quell::obs
