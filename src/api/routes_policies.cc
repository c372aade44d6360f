// GET/PUT /v1/policies and POST /v1/policies/test: the active policy set as YAML,
// publishing a new version (validated whole: every error listed with line:column, and
// the active set untouched on failure), and dry evaluation of detections and events
// (read through the same parsers and the same engine as a submission; nothing written,
// no counter recorded).
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/event_codec.h"
#include "api/internal/counter_holder.h"
#include "api/internal/live_environment.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "engine/engine.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/policies.h"

namespace quell::api::internal {
namespace {

// Validates a policy-set text; on failure the error lists every diagnostic as a detail
// whose field is "line:column".
absl::StatusOr<std::shared_ptr<const policy::PolicySet>> Validate(std::string_view yaml,
                                                                  ApiError* error) {
  if (yaml.size() > policy::kMaxPolicySetBytes) {
    *error = ApiError::TooLarge("policy set larger than 4 MiB");
    return absl::InvalidArgumentError("too large");
  }
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(yaml, 0);
  if (r.set) return r.set;
  std::vector<FieldError> details;
  for (const auto& d : r.errors) {
    details.push_back({absl::StrCat(d.line, ":", d.column), d.message});
  }
  // The message first: `details` is moved into the error after it.
  std::string message = absl::StrCat("policy set rejected: ", details.size(),
                                     " error(s); first: ", details.empty() ? "" : details[0].field,
                                     " ", details.empty() ? "" : details[0].message);
  *error = ApiError::InvalidArgument(std::move(message), std::move(details));
  return absl::InvalidArgumentError("invalid");
}

void GetPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  auto set = policies.Current();
  http::Response r;
  r.content_type = "application/yaml";
  r.headers.emplace_back("X-Quell-Policy-Version", std::to_string(set->version()));
  r.body = set->yaml();
  call.Reply(std::move(r));
}

// An action of `before` that `after` drops while live mitigations (active, scheduled or
// pending approval) use it: check would answer `allow` for them, an enforced suspend
// silently lifted. Names the first such action and one of its mitigations. One pass over
// the live mitigations, and none when nothing is dropped (the usual publish). A decision
// committed between this read and the publish is not seen: a pre-check, not a lock.
absl::StatusOr<std::optional<std::string>> DroppedActionInUse(ledger::Store& store,
                                                              const core::ActionCatalog& before,
                                                              const core::ActionCatalog& after) {
  absl::flat_hash_set<std::string> dropped;
  for (const core::Action& a : before.actions()) {
    if (after.Find(a.name) == nullptr) dropped.insert(a.name);
  }
  if (dropped.empty()) return std::optional<std::string>();
  std::optional<std::string> found;
  absl::StatusOr<int64_t> scanned = store.ScanLive([&](const core::Mitigation& m) {
    if (!dropped.contains(m.action)) return absl::OkStatus();
    found = absl::StrCat("the policy set drops action ", m.action, ", which live mitigations use (",
                         m.id, " is ", AV(core::StateName(m.state)),
                         "): keep it under actions (its verdict may change), or revoke them first");
    return absl::CancelledError("found");
  });
  if (!found && !scanned.ok()) return scanned.status();
  return found;
}

void PutPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  ApiError error;
  auto set = Validate(call.req.body, &error);
  if (!set.ok()) return call.Fail(error);
  // The check reads the store: off the event loop.
  ctx.OffLoop(std::move(call), [&ctx, &policies, set = *std::move(set)](Call& call) {
    auto dropped =
        DroppedActionInUse(ctx.deps.ledger->store(), *policies.Catalog(), set->catalog());
    if (!dropped.ok()) return call.Fail(ApiError::FromStatus(dropped.status()));
    if (*dropped) return call.Fail(ApiError::Conflict(**dropped));
    auto version = std::make_shared<int64_t>(0);
    size_t count = set->policies().size();
    auto shared = std::make_shared<Call>(std::move(call));
    ctx.deps.ledger->Submit(
        workflow::PublishPolicySet(shared->req.body, shared->who.key_id, version),
        [shared, version, count](absl::Status status, std::vector<ledger::Change> changes) {
          if (!status.ok()) return shared->Fail(ApiError::FromStatus(status));
          // The holder swapped to this version before this completion ran (listeners
          // come first), so the next request anywhere is decided with it.
          shared->Send(200, absl::StrCat("{\"version\":", *version, ",\"policies\":", count,
                                         ",\"seq\":", changes.empty() ? 0 : changes[0].seq, "}"));
        });
  });
}

// The decisions `proposals` would make if submitted now, as JSON objects (comma
// separated) appended to *body: escalated against the committed history, held for a
// protected entity as a real submission would be (breakers and immunity are not
// simulated: they depend on the moment of the decision).
void AppendDecisions(Context& ctx, const policy::PolicySet& set,
                     const std::vector<engine::Proposal>& proposals, absl::Time now,
                     std::string* body) {
  for (size_t k = 0; k < proposals.size(); ++k) {
    const engine::Proposal& p = proposals[k];
    int64_t prior = 0;
    if (!p.escalate.empty()) {
      auto n = workflow::PriorHitsCommitted(ctx.deps.ledger->store(), p, now);
      if (n.ok()) prior = *n;
    }
    std::optional<std::string> held;
    if (!p.shadow && ctx.safeguards != nullptr) held = ctx.safeguards->WhyProtected(set, p.entity);
    std::string_view state = p.shadow                         ? "shadow"
                             : held                           ? "pending_approval"
                             : p.delay > absl::ZeroDuration() ? "scheduled"
                                                              : "active";
    if (k) *body += ',';
    *body += "{\"entity\":";
    core::AppendJsonString(p.entity.str(), body);
    *body += ",\"action\":";
    core::AppendJsonString(engine::EscalatedAction(p, prior), body);
    absl::StrAppend(body, ",\"state\":\"", AV(state), "\",\"policy\":");
    core::AppendJsonString(p.policy, body);
    absl::StrAppend(body, ",\"ttl\":\"", core::DurationString(engine::EscalatedTtl(p, prior)),
                    "\",\"reason\":");
    core::AppendJsonString(p.reason, body);
    if (held) {
      *body += ",\"held\":";
      core::AppendJsonString(*held, body);
    }
    *body += "}";
  }
}

// count()/distinct() as POST /v1/events of the request's events would read them once
// the batch is recorded (a batch is recorded whole before its rules run): `store`'s
// values with `pending`, the batch's observations, added by CounterStore::ReadWith, so
// nothing is recorded. Reads are cached: the batch is the same for every event. A read
// the store cannot answer (kUnavailable) reads 0 and is noted (unavailable()), as a
// fail_open submission reads it. Other functions go to `base`. One
// request's thread only; `store` (may be null: every counter reads 0) and `pending`'s
// strings are borrowed.
class PreviewEnvironment final : public policy::ForwardingEnvironment {
 public:
  PreviewEnvironment(policy::Environment* base, counters::CounterStore* store,
                     const std::vector<counters::Observation>& pending, absl::Time now)
      : ForwardingEnvironment(*base), store_(store), now_(now) {
    for (const counters::Observation& o : pending) {
      pending_[absl::StrCat(o.counter, "\x1f", AV(o.key))].push_back(o);
    }
  }

  int64_t Count(std::string_view counter, std::string_view key, absl::Duration window) override {
    return Read(counter, key, window, false);
  }
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration window) override {
    return Read(counter, key, window, true);
  }

  //! Whether a read since the last reset failed (the store unavailable).
  bool unavailable() const { return unavailable_; }
  void reset_unavailable() { unavailable_ = false; }

 private:
  struct Value {
    int64_t n = 0;
    bool failed = false;
  };

  int64_t Read(std::string_view name, std::string_view key, absl::Duration window, bool distinct) {
    if (store_ == nullptr) return 0;
    const counters::CounterSet& cs = store_->counters();
    const int c = cs.Find(name);
    // Not a readable counter: 0, as the live environment answers.
    if (c < 0 || cs.spec(c).is_distinct() != distinct || cs.FindWindow(c, window) < 0) return 0;
    const std::string of = absl::StrCat(c, "\x1f", AV(key));
    const std::string ck = absl::StrCat(of, "\x1f", absl::ToInt64Microseconds(window));
    auto it = cache_.find(ck);
    if (it == cache_.end()) {
      Value v;
      const counters::ReadRequest r{c, key, window};
      auto p = pending_.find(of);
      absl::Span<const counters::Observation> seen;
      if (p != pending_.end()) seen = p->second;
      absl::Status s = store_->ReadWith({&r, 1}, seen, now_, {&v.n, 1});
      if (!s.ok()) v = {0, absl::IsUnavailable(s)};  // else a bad read: 0, as live
      it = cache_.emplace(ck, v).first;
    }
    unavailable_ |= it->second.failed;
    return it->second.n;
  }

  counters::CounterStore* store_;
  absl::Time now_;
  absl::flat_hash_map<std::string, std::vector<counters::Observation>> pending_;
  absl::flat_hash_map<std::string, Value> cache_;
  bool unavailable_ = false;
};

// The store the events of a test read: the live one when it serves exactly `set`'s
// counters; otherwise an empty one of `set`'s (publishing a set that declares other
// counters starts every count afresh), never written. Null when `set` declares none.
absl::StatusOr<std::shared_ptr<counters::CounterStore>> StoreForTest(const CounterHolder& holder,
                                                                     const policy::PolicySet& set) {
  if (set.counters().empty()) return std::shared_ptr<counters::CounterStore>();
  if (auto live = holder.Peek(set)) return live;
  CounterOptions options = holder.options();
  options.redis = false;
  options.max_keys = 1;  // never written: holds nothing
  return CounterHolder::Build(CounterHolder::SpecsOf(set), options);
}

// Dry evaluation: {"detections"?: [...], "events"?: [...], "policy_set": "<yaml>"?}, at
// least one detection or event. The set defaults to the active one. Escalation reads the
// entity's real history and count()/distinct() the real counters; nothing is written.
void TestPolicies(Context& ctx, PolicyHolder& policies, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto yaml = r.String("policy_set", false, policy::kMaxPolicySetBytes);
  const rapidjson::Value* list = r.Raw("detections", false);
  const rapidjson::Value* event_list = r.Raw("events", false);
  r.RejectUnknown();
  if (list != nullptr && (!list->IsArray() || list->Size() > 1000)) {
    errors.push_back({"detections", "must be an array of 1-1000 detections"});
  }
  if (event_list != nullptr && !event_list->IsArray()) {
    errors.push_back({"events", "must be an array of events"});
  }
  const bool no_detections = list == nullptr || !list->IsArray() || list->Empty();
  const bool no_events = event_list == nullptr || !event_list->IsArray() || event_list->Empty();
  if (errors.empty() && no_detections && no_events) {
    errors.push_back(
        {"detections", "must be an array of 1-1000 detections, unless events holds some"});
  }
  if (!errors.empty()) return call.Fail(ApiError::InvalidArgument("invalid test", errors));
  // As POST /v1/events: past its batch limit, 413.
  const size_t max_events = static_cast<size_t>(ctx.options.max_events_batch);
  if (!no_events && event_list->Size() > max_events) {
    return call.Fail(TooManyItems("events", max_events, event_list->Size()));
  }
  std::shared_ptr<const policy::PolicySet> set = policies.Current();
  if (yaml) {
    ApiError error;
    auto candidate = Validate(*yaml, &error);
    if (!candidate.ok()) return call.Fail(error);
    set = *std::move(candidate);
  }
  const absl::Time now = ctx.deps.clock->Now();
  std::vector<engine::Detection> detections;
  DetectionLimits limits;
  for (rapidjson::SizeType i = 0; !no_detections && i < list->Size(); ++i) {
    const std::string path = absl::StrCat("detections[", i, "]");
    auto d = ReadDetection((*list)[i], path, now, limits, &errors);
    // As a real submission under this set: an undeclared type is refused, not decided.
    if (d.ok() && !set->KnowsDetectionType(d->type)) {
      errors.push_back({absl::StrCat(path, ".type"), set->UnknownDetectionTypeError(d->type)});
      continue;
    }
    if (d.ok()) detections.push_back(*std::move(d));
  }
  const size_t detection_errors = errors.size();
  // Events are refused as POST /v1/events refuses them (the same parser), each error at
  // its item's path; a type the set neither counts nor evaluates is refused too.
  std::vector<ParsedEvent> events(no_events ? 0 : event_list->Size());
  const absl::flat_hash_set<std::string> types = EventTypesOf(*set);
  for (size_t i = 0; i < events.size(); ++i) {
    const std::string path = absl::StrCat("events[", i, "]");
    std::optional<EventError> e = ReadEvent((*event_list)[static_cast<rapidjson::SizeType>(i)], now,
                                            ctx.counters->options().lateness, &events[i]);
    if (e) {
      errors.push_back({e->field.empty() ? path : absl::StrCat(path, ".", e->field), e->message});
    } else if (!types.contains(AV(events[i].event.type))) {
      errors.push_back({absl::StrCat(path, ".type"),
                        absl::StrCat("no counter or policy of the policy set (version ",
                                     set->version(), ") is on \"", events[i].event.type, "\"")});
    }
  }
  if (!errors.empty()) {
    return call.Fail(ApiError::InvalidArgument(
        detection_errors > 0 ? "invalid detections" : "invalid events", errors));
  }
  auto store = StoreForTest(*ctx.counters, *set);
  if (!store.ok())
    return call.Fail(ApiError::Field("policy_set", std::string(store.status().message())));
  ctx.OffLoop(
      std::move(call), [&ctx, set, detections = std::move(detections), events = std::move(events),
                        store = *std::move(store), now](Call& call) {
        LiveEnvironment env(ctx.deps.index, &ctx.deps.ledger->store(), now);
        env.set_lists(ctx.safeguards);
        std::string body = absl::StrCat("{\"version\":", set->version(), ",\"results\":[");
        for (size_t i = 0; i < detections.size(); ++i) {
          engine::Evaluation ev = engine::Evaluate(*set, detections[i], env, now);
          if (i) body += ',';
          absl::StrAppend(&body, "{\"index\":", i, ",\"id\":");
          core::AppendJsonString(detections[i].id, &body);
          absl::StrAppend(&body, ",\"eval_errors\":", ev.eval_errors, ",\"decisions\":[");
          AppendDecisions(ctx, *set, ev.proposals, now, &body);
          body += "]}";
        }
        body += "],\"events\":[";
        // Every event's observations, as POST /v1/events would record them before its rules
        // run: each event's rules read the counts with the whole request's events in them.
        std::vector<counters::Observation> pending;
        if (store != nullptr) {
          for (const ParsedEvent& e : events)
            AppendObservations(store->counters(), e, now, &pending);
        }
        PreviewEnvironment preview(&env, store.get(), pending, now);
        for (size_t i = 0; i < events.size(); ++i) {
          preview.reset_unavailable();
          engine::Evaluation ev = engine::EvaluateEvent(*set, events[i].event, preview, now);
          if (preview.unavailable() && ctx.counters->options().fail_closed) {
            // A real submission would be refused (fail_closed): so is its test.
            return call.Fail(ApiError::Unavailable("counter store unavailable; retry later", 1));
          }
          if (i) body += ',';
          absl::StrAppend(&body, "{\"index\":", i, ",\"eval_errors\":", ev.eval_errors);
          if (ev.target_errors) absl::StrAppend(&body, ",\"target_errors\":", ev.target_errors);
          // fail_open: the counters read 0, as they would for a real submission.
          if (preview.unavailable()) body += ",\"unavailable\":true";
          body += ",\"decisions\":[";
          AppendDecisions(ctx, *set, ev.proposals, now, &body);
          body += "]}";
        }
        body += "]}";
        call.Send(200, std::move(body));
      });
}

}  // namespace

void AddPolicyRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  using auth::Permission;
  auto bind = [&ctx, &policies](void (*fn)(Context&, PolicyHolder&, Call &&)) {
    return [&ctx, &policies, fn](Call&& call) { fn(ctx, policies, std::move(call)); };
  };
  router.Add("GET", "/v1/policies", Access::Bearer(Permission::kRead), bind(GetPolicies));
  router.Add("PUT", "/v1/policies", Access::Bearer(Permission::kAdmin), bind(PutPolicies));
  router.Add("POST", "/v1/policies/test", Access::Bearer(Permission::kRead), bind(TestPolicies));
}

}  // namespace quell::api::internal
