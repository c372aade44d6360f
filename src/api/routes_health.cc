// /healthz, /readyz, /metrics: no key needed (SPEC "Auth").
#include "absl/strings/str_cat.h"
#include "api/internal/context.h"
#include "obs/metrics.h"

namespace quell::api::internal {

void AddHealthRoutes(Router& router, Context& ctx) {
  router.Add(
      "GET", "/healthz", Access::Public(),
      [](Call&& call) { call.Send(200, "{\"status\":\"ok\"}"); }, Router::Query::kHandler);

  // Ready: the store answers, the index is loaded (it is before the server starts), we
  // are not draining for shutdown, and (several nodes) the change feed the index follows
  // is running: while it reconnects or after it stopped, this node's index may be behind
  // the other nodes' writes: 503 "degraded: ..." (check keeps answering from the index).
  router.Add(
      "GET", "/readyz", Access::Public(),
      [&ctx](Call&& call) {
        ctx.OffLoop(std::move(call), [&ctx](Call& call) {
          auto seq = ctx.deps.ledger->store().LastSeq();
          if (!ctx.ready.load()) return call.Fail(ApiError::Unavailable("shutting down"));
          if (!seq.ok()) {
            return call.Fail(
                ApiError::Unavailable(absl::StrCat("store unreachable: ", seq.status().message())));
          }
          if (ctx.deps.follower_status) {
            if (absl::Status feed = ctx.deps.follower_status(); !feed.ok()) {
              return call.Fail(ApiError::Unavailable(absl::StrCat("degraded: change feed at seq ",
                                                                  ctx.deps.index->seq(), " of ",
                                                                  *seq, ": ", feed.message())));
            }
          }
          call.Send(200, absl::StrCat("{\"status\":\"ready\",\"seq\":", *seq,
                                      ",\"index_seq\":", ctx.deps.index->seq(),
                                      ",\"index_size\":", ctx.deps.index->size(), "}"));
        });
      },
      Router::Query::kHandler);

  router.Add(
      "GET", "/metrics", Access::Public(),
      [&ctx](Call&& call) {
        http::Response r;
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        if (ctx.deps.metrics != nullptr) r.body = ctx.deps.metrics->Render();
        call.Reply(std::move(r));
      },
      Router::Query::kHandler);
}

}  // namespace quell::api::internal
