#include "obs/metrics.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "obs/internal/text.h"

namespace quell::obs {
namespace {

using Type = internal::FamilyBase::Type;

[[noreturn]] void Die(std::string_view what) {
  std::fprintf(stderr, "quell::obs: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

std::string_view TypeName(Type type) {
  switch (type) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

bool IsNameStart(char c, bool allow_colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
}

bool IsNameChar(char c, bool allow_colon) {
  return IsNameStart(c, allow_colon) || (c >= '0' && c <= '9');
}

bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty() || !IsNameStart(name[0], allow_colon)) return false;
  return std::all_of(name.begin() + 1, name.end(),
                     [&](char c) { return IsNameChar(c, allow_colon); });
}

// The sample names a family writes, which must not collide across families.
std::vector<std::string> SampleNames(const std::string& name, Type type) {
  if (type == Type::kHistogram) {
    return {name + "_bucket", name + "_sum", name + "_count"};
  }
  return {name};
}

void AppendHeader(std::string& out, const internal::FamilyBase& family) {
  out.append("# HELP ").append(family.name()).push_back(' ');
  internal::AppendEscapedHelp(out, family.help());
  out.append("\n# TYPE ").append(family.name()).push_back(' ');
  out.append(TypeName(family.type())).push_back('\n');
}

// Appends `name{a="x",b="y"[,extra="v"]} ` (or `name ` without labels).
void AppendSeries(std::string& out, std::string_view name, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, std::string_view extra_name = {},
                  std::string_view extra_value = {}) {
  out.append(name);
  if (!names.empty() || !extra_name.empty()) {
    out.push_back('{');
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (i > 0) out.push_back(',');
      out.append(names[i]).append("=\"");
      internal::AppendEscapedLabelValue(out, values[i]);
      out.push_back('"');
    }
    if (!extra_name.empty()) {
      if (!names.empty()) out.push_back(',');
      out.append(extra_name).append("=\"");
      internal::AppendEscapedLabelValue(out, extra_value);
      out.push_back('"');
    }
    out.push_back('}');
  }
  out.push_back(' ');
}

void RenderChild(std::string& out, const internal::FamilyBase& f,
                 const std::vector<std::string>& values, const Counter& c) {
  AppendSeries(out, f.name(), f.label_names(), values);
  internal::AppendUint(out, c.Value());
  out.push_back('\n');
}

void RenderChild(std::string& out, const internal::FamilyBase& f,
                 const std::vector<std::string>& values, const Gauge& g) {
  AppendSeries(out, f.name(), f.label_names(), values);
  internal::AppendPrometheusDouble(out, g.Value());
  out.push_back('\n');
}

void RenderChild(std::string& out, const internal::FamilyBase& f,
                 const std::vector<std::string>& values, const Histogram& h) {
  const Histogram::Snapshot snap = h.Collect();
  const std::string bucket = f.name() + "_bucket";
  std::string le;
  uint64_t cumulative = 0;
  for (std::size_t i = 0; i < snap.bucket_counts.size(); ++i) {
    cumulative += snap.bucket_counts[i];
    le.clear();
    if (i < h.bounds().size()) {
      internal::AppendPrometheusDouble(le, h.bounds()[i]);
    } else {
      le = "+Inf";
    }
    AppendSeries(out, bucket, f.label_names(), values, "le", le);
    internal::AppendUint(out, cumulative);
    out.push_back('\n');
  }
  AppendSeries(out, f.name() + "_sum", f.label_names(), values);
  internal::AppendPrometheusDouble(out, snap.sum);
  out.push_back('\n');
  AppendSeries(out, f.name() + "_count", f.label_names(), values);
  internal::AppendUint(out, snap.count);
  out.push_back('\n');
}

}  // namespace

// ---------------------------------------------------------------------------
// Metrics.

namespace internal {
std::size_t NextStripe() {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) % kStripes;
}
}  // namespace internal

uint64_t Counter::Value() const {
  uint64_t total = 0;
  for (const auto& s : stripes_) total += s.value.load(std::memory_order_relaxed);
  return total;
}

Histogram::Histogram(const Config& config)
    : bounds_(config.bounds ? config.bounds : std::make_shared<const std::vector<double>>()),
      // Buckets (bounds + +Inf), then the sum.
      lines_per_stripe_((bounds_->size() + 2 + kSlotsPerLine - 1) / kSlotsPerLine),
      lines_(std::make_unique<Line[]>(internal::kStripes * lines_per_stripe_)) {}

void Histogram::Observe(double value) {
  const std::vector<double>& b = *bounds_;
  const std::size_t bucket =
      std::isnan(value)
          ? b.size()
          : static_cast<std::size_t>(std::lower_bound(b.begin(), b.end(), value) - b.begin());
  const std::size_t stripe = internal::ThreadStripe();
  Slot(stripe, bucket).fetch_add(1, std::memory_order_relaxed);
  std::atomic<uint64_t>& sum = Slot(stripe, b.size() + 1);
  uint64_t old_bits = sum.load(std::memory_order_relaxed);
  while (!sum.compare_exchange_weak(
      old_bits, std::bit_cast<uint64_t>(std::bit_cast<double>(old_bits) + value),
      std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::Collect() const {
  const std::size_t buckets = bounds_->size() + 1;
  Snapshot snap;
  snap.bucket_counts.assign(buckets, 0);
  for (std::size_t s = 0; s < internal::kStripes; ++s) {
    for (std::size_t i = 0; i < buckets; ++i) {
      snap.bucket_counts[i] += Slot(s, i).load(std::memory_order_relaxed);
    }
    snap.sum += std::bit_cast<double>(Slot(s, buckets).load(std::memory_order_relaxed));
  }
  for (uint64_t c : snap.bucket_counts) snap.count += c;
  return snap;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  out.reserve(count > 0 ? static_cast<std::size_t>(count) : 0);
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  std::vector<double> out;
  out.reserve(count > 0 ? static_cast<std::size_t>(count) : 0);
  for (int i = 0; i < count; ++i) out.push_back(start + width * i);
  return out;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

// ---------------------------------------------------------------------------
// Families.

template <typename M>
M* Family<M>::WithLabels(std::span<const std::string_view> label_values) {
  if (label_values.size() != label_names().size()) {
    Die(absl::StrCat("metric ", name(), " has ", label_names().size(), " label(s) but ",
                     label_values.size(), " value(s) were given"));
  }
  std::vector<std::string> key(label_values.size());
  for (std::size_t i = 0; i < label_values.size(); ++i) {
    internal::AppendValidUtf8(key[i], label_values[i]);
  }
  return Get(std::move(key));
}

template <typename M>
M* Family<M>::WithLabels(std::span<const std::string> label_values) {
  std::vector<std::string_view> views(label_values.begin(), label_values.end());
  return WithLabels(std::span<const std::string_view>(views));
}

template <typename M>
M* Family<M>::Get(std::vector<std::string> label_values) {
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = children_.find(label_values);
    if (it != children_.end()) return it->second.get();
  }
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = children_.try_emplace(std::move(label_values));
  if (inserted) it->second = std::make_unique<M>(config_);
  return it->second.get();
}

template <typename M>
void Family<M>::Render(std::string& out) const {
  absl::ReaderMutexLock lock(&mu_);
  if (children_.empty()) return;
  AppendHeader(out, *this);
  for (const auto& [values, metric] : children_) RenderChild(out, *this, values, *metric);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// A gauge or counter family whose samples come from a callback at render time.
class Registry::CallbackFamily final : public internal::FamilyBase {
 public:
  CallbackFamily(std::string name, std::string help, Type type,
                 std::vector<std::string> label_names,
                 std::function<std::vector<LabelledValue>()> callback)
      : FamilyBase(std::move(name), std::move(help), type, std::move(label_names)),
        callback_(std::move(callback)) {}

  void Render(std::string& out) const override {
    std::vector<LabelledValue> samples;
    {
      absl::MutexLock lock(&mu_);
      if (!callback_) return;
      samples = callback_();
    }
    std::string dropped;
    std::vector<LabelledValue> valid;
    valid.reserve(samples.size());
    for (LabelledValue& s : samples) {
      if (s.label_values.size() != label_names().size()) {
        absl::StrAppend(&dropped, "# quell: dropped a sample of ", name(), " with ",
                        s.label_values.size(), " label value(s), want ", label_names().size(),
                        "\n");
        continue;
      }
      for (std::string& v : s.label_values) {
        if (!internal::IsValidUtf8(v)) {
          std::string fixed;
          internal::AppendValidUtf8(fixed, v);
          v = std::move(fixed);
        }
      }
      valid.push_back(std::move(s));
    }
    std::stable_sort(valid.begin(), valid.end(),
                     [](const LabelledValue& a, const LabelledValue& b) {
                       return a.label_values < b.label_values;
                     });
    std::string body;
    for (std::size_t i = 0; i < valid.size(); ++i) {
      if (i > 0 && valid[i].label_values == valid[i - 1].label_values) {
        absl::StrAppend(&dropped, "# quell: dropped a duplicate sample of ", name(), "\n");
        continue;
      }
      AppendSeries(body, name(), label_names(), valid[i].label_values);
      internal::AppendPrometheusDouble(body, valid[i].value);
      body.push_back('\n');
    }
    out.append(dropped);
    if (body.empty()) return;
    AppendHeader(out, *this);
    out.append(body);
  }

  // After this returns the callback is not running and never runs again.
  void Disable() {
    std::function<std::vector<LabelledValue>()> doomed;
    {
      absl::MutexLock lock(&mu_);
      doomed = std::move(callback_);
      callback_ = nullptr;
    }
    // `doomed` (and whatever it captured) is destroyed outside the lock.
  }

 private:
  mutable absl::Mutex mu_;
  std::function<std::vector<LabelledValue>()> callback_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// Callback handles.

CallbackHandle::CallbackHandle(CallbackHandle&& other) noexcept
    : registry_(std::exchange(other.registry_, nullptr)), name_(std::move(other.name_)) {}

CallbackHandle& CallbackHandle::operator=(CallbackHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    registry_ = std::exchange(other.registry_, nullptr);
    name_ = std::move(other.name_);
  }
  return *this;
}

void CallbackHandle::Reset() {
  if (registry_ != nullptr) {
    std::exchange(registry_, nullptr)->RemoveCallback(name_);
  }
}

// ---------------------------------------------------------------------------
// Registry.

bool IsValidMetricName(std::string_view name) { return IsValidName(name, /*allow_colon=*/true); }

bool IsValidLabelName(std::string_view name) {
  return IsValidName(name, /*allow_colon=*/false) && !name.starts_with("__");
}

namespace {

absl::Status ValidateDefinition(std::string_view name, Type type,
                                const std::vector<std::string>& label_names) {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid metric name \"", AV(name), "\": want [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  if (type == Type::kCounter && !name.ends_with("_total")) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter name \"", AV(name), "\" must end in _total"));
  }
  std::set<std::string_view> seen;
  for (const std::string& label : label_names) {
    if (!IsValidLabelName(label)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid label name \"", label, "\" for ", AV(name),
                       ": want [a-zA-Z_][a-zA-Z0-9_]* not starting with __"));
    }
    if (type == Type::kHistogram && label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", AV(name), " may not use the label name \"le\""));
    }
    if (!seen.insert(label).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate label name \"", label, "\" for ", AV(name)));
    }
  }
  return absl::OkStatus();
}

absl::Status NormaliseBounds(std::string_view name, std::vector<double>& bounds) {
  if (!bounds.empty() && bounds.back() == INFINITY) bounds.pop_back();
  if (bounds.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("histogram ", AV(name), " needs at least one finite bucket bound"));
  }
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", AV(name), ": bucket bounds must be finite"));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", AV(name), ": bucket bounds must be strictly increasing"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Registry::Registry() = default;
Registry::~Registry() = default;

absl::Status Registry::CheckCollisions(const std::string& name, Type type) const {
  const std::vector<std::string> mine = SampleNames(name, type);
  for (const auto& [other_name, family] : families_) {
    for (const std::string& theirs : SampleNames(other_name, family->type())) {
      if (std::find(mine.begin(), mine.end(), theirs) != mine.end()) {
        return absl::AlreadyExistsError(absl::StrCat("metric ", name, " would write samples named ",
                                                     theirs, ", which ", other_name,
                                                     " already writes"));
      }
    }
  }
  return absl::OkStatus();
}

template <typename M>
absl::StatusOr<Family<M>*> Registry::AddFamily(std::string_view name, std::string_view help,
                                               std::vector<std::string> label_names, Type type,
                                               typename M::Config config) {
  if (absl::Status s = ValidateDefinition(name, type, label_names); !s.ok()) return s;
  std::string help_text;
  internal::AppendValidUtf8(help_text, help);

  absl::MutexLock lock(&mu_);
  auto it = families_.find(std::string(name));
  if (it != families_.end()) {
    auto* existing = dynamic_cast<Family<M>*>(it->second.get());
    bool same =
        existing != nullptr && existing->type() == type && existing->label_names() == label_names;
    if constexpr (std::is_same_v<M, Histogram>) {
      same = same && *existing->config().bounds == *config.bounds;
    }
    if (!same) {
      return absl::AlreadyExistsError(absl::StrCat(
          "metric ", AV(name), " is already registered with another type, labels or buckets"));
    }
    return existing;
  }
  if (absl::Status s = CheckCollisions(std::string(name), type); !s.ok()) return s;
  auto family = std::make_shared<Family<M>>(std::string(name), std::move(help_text), type,
                                            std::move(label_names), std::move(config));
  Family<M>* raw = family.get();
  families_.emplace(std::string(name), std::move(family));
  return raw;
}

absl::StatusOr<CounterFamily*> Registry::AddCounterFamily(std::string_view name,
                                                          std::string_view help,
                                                          std::vector<std::string> label_names) {
  return AddFamily<Counter>(name, help, std::move(label_names), Type::kCounter, {});
}

absl::StatusOr<GaugeFamily*> Registry::AddGaugeFamily(std::string_view name, std::string_view help,
                                                      std::vector<std::string> label_names) {
  return AddFamily<Gauge>(name, help, std::move(label_names), Type::kGauge, {});
}

absl::StatusOr<HistogramFamily*> Registry::AddHistogramFamily(std::string_view name,
                                                              std::string_view help,
                                                              std::vector<std::string> label_names,
                                                              std::vector<double> bounds) {
  if (absl::Status s = NormaliseBounds(name, bounds); !s.ok()) return s;
  Histogram::Config config{std::make_shared<const std::vector<double>>(std::move(bounds))};
  return AddFamily<Histogram>(name, help, std::move(label_names), Type::kHistogram,
                              std::move(config));
}

absl::StatusOr<Counter*> Registry::AddCounter(std::string_view name, std::string_view help) {
  absl::StatusOr<CounterFamily*> family = AddCounterFamily(name, help, {});
  if (!family.ok()) return family.status();
  return (*family)->WithLabels({});
}

absl::StatusOr<Gauge*> Registry::AddGauge(std::string_view name, std::string_view help) {
  absl::StatusOr<GaugeFamily*> family = AddGaugeFamily(name, help, {});
  if (!family.ok()) return family.status();
  return (*family)->WithLabels({});
}

absl::StatusOr<Histogram*> Registry::AddHistogram(std::string_view name, std::string_view help,
                                                  std::vector<double> bounds) {
  absl::StatusOr<HistogramFamily*> family = AddHistogramFamily(name, help, {}, std::move(bounds));
  if (!family.ok()) return family.status();
  return (*family)->WithLabels({});
}

absl::StatusOr<CallbackHandle> Registry::AddCallbackGauge(std::string_view name,
                                                          std::string_view help,
                                                          std::function<double()> callback) {
  if (!callback) return absl::InvalidArgumentError("callback gauge needs a callback");
  return AddCallbackGaugeFamily(name, help, {},
                                [cb = std::move(callback)]() -> std::vector<LabelledValue> {
                                  return {LabelledValue{{}, cb()}};
                                });
}

absl::StatusOr<CallbackHandle> Registry::AddCallbackCounter(std::string_view name,
                                                            std::string_view help,
                                                            std::function<double()> callback) {
  if (!callback) return absl::InvalidArgumentError("callback counter needs a callback");
  return AddCallbackFamily(name, help, Type::kCounter, {},
                           [cb = std::move(callback)]() -> std::vector<LabelledValue> {
                             return {LabelledValue{{}, cb()}};
                           });
}

absl::StatusOr<CallbackHandle> Registry::AddCallbackGaugeFamily(
    std::string_view name, std::string_view help, std::vector<std::string> label_names,
    std::function<std::vector<LabelledValue>()> callback) {
  return AddCallbackFamily(name, help, Type::kGauge, std::move(label_names), std::move(callback));
}

absl::StatusOr<CallbackHandle> Registry::AddCallbackFamily(
    std::string_view name, std::string_view help, Type type, std::vector<std::string> label_names,
    std::function<std::vector<LabelledValue>()> callback) {
  if (!callback) return absl::InvalidArgumentError("callback metric needs a callback");
  if (absl::Status s = ValidateDefinition(name, type, label_names); !s.ok()) return s;
  std::string help_text;
  internal::AppendValidUtf8(help_text, help);

  absl::MutexLock lock(&mu_);
  if (families_.contains(std::string(name))) {
    return absl::AlreadyExistsError(absl::StrCat("metric ", AV(name), " is already registered"));
  }
  if (absl::Status s = CheckCollisions(std::string(name), type); !s.ok()) return s;
  families_.emplace(std::string(name),
                    std::make_shared<CallbackFamily>(std::string(name), std::move(help_text), type,
                                                     std::move(label_names), std::move(callback)));
  return CallbackHandle(this, std::string(name));
}

void Registry::RemoveCallback(const std::string& name) {
  std::shared_ptr<internal::FamilyBase> family;
  {
    absl::MutexLock lock(&mu_);
    auto it = families_.find(name);
    if (it == families_.end() || dynamic_cast<CallbackFamily*>(it->second.get()) == nullptr) {
      return;
    }
    family = std::move(it->second);
    families_.erase(it);
  }
  // A render may still hold `family`; Disable waits for its callback to return.
  static_cast<CallbackFamily*>(family.get())->Disable();
}

std::string Registry::Render() const {
  std::vector<std::shared_ptr<internal::FamilyBase>> families;
  {
    absl::ReaderMutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& [name, family] : families_) families.push_back(family);
  }
  std::string out;
  for (const auto& family : families) family->Render(out);
  return out;
}

absl::Status AddBuildInfo(Registry& registry, std::string_view version,
                          std::vector<std::pair<std::string, std::string>> extra_labels) {
  std::vector<std::string> names = {"version"};
  std::vector<std::string> values = {std::string(version)};
  for (auto& [n, v] : extra_labels) {
    names.push_back(std::move(n));
    values.push_back(std::move(v));
  }
  absl::StatusOr<GaugeFamily*> family = registry.AddGaugeFamily(
      "quell_build_info", "A metric with a constant 1 value labelled by the build's version.",
      std::move(names));
  if (!family.ok()) return family.status();
  (*family)->WithLabels(std::span<const std::string>(values))->Set(1);
  return absl::OkStatus();
}

}  // namespace quell::obs
