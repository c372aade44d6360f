#include "api/api.h"

#include "api/internal/context.h"

namespace quell::api {

class Api::Impl {
 public:
  Impl(ApiDeps deps, ApiOptions options)
      : ctx_(std::move(deps), std::move(options)), router_(&ctx_) {
    internal::AddHealthRoutes(router_, ctx_);
    internal::AddMitigationRoutes(router_, ctx_);
    internal::AddFeedRoutes(router_, ctx_);
    internal::AddKeyRoutes(router_, ctx_);
    internal::AddCrowdSecRoutes(router_, ctx_);
  }

  internal::Context ctx_;
  internal::Router router_;
};

Api::Api(ApiDeps deps, ApiOptions options)
    : impl_(std::make_unique<Impl>(std::move(deps), std::move(options))) {}
Api::~Api() = default;

void Api::Handle(http::Request request, http::Responder respond) {
  impl_->router_.Dispatch(std::move(request), std::move(respond));
}

void Api::set_ready(bool ready) { impl_->ctx_.ready.store(ready); }

}  // namespace quell::api
