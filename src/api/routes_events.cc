// POST /v1/events (SPEC): one event object or {"events": [...]} (at most
// ApiOptions::max_events_batch, past it 413). Each item is validated on its own; an event
// older than the lateness bound (counters.lateness) or ahead of the clock by more than
// the future skew is rejected with its reason. Accepted events are recorded in every
// counter declared `on:` their type (one batched Record for the request), then evaluated
// against the `on: <type>` policies with an Environment whose count()/distinct() read the
// counters. A batch is recorded whole before its rules run, so an event's rules see the
// counts of the entire batch (the Redis backend needs one round trip per batch, not per
// event). Each matching policy makes one detection (source "rule:<policy>", id
// "<policy>:<hash of the event>" so a replayed event is a duplicate, type = the event
// type, score 1, observed_at = the event's `at`), applied with the external detections'
// path: workflow::ApplyDetections with safeguards, one ledger step for the batch.
//
// Counter store failures (Redis down or slow): counters.on_error fail_open -> rules read
// 0, quell_velocity_store_errors_total and quell_velocity_fail_open_total count it, and a
// log line (at most one per 10 s) says so; fail_closed -> the request is answered 503 with
// Retry-After and no rule runs, nothing is decided. Counting is at least once: a store that
// failed after taking the batch's writes (the read failing, or a reply lost) has counted
// them, and the retry counts them again. The store reconnects by itself.
#include <atomic>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/errors.h"
#include "api/event_codec.h"
#include "api/internal/counter_holder.h"
#include "api/internal/live_environment.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "engine/engine.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "workflow/decisions.h"

namespace quell::api::internal {
namespace {

struct EventItem {
  size_t index = 0;
  bool ok = false;
  // rejected: the field at fault as a request path ("events[2].at"; "events[2]" or "" for
  // the event itself) and what is wrong with it
  std::string field, error;
  // rejected: stable code ("invalid", "too_late", "too_early", "unknown_type")
  std::string reason;
  ParsedEvent parsed;
  // Counter outcomes of this event.
  int counted = 0, too_late = 0, too_early = 0, invalid = 0, missing = 0;
  bool unavailable = false;

  const engine::Event& event() const { return parsed.event; }
};

struct EventState {
  explicit EventState(CounterHolder* holder) : counters(*holder) {}
  CounterHolder& counters;  // the Context's
  obs::CounterFamily* events_total = nullptr;
  obs::Counter* store_errors = nullptr;
  obs::Counter* fail_open = nullptr;
  std::vector<obs::CallbackHandle> handles;
  std::atomic<int64_t> last_log_us{0};
  std::atomic<int64_t> suppressed{0};
};

uint64_t Fnv1a(std::string_view s, uint64_t h) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string EventHash(const EventItem& item) {
  uint64_t h = 14695981039346656037ull;
  h = Fnv1a(item.event().type, h);
  h = Fnv1a(std::string_view("\0", 1), h);
  h = Fnv1a(item.event().entity.str(), h);
  h = Fnv1a(std::string_view("\0", 1), h);
  h = Fnv1a(absl::StrCat(absl::ToUnixMicros(item.event().at)), h);
  h = Fnv1a(std::string_view("\0", 1), h);
  h = Fnv1a(item.event().id.empty() ? item.event().attrs_json : item.event().id, h);
  char buf[17];
  snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf, 16);
}

// `batch_index` < 0 for a single event (no "events[i]." prefix in errors); the prefix is
// only formatted for a rejected item.
void ReadItem(const rapidjson::Value& v, int64_t batch_index, absl::Time now,
              absl::Duration lateness, EventItem* item) {
  std::optional<EventError> e = ReadEvent(v, now, lateness, &item->parsed);
  if (!e) {
    item->ok = true;
    return;
  }
  item->field = batch_index < 0    ? e->field
                : e->field.empty() ? absl::StrCat("events[", batch_index, "]")
                                   : absl::StrCat("events[", batch_index, "].", e->field);
  item->error = std::move(e->message);
  item->reason = std::move(e->reason);
}

// {"index", "status": "rejected", "reason", "error": {"code", "message", "details"}}: the
// error as a detection's (SPEC: one error shape), its message "<field>: <what>".
std::string RejectedReply(const EventItem& item) {
  const std::string message =
      absl::StrCat(item.field.empty() ? "event" : item.field, ": ", item.error);
  const std::string error = ErrorJson(ApiError::InvalidArgument(
      message, {FieldError{.field = item.field, .message = item.error}}));  // {"error":{...}}
  return absl::StrCat("{\"index\":", item.index, ",\"status\":\"rejected\",\"reason\":\"",
                      item.reason, "\",", absl::string_view(error).substr(1, error.size() - 2),
                      "}");
}

void AppendOutcomesJson(const EventItem& item, std::string* out) {
  absl::StrAppend(out, "{\"counted\":", item.counted);
  if (item.too_late) absl::StrAppend(out, ",\"too_late\":", item.too_late);
  if (item.too_early) absl::StrAppend(out, ",\"too_early\":", item.too_early);
  if (item.invalid) absl::StrAppend(out, ",\"invalid\":", item.invalid);
  if (item.missing) absl::StrAppend(out, ",\"missing_key\":", item.missing);
  if (item.unavailable) *out += ",\"unavailable\":true";
  *out += '}';
}

std::string EvidenceJson(const EventItem& item, std::string_view policy) {
  std::string out = "{\"policy\":";
  core::AppendJsonString(policy, &out);
  out += ",\"event\":{\"type\":";
  core::AppendJsonString(item.event().type, &out);
  out += ",\"entity\":";
  core::AppendJsonString(item.event().entity.str(), &out);
  absl::StrAppend(&out, ",\"at\":\"", core::FormatRfc3339(item.event().at),
                  "\",\"attrs\":", item.event().attrs_json, "}}");
  return out;
}

void LogStoreError(EventState& st, Context& ctx, const absl::Status& status, bool fail_closed) {
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  int64_t last = st.last_log_us.load(std::memory_order_relaxed);
  if (now_us - last < 10'000'000 ||
      !st.last_log_us.compare_exchange_strong(last, now_us, std::memory_order_relaxed)) {
    st.suppressed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (ctx.deps.logger == nullptr) return;
  ctx.deps.logger->Warn(fail_closed ? "counter store unavailable: events rejected (fail_closed)"
                                    : "counter store unavailable: rules read zero (fail_open)",
                        {{"error", std::string(status.message())},
                         {"suppressed", absl::StrCat(st.suppressed.exchange(0))}});
}

void CountEvents(EventState& st, const absl::flat_hash_set<std::string>& declared,
                 const std::vector<EventItem>& items, bool all_unavailable) {
  if (st.events_total == nullptr) return;
  std::map<std::pair<std::string_view, std::string_view>, uint64_t> n;
  for (const EventItem& it : items) {
    std::string_view type =
        !it.event().type.empty() && declared.contains(quell::AV(it.event().type))
            ? std::string_view(it.event().type)
            : "other";
    std::string_view status = all_unavailable ? "unavailable" : it.ok ? "accepted" : "rejected";
    ++n[{type, status}];
  }
  for (const auto& [k, v] : n) st.events_total->WithLabels({k.first, k.second})->Increment(v);
}

// An Environment for remote counters: count()/distinct() answer from a cache filled by
// batched reads; a miss answers 0 and is queued, and the caller fetches the queue in one
// Read() and evaluates again. Other functions go to `base`. One request's thread only.
class BatchedCounterEnvironment final : public policy::ForwardingEnvironment {
 public:
  BatchedCounterEnvironment(LiveEnvironment* base, const counters::CounterSet* set)
      : ForwardingEnvironment(*base), set_(set) {}

  int64_t Count(std::string_view counter, std::string_view key, absl::Duration window) override {
    return Lookup(counter, key, window, false);
  }
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration window) override {
    return Lookup(counter, key, window, true);
  }

  bool missed() const { return missed_; }
  void ClearMissed() { missed_ = false; }

  //! Reads every queued counter in one batch into the cache.
  absl::Status Fetch(counters::CounterStore& store, absl::Time now) {
    std::vector<counters::ReadRequest> reads;
    reads.reserve(pending_.size());
    for (const Pending& p : pending_) reads.push_back({p.counter, p.key, p.window});
    std::vector<int64_t> values(reads.size());
    absl::Status s = store.Read(reads, now, absl::MakeSpan(values));
    if (!s.ok()) return s;
    for (size_t i = 0; i < pending_.size(); ++i) cache_[pending_[i].cache_key] = values[i];
    pending_.clear();
    return absl::OkStatus();
  }
  //! The store failed: every queued read answers 0 from now on.
  void ZeroPending() {
    for (const Pending& p : pending_) cache_[p.cache_key] = 0;
    pending_.clear();
  }

 private:
  struct Pending {
    std::string cache_key;
    int counter;
    std::string key;
    absl::Duration window;
  };

  int64_t Lookup(std::string_view name, std::string_view key, absl::Duration window,
                 bool distinct) {
    std::string ck =
        absl::StrCat(AV(name), "\x1f", AV(key), "\x1f", absl::ToInt64Microseconds(window));
    auto it = cache_.find(ck);
    if (it != cache_.end()) return it->second;
    const int c = set_->Find(name);
    if (c < 0 || set_->spec(c).is_distinct() != distinct || set_->FindWindow(c, window) < 0) {
      cache_[ck] = 0;  // not a readable counter: 0, as the live environment answers
      return 0;
    }
    missed_ = true;
    if (queued_.insert(ck).second) pending_.push_back({ck, c, std::string(key), window});
    return 0;
  }

  const counters::CounterSet* set_;
  absl::flat_hash_map<std::string, int64_t> cache_;
  absl::flat_hash_set<std::string> queued_;
  std::vector<Pending> pending_;
  bool missed_ = false;
};

void Submit(Context& ctx, PolicyHolder& policies, EventState& st, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  BodyItems body;
  if (auto e = ReadBodyItems(doc, "events", "an event",
                             static_cast<size_t>(ctx.options.max_events_batch), &body)) {
    return call.Fail(*e);
  }
  const absl::Time now = ctx.deps.clock->Now();
  const CounterOptions& copt = st.counters.options();
  std::vector<EventItem> items(body.values.size());
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].index = i;
    ReadItem(*body.values[i], body.batch ? static_cast<int64_t>(i) : -1, now, copt.lateness,
             &items[i]);
  }

  ctx.OffLoop(std::move(call), [&ctx, &policies, &st, items = std::move(items), now,
                                batch = body.batch](Call& call) mutable {
    auto set = policies.Current();
    const bool fail_closed = st.counters.options().fail_closed;
    auto declared = EventTypesOf(*set);
    // An event of a type that no counter or policy of the active set is on would be
    // accepted and change nothing: a misspelt type ("plays") must not look as if it
    // worked. Rejected (unknown_type), as a field error is.
    for (EventItem& it : items) {
      if (!it.ok || declared.contains(quell::AV(it.event().type))) continue;
      it.ok = false;
      it.reason = "unknown_type";
      it.field = batch ? absl::StrCat("events[", it.index, "].type") : "type";
      it.error = absl::StrCat("no counter or policy of the active policy set (version ",
                              set->version(), ") is on \"", it.event().type, "\"");
    }
    auto store_or = st.counters.For(set);
    std::shared_ptr<counters::CounterStore> store;
    if (store_or.ok()) {
      store = *std::move(store_or);
    } else if (ctx.deps.logger != nullptr) {
      ctx.deps.logger->Warn("counters of the active policy set not usable",
                            {{"error", std::string(store_or.status().message())}});
    }
    auto store_failed = [&](const absl::Status& s) {
      if (st.store_errors) st.store_errors->Increment();
      LogStoreError(st, ctx, s, fail_closed);
      if (fail_closed) {
        CountEvents(st, declared, items, /*all_unavailable=*/true);
        call.Fail(ApiError::Unavailable("counter store unavailable; retry later", 1));
        return true;
      }
      if (st.fail_open) st.fail_open->Increment();
      return false;
    };

    // 1. Record every accepted event in its counters, in one batch.
    bool unavailable = false;
    if (store != nullptr) {
      const counters::CounterSet& cs = store->counters();
      std::vector<counters::Observation> obs;
      std::vector<size_t> owner;
      for (EventItem& it : items) {
        if (!it.ok) continue;
        it.missing += AppendObservations(cs, it.parsed, now, &obs);
        owner.resize(obs.size(), it.index);
      }
      if (!obs.empty()) {
        std::vector<counters::RecordOutcome> outcomes(obs.size());
        auto rec = store->Record(obs, now, absl::MakeSpan(outcomes));
        if (!rec.ok()) {
          if (store_failed(rec.status())) return;
          unavailable = true;
          for (size_t k = 0; k < obs.size(); ++k) items[owner[k]].unavailable = true;
        } else {
          for (size_t k = 0; k < obs.size(); ++k) {
            EventItem& it = items[owner[k]];
            switch (outcomes[k]) {
              case counters::RecordOutcome::kCounted:
                ++it.counted;
                break;
              case counters::RecordOutcome::kTooLate:
                ++it.too_late;
                break;
              case counters::RecordOutcome::kTooEarly:
                ++it.too_early;
                break;
              case counters::RecordOutcome::kInvalid:
                ++it.invalid;
                break;
            }
          }
        }
      }
    }

    // 2. Evaluate the `on: <type>` policies; each matching policy makes one detection.
    LiveEnvironment env(ctx.deps.index, &ctx.deps.ledger->store(), now);
    env.set_lists(ctx.safeguards);
    env.set_counters(unavailable ? nullptr : store.get());
    std::vector<engine::Evaluation> evals(items.size());
    std::vector<size_t> todo;
    for (const EventItem& it : items) {
      if (it.ok && declared.contains(quell::AV(it.event().type))) todo.push_back(it.index);
    }
    if (store != nullptr && !unavailable && st.counters.options().redis) {
      // Remote counters: evaluate, read every counter the rules asked for in one
      // batched round trip, evaluate again those that missed (a rule may read more
      // after a first value: `count(a) > 0 && count(b) > 0` takes a round per read).
      // It stopped after 8 rounds and kept the last evaluation, whose unread counters
      // read 0: a rule chaining 9 counts never fired on Redis and did in memory. Now up
      // to kMaxRounds, past which the event's counters are "unavailable", as on an
      // outage, not silently 0.
      constexpr int kMaxRounds = 64;
      BatchedCounterEnvironment batched(&env, &store->counters());
      std::vector<size_t> round = todo;
      for (int r = 0; !round.empty(); ++r) {
        std::vector<size_t> again;
        for (size_t i : round) {
          batched.ClearMissed();
          evals[i] = engine::EvaluateEvent(*set, items[i].event(), batched, now);
          if (batched.missed()) again.push_back(i);
        }
        if (again.empty()) break;
        if (r + 1 == kMaxRounds) {
          for (size_t i : again) items[i].unavailable = true;
          break;
        }
        if (auto s = batched.Fetch(*store, now); !s.ok()) {
          if (store_failed(s)) return;
          for (size_t i : todo) items[i].unavailable = true;
          batched.ZeroPending();
        }
        round = std::move(again);
      }
    } else {
      for (size_t i : todo) {
        evals[i] = engine::EvaluateEvent(*set, items[i].event(), env, now);
        if (env.counter_errors() > 0) {
          env.reset_counter_errors();
          if (store_failed(absl::UnavailableError("counter read failed"))) return;
          items[i].unavailable = true;
        }
      }
    }
    std::vector<workflow::DetectionWork> work;
    std::vector<size_t> slot_of;  // work index -> item index
    for (size_t i : todo) {
      EventItem& it = items[i];
      engine::Evaluation& ev = evals[i];
      ctx.decision_metrics.Errors(ev);
      std::map<std::string, size_t> by_policy;  // policy -> index in work
      for (engine::Proposal& p : ev.proposals) {
        auto [pos, fresh] = by_policy.emplace(p.policy, work.size());
        if (fresh) {
          workflow::DetectionWork w;
          engine::Detection& d = w.detection;
          d.id = absl::StrCat(p.policy, ":", EventHash(it));
          d.source = absl::StrCat(AV(core::kRuleSourcePrefix), p.policy);
          d.type = it.event().type;
          d.entity = p.entity;
          d.score = 1;
          d.observed_at = it.event().at;
          d.evidence_json = EvidenceJson(it, p.policy);
          work.push_back(std::move(w));
          slot_of.push_back(it.index);
        }
        work[pos->second].proposals.push_back(std::move(p));
      }
    }
    for (workflow::DetectionWork& w : work) {
      w.json = DetectionToJson(w.detection, &w.json_head_bytes);
    }
    CountEvents(st, declared, items, false);

    auto finish = [](Call& call, const std::vector<EventItem>& items,
                     const std::vector<std::string>& detections) {
      std::string body = "{\"results\":[";
      body.reserve(items.size() * 96);
      bool any_ok = false;
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) body += ',';
        const EventItem& it = items[i];
        if (!it.ok) {
          body += RejectedReply(it);
          continue;
        }
        any_ok = true;
        absl::StrAppend(&body, "{\"index\":", i, ",\"status\":\"accepted\",\"outcomes\":");
        AppendOutcomesJson(it, &body);
        if (!detections[i].empty()) absl::StrAppend(&body, ",\"detections\":[", detections[i], "]");
        body += '}';
      }
      body += "]}";
      call.Send(any_ok ? 200 : 400, std::move(body));
    };
    if (work.empty()) return finish(call, items, std::vector<std::string>(items.size()));
    auto out = std::make_shared<std::vector<workflow::DetectionOutcome>>();
    auto shared = std::make_shared<std::pair<Call, std::vector<EventItem>>>(std::move(call),
                                                                            std::move(items));
    ctx.deps.ledger->Submit(
        workflow::ApplyDetections(std::move(work), set->catalog_ptr(), shared->first.who.key_id,
                                  out, workflow::SafeguardContext{ctx.safeguards, set}),
        [&ctx, shared, out, slot_of = std::move(slot_of), finish](absl::Status status,
                                                                  std::vector<ledger::Change>) {
          Call& call = shared->first;
          if (!status.ok()) return call.Fail(ApiError::FromStatus(status));
          ctx.decision_metrics.Outcomes("rule", *out);
          std::vector<std::string> detections(shared->second.size());
          for (size_t k = 0; k < out->size(); ++k) {
            std::string reply = TakeReply((*out)[k]);
            std::string& d = detections[slot_of[k]];
            if (!d.empty()) d += ',';
            d += reply;
          }
          finish(call, shared->second, detections);
        });
  });
}

absl::Status RegisterMetrics(Context& ctx, EventState& st) {
  obs::Registry* r = ctx.deps.metrics;
  if (r == nullptr) return absl::OkStatus();
  auto fam = r->AddCounterFamily("quell_events_total",
                                 "Events received, by type (declared, else other) and status",
                                 {"type", "status"});
  if (!fam.ok()) return fam.status();
  st.events_total = *fam;
  auto errs = r->AddCounter("quell_velocity_store_errors_total",
                            "Counter store calls that failed (unavailable)");
  if (!errs.ok()) return errs.status();
  st.store_errors = *errs;
  auto open = r->AddCounter("quell_velocity_fail_open_total",
                            "Counter store failures passed over (fail_open: rules read zero)");
  if (!open.ok()) return open.status();
  st.fail_open = *open;
  CounterHolder* h = &st.counters;
  struct Def {
    const char* name;
    const char* help;
    int64_t counters::StoreStats::*field;
    bool counter;
  };
  for (const Def& d :
       {Def{"quell_velocity_keys", "Counter entries held (in process)", &counters::StoreStats::keys,
            false},
        Def{"quell_velocity_evictions_expired_total",
            "Counter entries dropped when every window passed",
            &counters::StoreStats::evicted_expired, true},
        Def{"quell_velocity_evictions_cap_total",
            "Counter entries evicted early to stay under max_keys",
            &counters::StoreStats::evicted_cap, true},
        Def{"quell_velocity_redis_reconnects_total", "Counter store (Redis) reconnections",
            &counters::StoreStats::reconnects, true}}) {
    auto field = d.field;
    auto cb = [h, field] { return static_cast<double>(h->Stats().*field); };
    auto handle = d.counter ? r->AddCallbackCounter(d.name, d.help, cb)
                            : r->AddCallbackGauge(d.name, d.help, cb);
    if (!handle.ok()) return handle.status();
    st.handles.push_back(*std::move(handle));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<void>> AddEventRoutes(Router& router, Context& ctx,
                                                     PolicyHolder& policies) {
  auto st = std::make_shared<EventState>(ctx.counters);
  if (auto s = RegisterMetrics(ctx, *st); !s.ok()) return s;
  // Build the store for the loaded set now, so a bad declaration shows at start.
  if (auto s = st->counters.For(policies.Current()); !s.ok()) return s.status();
  EventState* raw = st.get();
  router.Add("POST", "/v1/events", Access::Bearer(auth::Permission::kSubmit),
             [&ctx, &policies, raw](Call&& call) { Submit(ctx, policies, *raw, std::move(call)); });
  return std::shared_ptr<void>(std::move(st));
}

}  // namespace quell::api::internal
