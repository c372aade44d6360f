// Route groups that need the active policy set: detections (SPEC POST /v1/detections) and
// policies (GET/PUT /v1/policies, POST /v1/policies/test and /backtest).
//
// Thread-safety: as the other route groups (context.h).
#ifndef QUELL_API_INTERNAL_POLICY_ROUTES_H_
#define QUELL_API_INTERNAL_POLICY_ROUTES_H_

#include <memory>

#include "absl/status/statusor.h"
#include "api/internal/context.h"
#include "api/internal/policy_holder.h"

namespace quell::api::internal {

void AddDetectionRoutes(Router& router, Context& ctx, PolicyHolder& policies);
void AddPolicyRoutes(Router& router, Context& ctx, PolicyHolder& policies);
void AddBacktestRoutes(Router& router, Context& ctx, PolicyHolder& policies);
//! POST /v1/events, recording in ctx.counters. Returns the route group's state (its
//! metrics), which the caller keeps alive as long as the router.
absl::StatusOr<std::shared_ptr<void>> AddEventRoutes(Router& router, Context& ctx,
                                                     PolicyHolder& policies);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_POLICY_ROUTES_H_
