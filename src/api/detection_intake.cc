#include "api/detection_intake.h"

#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "api/detection_codec.h"
#include "api/internal/context.h"
#include "api/internal/live_environment.h"
#include "api/internal/policy_holder.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "obs/log.h"
#include "workflow/decisions.h"

namespace quell::api {
namespace {

std::string RejectedReply(size_t index, const std::vector<FieldError>& errors,
                          const rapidjson::Value* value) {
  ApiError e = ApiError::InvalidArgument(
      errors.empty() ? "invalid detection" : absl::StrCat(errors[0].field, ": ", errors[0].message),
      errors);
  std::string out = absl::StrCat("{\"index\":", index);
  if (value != nullptr && value->IsObject()) {
    auto id = value->FindMember("id");
    if (id != value->MemberEnd() && id->value.IsString()) {
      out += ",\"id\":";
      core::AppendJsonString(std::string_view(id->value.GetString(), id->value.GetStringLength()),
                             &out);
    }
  }
  std::string error = ErrorJson(e);  // {"error":{...}}
  absl::StrAppend(&out, ",\"status\":\"rejected\",",
                  absl::string_view(error).substr(1, error.size() - 2), "}");
  return out;
}

}  // namespace

DetectionIntake::DetectionIntake(internal::Context* ctx, internal::PolicyHolder* policies)
    : ctx_(ctx), policies_(policies) {}

DetectionIntake::Validated DetectionIntake::Validate(
    const auth::Principal& who, const std::vector<const rapidjson::Value*>& values,
    const std::vector<std::string>& paths, absl::Time now) const {
  DetectionLimits limits;
  const std::shared_ptr<const policy::PolicySet> known = policies_->Current();
  Validated out;
  out.items.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    Item& item = out.items[i];
    item.index = i;
    std::vector<FieldError> errors;
    auto d = ReadDetection(*values[i], paths[i], now, limits, &errors);
    if (d.ok() && !known->KnowsDetectionType(d->type)) {
      errors.push_back({paths[i].empty() ? "type" : absl::StrCat(paths[i], ".type"),
                        known->UnknownDetectionTypeError(d->type)});
      d = absl::InvalidArgumentError("unknown type");
    }
    // The source as given decides, valid item or not: a foreign item refuses the whole
    // request even when it is also invalid (rejected alone, it let the rest apply), and
    // so does any of a repeated "source" (the item is invalid for the repeat too).
    std::optional<std::string_view> foreign;
    if (values[i]->IsObject()) {
      for (auto m = values[i]->MemberBegin(); m != values[i]->MemberEnd() && !foreign; ++m) {
        if (!m->value.IsString() ||
            std::string_view(m->name.GetString(), m->name.GetStringLength()) != "source") {
          continue;
        }
        std::string_view given(m->value.GetString(), m->value.GetStringLength());
        if (!who.MaySubmitAs(given)) foreign = given;
      }
    }
    if (foreign) {
      // Quoted up to 128 bytes (a source's longest), cut on a character boundary.
      std::string_view shown = foreign->substr(0, 128);
      while (shown.size() < foreign->size() && !shown.empty() &&
             (static_cast<unsigned char>((*foreign)[shown.size()]) & 0xC0) == 0x80) {
        shown.remove_suffix(1);
      }
      out.forbidden.push_back({paths[i].empty() ? "source" : absl::StrCat(paths[i], ".source"),
                               absl::StrCat("this key may not submit as source \"", AV(shown),
                                            shown.size() < foreign->size() ? "...\"" : "\""),
                               static_cast<int64_t>(i)});
      continue;
    }
    if (!d.ok()) {
      item.rejected_reply = RejectedReply(i, errors, values[i]);
      continue;
    }
    item.detection = *std::move(d);
  }
  return out;
}

void DetectionIntake::EvaluateAndApply(std::vector<Item> items, const auth::Principal& who,
                                       absl::Time now, std::string origin, Done done,
                                       obs::SpanContext trace_parent) const {
  internal::Context& ctx = *ctx_;
  obs::Span engine_span;
  if (ctx.deps.tracer != nullptr) {
    engine_span = ctx.deps.tracer->StartSpanAt("engine.evaluate", trace_parent, absl::Now());
  }
  auto set = policies_->Current();
  internal::LiveEnvironment env(ctx.deps.index, &ctx.deps.ledger->store(), now);
  env.set_lists(ctx.safeguards);
  std::vector<workflow::DetectionWork> work;
  std::vector<size_t> slot_of;  // work index -> item index
  // An evaluation that read ledger state (active(), prior()) after an earlier item of this
  // batch earned a decision may answer otherwise once that decision is made: it is done
  // again in the transaction, just before deciding (as quell import --data does), so that
  // the outcome does not depend on how detections are cut into requests.
  bool decided_before = false, again = false;
  for (Item& item : items) {
    if (!item.detection) continue;
    workflow::DetectionWork w;
    internal::TrackingEnvironment tracking(env);
    engine::Evaluation ev = engine::Evaluate(*set, *item.detection, tracking, now);
    ctx.decision_metrics.Errors(ev);
    w.proposals_final = !(decided_before && tracking.read_ledger());
    again = again || !w.proposals_final;
    decided_before = decided_before || !ev.proposals.empty();
    w.proposals = std::move(ev.proposals);
    w.json = DetectionToJson(*item.detection, &w.json_head_bytes);
    w.detection = *std::move(item.detection);
    item.detection.reset();
    slot_of.push_back(item.index);
    work.push_back(std::move(w));
  }
  if (engine_span.recording()) {
    int64_t proposals = 0;
    for (const auto& w : work) proposals += static_cast<int64_t>(w.proposals.size());
    engine_span.SetAttribute("quell.policy_set.version", set->version());
    engine_span.SetAttribute("quell.detections", static_cast<int64_t>(work.size()));
    engine_span.SetAttribute("quell.proposals", proposals);
    engine_span.End();
  }
  if (env.store_errors() > 0 && ctx.deps.logger != nullptr) {
    ctx.deps.logger->Warn("prior() could not read the store; counted as 0",
                          {{"errors", env.store_errors()}});
  }
  const int64_t rejected = static_cast<int64_t>(items.size() - work.size());
  ctx.decision_metrics.Detections(origin, "rejected", rejected);
  // Rejected items keep their reply; applied ones get theirs from the ledger step.
  auto replies = std::make_shared<std::vector<std::string>>(items.size());
  for (Item& item : items) (*replies)[item.index] = std::move(item.rejected_reply);
  if (work.empty()) return done(std::move(*replies));

  auto out = std::make_shared<std::vector<workflow::DetectionOutcome>>();
  ctx.deps.ledger->Submit(
      workflow::ApplyDetections(
          std::move(work), set->catalog_ptr(), who.key_id, out,
          workflow::SafeguardContext{ctx.safeguards, set},
          again ? workflow::EvaluateInTxn(set) : workflow::ProposeFn(nullptr)),
      [&ctx, replies, out, slot_of = std::move(slot_of), origin = std::move(origin),
       done = std::move(done)](absl::Status status, std::vector<ledger::Change>) mutable {
        if (!status.ok()) return done(status);
        // Runs on the ledger's finisher thread: a batch's replies (a thousand strings) are built on
        // the worker pool instead, or here if the pool refuses (stopping or full).
        auto finish = std::make_shared<absl::AnyInvocable<void()>>(
            [&ctx, replies, out, slot_of = std::move(slot_of), origin = std::move(origin),
             done = std::move(done)]() mutable {
              ctx.decision_metrics.Outcomes(origin, *out);
              for (size_t k = 0; k < out->size(); ++k) {
                std::string reply = internal::TakeReply((*out)[k]);
                (*replies)[slot_of[k]] =
                    absl::StrCat("{\"index\":", slot_of[k], ",", AV(reply).substr(1));
              }
              done(std::move(*replies));
            });
        if (!ctx.pool.Post([finish] { (*finish)(); })) (*finish)();
      },
      std::move(trace_parent));
}

std::unique_ptr<DetectionIntake::ParsedTexts> DetectionIntake::ParseTexts(
    const std::vector<std::string_view>& texts) {
  auto out = std::make_unique<ParsedTexts>();
  out->values.resize(texts.size());
  out->unparsed.resize(texts.size());
  // One parser whose values are allocated in the shared pool, then moved out of it.
  rapidjson::Document parser(&out->pool);
  for (size_t i = 0; i < texts.size(); ++i) {
    if (auto e = ParseJsonBody(texts[i], &parser)) {
      out->unparsed[i] = e->message;
      out->values[i].SetObject();  // read as an empty object: its required fields are named
    } else {
      out->values[i] = std::move(static_cast<rapidjson::Value&>(parser));
    }
  }
  return out;
}

DetectionIntake::Validated DetectionIntake::ValidateTexts(const auth::Principal& who,
                                                          const ParsedTexts& texts,
                                                          absl::Time now) const {
  std::vector<const rapidjson::Value*> values(texts.values.size());
  for (size_t i = 0; i < values.size(); ++i) values[i] = &texts.values[i];
  Validated v = Validate(who, values, std::vector<std::string>(values.size()), now);
  for (size_t i = 0; i < values.size(); ++i) {
    if (!texts.unparsed[i]) continue;
    v.items[i].detection.reset();
    v.items[i].rejected_reply = RejectedReply(i, {{"detection", *texts.unparsed[i]}}, nullptr);
  }
  return v;
}

void DetectionIntake::SubmitJson(const auth::Principal& who,
                                 std::vector<absl::StatusOr<std::string>> texts, Done done,
                                 obs::SpanContext trace_parent) const {
  const absl::Time now = ctx_->deps.clock->Now();
  // Each text is an item of its own: an unparseable one is a rejected item, not a failed
  // batch (as a bad item of an HTTP batch); an error item is one already.
  std::vector<std::string_view> views;
  views.reserve(texts.size());
  for (const absl::StatusOr<std::string>& t : texts)
    views.push_back(t.ok() ? std::string_view(*t) : std::string_view("{}"));
  std::unique_ptr<ParsedTexts> parsed = ParseTexts(views);
  for (size_t i = 0; i < texts.size(); ++i) {
    if (!texts[i].ok()) parsed->unparsed[i] = std::string(SV(texts[i].status().message()));
  }
  Validated v = ValidateTexts(who, *parsed, now);
  if (!v.forbidden.empty()) {
    return done(absl::PermissionDeniedError(
        absl::StrCat(v.forbidden[0].field, ": ", v.forbidden[0].message)));
  }
  parsed.reset();
  EvaluateAndApply(std::move(v.items), who, now, "api", std::move(done), std::move(trace_parent));
}

}  // namespace quell::api
