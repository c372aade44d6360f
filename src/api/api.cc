#include "api/api.h"

#include "api/internal/context.h"
#include "api/internal/policy_holder.h"
#include "api/internal/policy_routes.h"
#include "core/status.h"

namespace quell::api {

class Api::Impl {
 public:
  Impl(ApiDeps deps, ApiOptions options)
      : policies_(deps.catalog), ctx_(std::move(deps), std::move(options)), router_(&ctx_) {}

  absl::Status Init() {
    QUELL_RETURN_IF_ERROR(policies_.Load(ctx_.deps.ledger->store()));
    ctx_.deps.ledger->AddListener(&policies_);
    ctx_.policies = &policies_;
    internal::AddHealthRoutes(router_, ctx_);
    internal::AddMitigationRoutes(router_, ctx_);
    internal::AddFeedRoutes(router_, ctx_);
    internal::AddKeyRoutes(router_, ctx_);
    internal::AddCrowdSecRoutes(router_, ctx_);
    internal::AddDetectionRoutes(router_, ctx_, policies_);
    internal::AddPolicyRoutes(router_, ctx_, policies_);
    return absl::OkStatus();
  }

  internal::PolicyHolder policies_;
  internal::Context ctx_;
  internal::Router router_;
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

void Api::set_ready(bool ready) { impl_->ctx_.ready.store(ready); }

}  // namespace quell::api
