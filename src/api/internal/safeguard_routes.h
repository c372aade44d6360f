// Route groups of the safeguards and human workflows (issue 5): lists, breakers, reviews,
// rollbacks, appeals. They use Context::safeguards (set by the Api before routes are
// added) and the active policy set.
//
// Thread-safety: as the other route groups (context.h).
#ifndef QUELL_API_INTERNAL_SAFEGUARD_ROUTES_H_
#define QUELL_API_INTERNAL_SAFEGUARD_ROUTES_H_

#include "api/internal/context.h"
#include "api/internal/policy_holder.h"

namespace quell::api::internal {

void AddListRoutes(Router& router, Context& ctx, PolicyHolder& policies);
void AddBreakerRoutes(Router& router, Context& ctx, PolicyHolder& policies);
void AddReviewRoutes(Router& router, Context& ctx);
void AddRollbackRoutes(Router& router, Context& ctx);
void AddAppealRoutes(Router& router, Context& ctx);

//! Submits `inner` and answers with render()'s (status, body) once durable.
void SubmitSimple(Context& ctx, Call&& call, ledger::Mutation inner,
                  absl::AnyInvocable<std::pair<int, std::string>()> render);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_SAFEGUARD_ROUTES_H_
