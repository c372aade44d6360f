// A small Prometheus metrics registry: counters, gauges and fixed-bucket
// histograms, labelled families, callback gauges, and rendering in the
// Prometheus text exposition format 0.0.4.
//
// Usage:
//   obs::Registry registry;                       // owned by the server, passed by reference
//   auto requests = registry.AddCounterFamily("quell_http_requests_total", "HTTP requests.",
//                                             {"route", "code"});
//   obs::Counter* ok = (*requests)->WithLabels({"GET /v1/check", "200"});  // cache this
//   ok->Increment();                                                          // lock-free
//   std::string body = registry.Render();
//
// Thread-safety: everything here is thread-safe. Metric updates (Increment,
// Set, Add, Observe) are lock-free and wait-free apart from a CAS loop on
// floating-point sums. Registration and WithLabels take a mutex; callers cache
// the returned pointers on hot paths. Render may run concurrently with updates;
// it sees each metric's value at some instant during the render.
//
// Ownership: the Registry owns every family and metric; returned pointers stay
// valid for the registry's lifetime (metrics are never removed). Callback
// gauges are the exception: they live until their CallbackHandle is destroyed.
#ifndef QUELL_OBS_METRICS_H_
#define QUELL_OBS_METRICS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace quell::obs {

// Content-Type of Registry::Render()'s output.
inline constexpr std::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

namespace internal {

// Hot metrics are striped: each thread adds into its own cache line, and a
// read sums the stripes. This keeps two cores from fighting over one line.
inline constexpr std::size_t kStripes = 8;
inline constexpr std::size_t kCacheLine = 64;

// Picks stripes round-robin for new threads.
std::size_t NextStripe();

inline std::size_t ThreadStripe() {
  thread_local const std::size_t stripe = NextStripe();
  return stripe;
}

struct alignas(kCacheLine) PaddedU64 {
  std::atomic<uint64_t> value{0};
};

class FamilyBase;

}  // namespace internal

// A monotonically increasing count. Thread-safe and lock-free. Striped: takes
// kStripes cache lines (512 bytes), so keep label cardinality bounded.
class Counter {
 public:
  struct Config {};
  explicit Counter(const Config& = {}) {}
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Increment(uint64_t n = 1) {
    stripes_[internal::ThreadStripe()].value.fetch_add(n, std::memory_order_relaxed);
  }
  // The sum of all increments so far.
  uint64_t Value() const;

 private:
  std::array<internal::PaddedU64, internal::kStripes> stripes_;
};

// A value that goes up and down. Thread-safe and lock-free.
class Gauge {
 public:
  struct Config {};
  explicit Gauge(const Config& = {}) {}
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double d) { value_.fetch_add(d, std::memory_order_relaxed); }
  void Increment() { Add(1.0); }
  void Decrement() { Add(-1.0); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets chosen at registration. Thread-safe
// and lock-free (striped per thread like Counter: kStripes x (buckets + 2)
// 8-byte slots, rounded up to cache lines; 1.5 KiB with the default buckets).
class Histogram {
 public:
  struct Config {
    // Upper bounds, strictly increasing and finite; +Inf is implicit.
    std::shared_ptr<const std::vector<double>> bounds;
  };
  // A consistent-enough copy: `count` is always the sum of `bucket_counts`.
  struct Snapshot {
    std::vector<uint64_t> bucket_counts;  // per bucket (not cumulative); last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };

  explicit Histogram(const Config& config);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Counts `value` (usually seconds) in the first bucket whose bound is >= value
  // (Prometheus' `le`). NaN lands in +Inf and makes the sum NaN.
  void Observe(double value);
  Snapshot Collect() const;
  const std::vector<double>& bounds() const { return *bounds_; }

 private:
  // One stripe holds the bucket counts then the sum's bits, padded to whole
  // cache lines, so no two stripes share a line.
  struct alignas(internal::kCacheLine) Line {
    std::atomic<uint64_t> slot[internal::kCacheLine / sizeof(uint64_t)];
  };
  static constexpr std::size_t kSlotsPerLine = internal::kCacheLine / sizeof(uint64_t);

  std::atomic<uint64_t>& Slot(std::size_t stripe, std::size_t i) const {
    return lines_[stripe * lines_per_stripe_ + i / kSlotsPerLine].slot[i % kSlotsPerLine];
  }

  std::shared_ptr<const std::vector<double>> bounds_;
  std::size_t lines_per_stripe_;
  std::unique_ptr<Line[]> lines_;
};

// Bucket helpers (seconds). Both return strictly increasing bounds.
// {start, start*factor, ...}, `count` bounds; start > 0, factor > 1, count >= 1.
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// {start, start+width, ...}, `count` bounds; width > 0, count >= 1.
std::vector<double> LinearBuckets(double start, double width, int count);
// Latency buckets from 100µs to 10s, suitable for request handling.
std::vector<double> DefaultLatencyBuckets();

namespace internal {

// Type-erased family, used by the Registry to render and compare definitions.
class FamilyBase {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> label_names)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(type),
        label_names_(std::move(label_names)) {}
  virtual ~FamilyBase() = default;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  Type type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Appends HELP, TYPE and every sample, in a deterministic order. Appends
  // nothing when the family has no samples.
  virtual void Render(std::string& out) const = 0;

 private:
  const std::string name_;
  const std::string help_;
  const Type type_;
  const std::vector<std::string> label_names_;
};

}  // namespace internal

// A metric with a fixed set of label names; one child metric per distinct
// tuple of label values. Thread-safe. Owned by the Registry.
template <typename M>
class Family final : public internal::FamilyBase {
 public:
  // Returns the child for `label_values` (one per label name, in order),
  // creating it on first use. The pointer is stable for the registry's
  // lifetime: cache it. Takes a mutex; the returned metric is lock-free.
  // Invalid UTF-8 in values is replaced by U+FFFD. A wrong number of values is
  // a programming error and aborts the process with a message.
  M* WithLabels(std::initializer_list<std::string_view> label_values) {
    return WithLabels(std::span<const std::string_view>(label_values.begin(), label_values.size()));
  }
  M* WithLabels(std::span<const std::string_view> label_values);
  M* WithLabels(std::span<const std::string> label_values);

  // Constructed by the Registry only.
  Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
         typename M::Config config)
      : FamilyBase(std::move(name), std::move(help), type, std::move(label_names)),
        config_(std::move(config)) {}

  void Render(std::string& out) const override;
  const typename M::Config& config() const { return config_; }

 private:
  M* Get(std::vector<std::string> label_values);

  const typename M::Config config_;
  mutable absl::Mutex mu_;
  // std::map: stable pointers and a sorted, deterministic render order.
  std::map<std::vector<std::string>, std::unique_ptr<M>> children_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// One sample of a labelled callback gauge.
struct LabelledValue {
  std::vector<std::string> label_values;
  double value = 0;
};

class Registry;

// Keeps a callback gauge registered. Destroying (or Reset()ting) it removes the
// gauge from the registry and waits for a running call of the callback to
// finish, so the callback never runs after that. Move-only. Must not outlive
// the Registry. Not thread-safe itself (one owner).
class CallbackHandle {
 public:
  CallbackHandle() = default;
  CallbackHandle(CallbackHandle&& other) noexcept;
  CallbackHandle& operator=(CallbackHandle&& other) noexcept;
  ~CallbackHandle() { Reset(); }

  void Reset();

 private:
  friend class Registry;
  CallbackHandle(Registry* registry, std::string name)
      : registry_(registry), name_(std::move(name)) {}

  Registry* registry_ = nullptr;
  std::string name_;
};

// Owns metric families and renders them. Not a singleton: the server owns one
// and passes it by reference. Thread-safe.
//
// Registration rules (violations return InvalidArgument):
//   - metric names match [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in "_total";
//   - label names match [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", are
//     unique, and histograms may not use "le";
//   - histogram bounds are finite and strictly increasing (a trailing +Inf is
//     dropped), at least one.
// Registering a name again with the same type, labels (and bounds) returns the
// existing family; with a different definition, or where the sample names
// would collide with another family's (e.g. gauge "x_count" and histogram
// "x"), it returns AlreadyExists.
class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  absl::StatusOr<CounterFamily*> AddCounterFamily(std::string_view name, std::string_view help,
                                                  std::vector<std::string> label_names);
  absl::StatusOr<GaugeFamily*> AddGaugeFamily(std::string_view name, std::string_view help,
                                              std::vector<std::string> label_names);
  absl::StatusOr<HistogramFamily*> AddHistogramFamily(std::string_view name, std::string_view help,
                                                      std::vector<std::string> label_names,
                                                      std::vector<double> bounds);

  // Unlabelled shorthands.
  absl::StatusOr<Counter*> AddCounter(std::string_view name, std::string_view help);
  absl::StatusOr<Gauge*> AddGauge(std::string_view name, std::string_view help);
  absl::StatusOr<Histogram*> AddHistogram(std::string_view name, std::string_view help,
                                          std::vector<double> bounds);

  // A gauge whose value is read from `callback` at each Render, for values
  // owned elsewhere. The callback runs on the rendering thread, must be
  // thread-safe, fast, and must not call into this registry. A name that is
  // already registered returns AlreadyExists.
  [[nodiscard]] absl::StatusOr<CallbackHandle> AddCallbackGauge(std::string_view name,
                                                                std::string_view help,
                                                                std::function<double()> callback);
  // A counter read from `callback` at each Render, for monotonic counts kept
  // elsewhere (e.g. by a library). Same rules as AddCallbackGauge; the name
  // must end in "_total".
  [[nodiscard]] absl::StatusOr<CallbackHandle> AddCallbackCounter(std::string_view name,
                                                                  std::string_view help,
                                                                  std::function<double()> callback);
  // Labelled variant: the callback returns any number of samples. Samples are
  // rendered sorted by label values; a sample with the wrong number of label
  // values, or a duplicate, is dropped and reported in a "# " comment line.
  [[nodiscard]] absl::StatusOr<CallbackHandle> AddCallbackGaugeFamily(
      std::string_view name, std::string_view help, std::vector<std::string> label_names,
      std::function<std::vector<LabelledValue>()> callback);

  // The exposition text (format 0.0.4), families sorted by name.
  std::string Render() const;

 private:
  friend class CallbackHandle;
  class CallbackFamily;

  absl::StatusOr<CallbackHandle> AddCallbackFamily(
      std::string_view name, std::string_view help, internal::FamilyBase::Type type,
      std::vector<std::string> label_names, std::function<std::vector<LabelledValue>()> callback);
  template <typename M>
  absl::StatusOr<Family<M>*> AddFamily(std::string_view name, std::string_view help,
                                       std::vector<std::string> label_names,
                                       internal::FamilyBase::Type type, typename M::Config config);
  absl::Status CheckCollisions(const std::string& name, internal::FamilyBase::Type type) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveCallback(const std::string& name);

  mutable absl::Mutex mu_;
  // shared_ptr so Render can work on a snapshot without holding mu_ while
  // callbacks run, and a removed callback family outlives a render using it.
  std::map<std::string, std::shared_ptr<internal::FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// Observes the seconds from construction to destruction (steady clock) into a
// histogram, e.g. `obs::ScopedTimer timer(commit_seconds);`. Confined to one
// thread; borrows the histogram.
class ScopedTimer {
 public:
  explicit ScopedTimer(Histogram* histogram)
      : histogram_(histogram), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() {
    if (histogram_ != nullptr) histogram_->Observe(Elapsed());
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

  // Seconds since construction.
  double Elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  // Do not observe anything (e.g. on an error path counted elsewhere).
  void Cancel() { histogram_ = nullptr; }

 private:
  Histogram* histogram_;
  std::chrono::steady_clock::time_point start_;
};

// Registers `quell_build_info{version="..."} 1`. Extra labels (e.g.
// {"revision", "abc123"}) are appended in the order given.
absl::Status AddBuildInfo(Registry& registry, std::string_view version,
                          std::vector<std::pair<std::string, std::string>> extra_labels = {});

// Validation helpers, exposed for tests and for other exporters.
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

}  // namespace quell::obs

#endif  // QUELL_OBS_METRICS_H_
