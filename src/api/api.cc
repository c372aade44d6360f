#include "api/api.h"

#include "api/detection_intake.h"
#include "api/internal/context.h"
#include "api/internal/counter_holder.h"
#include "api/internal/policy_holder.h"
#include "api/internal/policy_routes.h"
#include "api/internal/safeguard_routes.h"
#include "api/internal/webhook_routes.h"
#include "core/status.h"
#include "obs/metrics.h"
#include "workflow/safeguards.h"
#include "workflow/sweeper.h"

namespace quell::api {

class Api::Impl {
 public:
  Impl(ApiDeps deps, ApiOptions options)
      : policies_(deps.catalog),
        safeguards_(options.safeguards.value_or(workflow::SafeguardOptions{}), deps.logger),
        ctx_(std::move(deps), std::move(options)),
        counters_(ctx_.options.counters),
        router_(&ctx_),
        sweeper_(ctx_.deps.ledger, ctx_.deps.clock, &safeguards_) {}
  ~Impl() { sweeper_.Stop(); }

  absl::Status Init() {
    QUELL_RETURN_IF_ERROR(policies_.Load(ctx_.deps.ledger->store()));
    ctx_.deps.ledger->AddListener(&policies_);
    ctx_.policies = &policies_;
    QUELL_RETURN_IF_ERROR(safeguards_.Load(ctx_.deps.ledger->store(), ctx_.deps.clock->Now(),
                                           ctx_.deps.ledger->external_delivery()
                                               ? workflow::Safeguards::Delivery::kFeed
                                               : workflow::Safeguards::Delivery::kLocal,
                                           policies_.Current().get()));
    ctx_.deps.ledger->AddListener(&safeguards_);
    ctx_.safeguards = &safeguards_;
    ctx_.counters = &counters_;
    QUELL_RETURN_IF_ERROR(RegisterMetrics());
    internal::AddHealthRoutes(router_, ctx_);
    internal::AddMitigationRoutes(router_, ctx_);
    internal::AddFeedRoutes(router_, ctx_);
    internal::AddKeyRoutes(router_, ctx_);
    internal::AddCrowdSecRoutes(router_, ctx_);
    internal::AddDetectionRoutes(router_, ctx_, policies_);
    auto events = internal::AddEventRoutes(router_, ctx_, policies_);
    if (!events.ok()) return events.status();
    events_ = *std::move(events);
    internal::AddPolicyRoutes(router_, ctx_, policies_);
    internal::AddBacktestRoutes(router_, ctx_, policies_);
    internal::AddListRoutes(router_, ctx_, policies_);
    internal::AddBreakerRoutes(router_, ctx_, policies_);
    internal::AddReviewRoutes(router_, ctx_);
    internal::AddRollbackRoutes(router_, ctx_);
    internal::AddAppealRoutes(router_, ctx_);
    internal::AddWebhookRoutes(router_, ctx_, ctx_.deps.webhooks);
    if (ctx_.options.start_background) sweeper_.Start();
    return absl::OkStatus();
  }

  // The safeguards' counters on /metrics.
  absl::Status RegisterMetrics() {
    obs::Registry* r = ctx_.deps.metrics;
    if (r == nullptr) return absl::OkStatus();
    auto& m = safeguards_.metrics();
    struct Def {
      const char* name;
      const char* help;
      std::atomic<int64_t>* value;
    };
    for (const Def& d :
         {Def{"quell_safeguard_held_protected_total",
              "Automatic decisions held for approval: protected entity", &m.held_protected},
          Def{"quell_safeguard_held_breaker_total",
              "Automatic decisions held for approval: open breaker", &m.held_breaker},
          Def{"quell_safeguard_held_immunity_total",
              "Automatic decisions held for approval: human-decision immunity", &m.held_immunity},
          Def{"quell_breaker_opened_total", "Breakers opened", &m.breakers_opened},
          Def{"quell_pending_expired_total", "Pending approvals that expired", &m.pending_expired},
          Def{"quell_breaker_remote_decisions_total",
              "Other nodes' decisions counted in this node's breaker windows",
              &m.remote_decisions}}) {
      auto* v = d.value;
      auto h =
          r->AddCallbackCounter(d.name, d.help, [v] { return static_cast<double>(v->load()); });
      if (!h.ok()) return h.status();
      metric_handles_.push_back(*std::move(h));
    }
    auto open = r->AddCallbackGauge("quell_breakers_open", "Breakers currently open", [this] {
      double n = 0;
      for (const auto& b : safeguards_.Breakers(*policies_.Current(), ctx_.deps.clock->Now()))
        n += b.open;
      return n;
    });
    if (!open.ok()) return open.status();
    metric_handles_.push_back(*std::move(open));
    return absl::OkStatus();
  }

  internal::PolicyHolder policies_;
  workflow::Safeguards safeguards_;
  internal::Context ctx_;
  internal::CounterHolder counters_;
  internal::Router router_;
  DetectionIntake intake_{&ctx_, &policies_};
  workflow::SafeguardSweeper sweeper_;
  std::vector<obs::CallbackHandle> metric_handles_;
  std::shared_ptr<void> events_;  // POST /v1/events state (metrics)
};

absl::StatusOr<std::unique_ptr<Api>> Api::Create(ApiDeps deps, ApiOptions options) {
  auto impl = std::make_unique<Impl>(std::move(deps), std::move(options));
  QUELL_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Api>(new Api(std::move(impl)));
}

Api::Api(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Api::~Api() = default;

void Api::Handle(http::Request request, http::Responder respond) {
  impl_->router_.Dispatch(std::move(request), std::move(respond));
}

void Api::OnRefused(const http::Refusal& refusal) { impl_->router_.Refused(refusal); }

void Api::set_ready(bool ready) { impl_->ctx_.ready.store(ready); }

void Api::Drain() {
  impl_->ctx_.ready.store(false);
  impl_->ctx_.waiters.Close();
}

void Api::StartBackground() { impl_->sweeper_.Start(); }

void Api::StopBackground() { impl_->sweeper_.Stop(); }

std::shared_ptr<const core::ActionCatalog> Api::Catalog() const { return impl_->ctx_.Catalog(); }

workflow::WhyHeldFn Api::WhyHeld() const { return impl_->ctx_.WhyHeld(); }

const DetectionIntake& Api::detection_intake() const { return impl_->intake_; }

}  // namespace quell::api
