#include "safeguards/breakers.h"

#include <algorithm>
#include <cstdio>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace quell::safeguards {

std::string_view ScopeName(BreakerSpec::Scope s) {
  switch (s) {
    case BreakerSpec::Scope::kGlobal:
      return "global";
    case BreakerSpec::Scope::kPolicy:
      return "policy";
    case BreakerSpec::Scope::kAction:
      return "action";
    case BreakerSpec::Scope::kSource:
      return "source";
  }
  return "global";
}

namespace {
constexpr int kBucketsPerWindow = 16;
constexpr int64_t kMaxBuckets = 20000;

int64_t Div(absl::Duration num, absl::Duration den) {
  absl::Duration rem;
  return absl::IDivDuration(num, den, &rem);
}
// How many whole buckets cover `d` (rounded up).
int64_t Cover(absl::Duration d, absl::Duration bucket) {
  absl::Duration rem;
  const int64_t n = absl::IDivDuration(d, bucket, &rem);
  return rem > absl::ZeroDuration() ? n + 1 : n;
}
int64_t Idx(absl::Time t, absl::Duration bucket) { return Div(t - absl::UnixEpoch(), bucket); }
}  // namespace

bool BreakerBank::InScope(const BreakerSpec& spec, const DecisionKey& key) {
  switch (spec.scope) {
    case BreakerSpec::Scope::kGlobal:
      return true;
    case BreakerSpec::Scope::kPolicy:
      return key.policy == spec.scope_value;
    case BreakerSpec::Scope::kAction:
      return key.action == spec.scope_value;
    case BreakerSpec::Scope::kSource:
      return key.source == spec.scope_value;
  }
  return false;
}

void BreakerBank::Init(State& s) {
  absl::Duration window = std::max(s.spec.window, absl::Milliseconds(16));
  s.bucket = window / kBucketsPerWindow;
  if (s.spec.factor > 0 && s.spec.baseline > window) {
    // Keep the whole baseline in at most kMaxBuckets buckets.
    s.bucket = std::max(s.bucket, s.spec.baseline / kMaxBuckets);
  }
  s.buckets.clear();
  s.total = 0;
}

std::vector<std::string> BreakerBank::Configure(std::vector<BreakerSpec> specs) {
  std::map<std::string, State, std::less<>> next;
  std::vector<std::string> fresh;
  for (BreakerSpec& spec : specs) {
    State s;
    auto it = breakers_.find(spec.name);
    // A new limit keeps the counts; a new shape or scope makes them another breaker's.
    const bool same_shape =
        it != breakers_.end() && it->second.spec.window == spec.window &&
        it->second.spec.baseline == spec.baseline && it->second.spec.factor == spec.factor &&
        it->second.spec.scope == spec.scope && it->second.spec.scope_value == spec.scope_value;
    if (it != breakers_.end()) s = std::move(it->second);
    s.spec = std::move(spec);
    if (!same_shape) {
      Init(s);
      fresh.push_back(s.spec.name);
    }
    std::string name = s.spec.name;
    next.emplace(std::move(name), std::move(s));
  }
  breakers_ = std::move(next);
  return fresh;
}

int64_t BreakerBank::KeepBuckets(const State& s) {
  absl::Duration keep = s.spec.window;
  if (s.spec.factor > 0) keep = std::max(keep, s.spec.baseline + s.spec.window);
  return Cover(keep, s.bucket) + 1;
}

void BreakerBank::Evict(State& s, int64_t now_idx) {
  const int64_t keep_buckets = KeepBuckets(s);
  while (!s.buckets.empty() && s.buckets.front().first <= now_idx - keep_buckets) {
    s.total -= s.buckets.front().second;
    s.buckets.pop_front();
  }
}

// The current (partial) bucket and the whole ones before it that cover the window: at
// least the window's decisions, and at most one bucket more. Counting only window/bucket
// buckets in all covered part of the window, and let up to twice the limit through when
// a burst straddled its start (worse with a relative breaker's wider buckets).
int64_t BreakerBank::WindowCount(const State& s, int64_t now_idx) {
  const int64_t n = std::max<int64_t>(1, Cover(s.spec.window, s.bucket));
  int64_t count = 0;
  for (auto it = s.buckets.rbegin(); it != s.buckets.rend() && it->first >= now_idx - n; ++it) {
    count += it->second;
  }
  return count;
}

BreakerBank::Outcome BreakerBank::Record(const DecisionKey& key, absl::Time now) {
  Outcome out;
  // Held by an open breaker: counted nowhere (it creates nothing).
  out.held_by = HeldBy(key);
  if (!out.held_by.empty()) return out;
  // Would this decision take a closed breaker past its limit? Then it opens that breaker
  // and is held, and so counted nowhere either; else it is counted in every breaker in
  // scope.
  std::vector<State*> in_scope;
  for (auto& [name, s] : breakers_) {
    if (!InScope(s.spec, key)) continue;
    in_scope.push_back(&s);
    const int64_t idx = Idx(now, s.bucket);
    Evict(s, idx);
    const int64_t count = WindowCount(s, idx) + 1;  // with this decision
    if (count <= s.spec.limit) continue;
    std::string why = absl::StrCat("decision ", count, " in ", absl::FormatDuration(s.spec.window),
                                   " over limit ", s.spec.limit);
    if (s.spec.factor > 0) {
      double windows = absl::FDivDuration(s.spec.baseline, s.spec.window);
      double avg = windows > 0 ? static_cast<double>(s.total + 1 - count) / windows : 0;
      if (static_cast<double>(count) <= s.spec.factor * avg) continue;
      absl::StrAppend(
          &why, absl::StrFormat(" and > %.3gx the trailing average %.3g", s.spec.factor, avg));
    }
    s.open = true;
    s.opened_at = now;
    s.opened_count = count - 1;  // this decision is held, not counted
    s.reason = std::move(why);
    out.opened.push_back(name);
    if (out.held_by.empty()) out.held_by = name;
  }
  if (!out.held_by.empty()) return out;
  for (State* s : in_scope) {
    const int64_t idx = Idx(now, s->bucket);
    if (!s->buckets.empty() && s->buckets.back().first == idx) {
      ++s->buckets.back().second;
    } else if (s->buckets.empty() || s->buckets.back().first < idx) {
      s->buckets.emplace_back(idx, 1);
    } else {
      ++s->buckets.back().second;  // the clock stepped back: count it in the newest bucket
    }
    ++s->total;
  }
  return out;
}

std::string BreakerBank::HeldBy(const DecisionKey& key) const {
  for (const auto& [name, s] : breakers_) {
    if (s.open && InScope(s.spec, key)) return name;
  }
  return "";
}

void BreakerBank::CountAt(State& s, absl::Time at) {
  const int64_t idx = Idx(at, s.bucket);
  const int64_t newest = s.buckets.empty() ? idx : std::max(idx, s.buckets.back().first);
  Evict(s, newest);
  if (idx <= newest - KeepBuckets(s)) return;  // older than anything kept
  // Another node's clock, or the feed's delay: `at` may fall before the newest bucket.
  auto it = s.buckets.end();
  while (it != s.buckets.begin() && std::prev(it)->first > idx) --it;
  if (it != s.buckets.begin() && std::prev(it)->first == idx) {
    ++std::prev(it)->second;
  } else {
    s.buckets.insert(it, {idx, 1});
  }
  ++s.total;
}

void BreakerBank::CountRemote(const DecisionKey& key, absl::Time at) {
  for (auto& [name, s] : breakers_) {
    if (!s.open && InScope(s.spec, key)) CountAt(s, at);
  }
}

void BreakerBank::CountIn(std::string_view name, const DecisionKey& key, absl::Time at) {
  auto it = breakers_.find(name);
  if (it != breakers_.end() && !it->second.open && InScope(it->second.spec, key)) {
    CountAt(it->second, at);
  }
}

bool BreakerBank::MayTrip(const DecisionKey& key, absl::Time now, int64_t more) const {
  for (const auto& [name, s] : breakers_) {
    if (s.open || !InScope(s.spec, key)) continue;
    if (WindowCount(s, Idx(now, s.bucket)) + 1 + more > s.spec.limit) return true;
  }
  return false;
}

bool BreakerBank::SetOpen(std::string_view name, bool open, absl::Time at, std::string reason,
                          int64_t count) {
  auto it = breakers_.find(name);
  if (it == breakers_.end()) return false;
  State& s = it->second;
  s.open = open;
  s.reason = std::move(reason);
  s.opened_at = open ? at : absl::InfinitePast();
  s.opened_count = open ? count : -1;
  if (!open) Init(s);
  return true;
}

BreakerStatus BreakerBank::ToStatus(const State& s, absl::Time now) {
  BreakerStatus st;
  st.spec = s.spec;
  st.open = s.open;
  st.opened_at = s.opened_at;
  st.reason = s.reason;
  // Open: the count it opened at (its window may hold decisions from before a reset
  // that a restart counted, or none after a reshape); else the window's.
  st.count = s.open && s.opened_count >= 0 ? s.opened_count : WindowCount(s, Idx(now, s.bucket));
  return st;
}

std::vector<BreakerStatus> BreakerBank::Status(absl::Time now) const {
  std::vector<BreakerStatus> out;
  for (const auto& [name, s] : breakers_) out.push_back(ToStatus(s, now));
  return out;
}

std::optional<BreakerStatus> BreakerBank::Find(std::string_view name, absl::Time now) const {
  auto it = breakers_.find(name);
  if (it == breakers_.end()) return std::nullopt;
  return ToStatus(it->second, now);
}

bool BreakerBank::any_open() const {
  for (const auto& [name, s] : breakers_) {
    if (s.open) return true;
  }
  return false;
}

}  // namespace quell::safeguards
