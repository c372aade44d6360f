// Route group for webhook subscriptions (admin): POST/GET /v1/webhooks,
// DELETE /v1/webhooks/{id}, GET /v1/webhooks/{id}/dead_letters. See docs/webhooks.md.
//
// Thread-safety: as the other route groups (context.h). The dispatcher is borrowed.
#ifndef QUELL_API_INTERNAL_WEBHOOK_ROUTES_H_
#define QUELL_API_INTERNAL_WEBHOOK_ROUTES_H_

#include "api/internal/context.h"

namespace quell::webhooks {
class Dispatcher;
}  // namespace quell::webhooks

namespace quell::api::internal {

//! Registers the routes; with a null dispatcher they answer 503 (webhooks not running).
void AddWebhookRoutes(Router& router, Context& ctx, webhooks::Dispatcher* dispatcher);

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_WEBHOOK_ROUTES_H_
