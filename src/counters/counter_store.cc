#include "counters/counter_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/time.h"
#include "counters/internal/floor_div.h"

namespace quell::counters {
namespace {

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<FieldRef> FieldRef::Parse(std::string_view text) {
  FieldRef f;
  if (text.empty()) return f;
  if (text == "entity") {
    f.kind = Kind::kEntity;
    return f;
  }
  constexpr std::string_view kAttrs = "attrs.";
  if (text.size() > kAttrs.size() && text.substr(0, kAttrs.size()) == kAttrs) {
    f.kind = Kind::kAttr;
    f.attr = std::string(text.substr(kAttrs.size()));
    return f;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("field must be \"entity\" or \"attrs.<name>\", got \"", AV(text), "\""));
}

WindowGeometry WindowGeometry::Of(absl::Duration window, int buckets_per_window) {
  WindowGeometry g;
  g.window = window;
  const int64_t window_us = absl::ToInt64Microseconds(window);
  g.width_us = std::max<int64_t>(1000, window_us / std::max(1, buckets_per_window));
  g.buckets = std::max<int64_t>(1, (window_us + g.width_us - 1) / g.width_us);
  return g;
}

int64_t WindowGeometry::BucketOf(absl::Time t) const {
  return internal::FloorDiv(absl::ToUnixMicros(t), width_us);
}

absl::StatusOr<CounterSet> CounterSet::Create(std::vector<CounterSpec> specs, TimeOptions options) {
  if (options.buckets_per_window < 1 || options.buckets_per_window > 3600) {
    return absl::InvalidArgumentError("buckets_per_window must be in 1..3600");
  }
  if (options.max_lateness < absl::ZeroDuration() ||
      options.max_future_skew < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_lateness and max_future_skew must be >= 0");
  }
  CounterSet set;
  set.options_ = options;
  for (size_t i = 0; i < specs.size(); ++i) {
    const CounterSpec& s = specs[i];
    auto fail = [&](std::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("counter \"", s.name, "\": ", AV(why)));
    };
    if (!ValidName(s.name)) return fail("name must match [A-Za-z0-9_.-]{1,64}");
    if (s.on.empty()) return fail("`on` (event type) is required");
    if (!set.by_name_.emplace(s.name, static_cast<int>(i)).second) return fail("duplicate name");
    auto key = FieldRef::Parse(s.key);
    if (!key.ok()) return fail(SV(key.status().message()));
    if (key->kind == FieldRef::Kind::kNone) return fail("`key` is required");
    auto distinct = FieldRef::Parse(s.distinct);
    if (!distinct.ok()) return fail(SV(distinct.status().message()));
    if (s.windows.empty()) return fail("at least one window is required");
    std::vector<WindowGeometry> geometry;
    absl::Duration longest = absl::ZeroDuration();
    for (absl::Duration w : s.windows) {
      if (w <= absl::ZeroDuration() || w > absl::Hours(24 * 366)) {  // as policy_set.cc
        return fail("windows must be in (0, 366d]");
      }
      if (std::count(s.windows.begin(), s.windows.end(), w) > 1) return fail("duplicate window");
      geometry.push_back(WindowGeometry::Of(w, options.buckets_per_window));
      longest = std::max(longest, w);
    }
    set.key_fields_.push_back(*std::move(key));
    set.distinct_fields_.push_back(*std::move(distinct));
    set.geometry_.push_back(std::move(geometry));
    set.longest_.push_back(longest);
    set.by_event_[s.on].push_back(static_cast<int>(i));
  }
  set.specs_ = std::move(specs);
  return set;
}

int CounterSet::Find(std::string_view name) const {
  auto it = by_name_.find(AV(name));
  return it == by_name_.end() ? -1 : it->second;
}

int CounterSet::FindWindow(int counter, absl::Duration window) const {
  const auto& windows = specs_[counter].windows;
  for (size_t i = 0; i < windows.size(); ++i) {
    if (windows[i] == window) return static_cast<int>(i);
  }
  return -1;
}

absl::Span<const int> CounterSet::ForEvent(std::string_view event_type) const {
  auto it = by_event_.find(AV(event_type));
  if (it == by_event_.end()) return {};
  return it->second;
}

std::string_view RecordOutcomeName(RecordOutcome outcome) {
  switch (outcome) {
    case RecordOutcome::kCounted:
      return "counted";
    case RecordOutcome::kTooLate:
      return "too_late";
    case RecordOutcome::kTooEarly:
      return "too_early";
    case RecordOutcome::kInvalid:
      return "invalid";
  }
  return "invalid";
}

namespace internal {

RecordOutcome Classify(const CounterSet& set, const Observation& o, absl::Time now) {
  if (o.counter < 0 || o.counter >= set.size() || o.key.empty()) return RecordOutcome::kInvalid;
  if (set.spec(o.counter).is_distinct() == o.value.empty()) return RecordOutcome::kInvalid;
  if (o.at < now - set.options().max_lateness) return RecordOutcome::kTooLate;
  if (o.at > now + set.options().max_future_skew) return RecordOutcome::kTooEarly;
  return RecordOutcome::kCounted;
}

absl::StatusOr<int> ResolveRead(const CounterSet& set, std::string_view name, bool want_distinct,
                                absl::Duration window, int* counter) {
  *counter = set.Find(name);
  if (*counter < 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown counter \"", AV(name), "\""));
  }
  if (set.spec(*counter).is_distinct() != want_distinct) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter \"", AV(name), "\" is a ", want_distinct ? "count" : "distinct",
                     " counter; use ", want_distinct ? "count()" : "distinct()"));
  }
  int w = set.FindWindow(*counter, window);
  if (w < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter \"", AV(name), "\" has no window ", core::DurationString(window)));
  }
  return w;
}

absl::StatusOr<int> ResolveRead(const CounterSet& set, const ReadRequest& r) {
  if (r.counter < 0 || r.counter >= set.size()) {
    return absl::InvalidArgumentError("read of an unknown counter index");
  }
  int w = set.FindWindow(r.counter, r.window);
  if (w < 0) {
    return absl::InvalidArgumentError(absl::StrCat("counter \"", set.spec(r.counter).name,
                                                   "\" has no window ",
                                                   core::DurationString(r.window)));
  }
  return w;
}

void PendingSeen(const CounterSet& set, absl::Span<const Observation> pending, const ReadRequest& r,
                 int window, absl::Time now, std::vector<const Observation*>* seen) {
  if (pending.empty()) return;
  const WindowGeometry& g = set.geometry(r.counter)[window];
  const int64_t newest = g.BucketOf(now);
  const int64_t oldest = g.OldestBucket(now);
  for (const Observation& o : pending) {
    if (o.counter != r.counter || o.key != r.key) continue;
    if (Classify(set, o, now) != RecordOutcome::kCounted) continue;
    // Record() writes an observation in its own bucket: one ahead of `now` (within the
    // future skew) is not read until its time comes, one older than the window never.
    const int64_t b = g.BucketOf(o.at);
    if (b >= oldest && b <= newest) seen->push_back(&o);
  }
}

}  // namespace internal
}  // namespace quell::counters
