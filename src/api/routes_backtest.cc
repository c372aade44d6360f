// POST /v1/policies/backtest: replays the stored detections of a window against a
// candidate policy set (engine/backtest.h) and reports, per policy, what would newly be
// mitigated, what would no longer be, and how many of those entities are protected.
//
// Body: {"policy_set": "<yaml>"? (default: the active set), "from": RFC 3339,
// "to": RFC 3339, "samples": 0-100? (default 5)}. The window [from, to) is required and at
// most 31 days. The replay streams from the store on the worker pool; at most
// kMaxConcurrent backtests run at once (503 + Retry-After beyond), so that a few analysts
// cannot take every worker from the detection path.
#include <atomic>
#include <memory>

#include "absl/strings/str_cat.h"
#include "api/internal/policy_routes.h"
#include "api/json_reader.h"
#include "core/strings.h"
#include "core/time.h"
#include "engine/backtest.h"
#include "policy/policy_set.h"

namespace quell::api::internal {
namespace {

constexpr absl::Duration kMaxWindow = absl::Hours(24 * 31);
constexpr int kMaxConcurrent = 2;

void Backtest(Context& ctx, PolicyHolder& policies,
              const std::shared_ptr<std::atomic<int>>& running, Call&& call) {
  rapidjson::Document doc;
  if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
  std::vector<FieldError> errors;
  ObjectReader r(doc, "", &errors);
  auto yaml = r.String("policy_set", false, policy::kMaxPolicySetBytes);
  auto from_text = r.String("from", true, 64);
  auto to_text = r.String("to", true, 64);
  auto samples = r.Int("samples", false);
  r.RejectUnknown();
  engine::BacktestOptions options;
  if (from_text) {
    auto t = core::ParseRfc3339(*from_text);
    if (t.ok())
      options.from = *t;
    else
      errors.push_back({"from", "must be an RFC 3339 time"});
  }
  if (to_text) {
    auto t = core::ParseRfc3339(*to_text);
    if (t.ok())
      options.to = *t;
    else
      errors.push_back({"to", "must be an RFC 3339 time"});
  }
  if (errors.empty() && options.from >= options.to) {
    errors.push_back({"to", "must be after from"});
  }
  if (errors.empty() && options.to - options.from > kMaxWindow) {
    errors.push_back({"to", "the window [from, to) may span at most 31d"});
  }
  if (samples) {
    if (*samples < 0 || *samples > 100)
      errors.push_back({"samples", "must be 0-100"});
    else
      options.samples = static_cast<size_t>(*samples);
  }
  if (!errors.empty()) return call.Fail(ApiError::InvalidArgument("invalid backtest", errors));

  std::shared_ptr<const policy::PolicySet> set = policies.Current();
  if (yaml) {
    policy::LoadResult loaded = policy::LoadPolicySetWithDiagnostics(*yaml, 0);
    if (loaded.set == nullptr) {
      std::vector<FieldError> details;
      for (const auto& d : loaded.errors) {
        details.push_back({absl::StrCat(d.line, ":", d.column), d.message});
      }
      // The message first: an argument moved from in the same call could be read empty.
      std::string message = absl::StrCat("policy set rejected: ", details.size(), " error(s)");
      return call.Fail(ApiError::InvalidArgument(std::move(message), std::move(details)));
    }
    set = std::move(loaded.set);
  }
  if (running->fetch_add(1) >= kMaxConcurrent) {
    running->fetch_sub(1);
    return call.Fail(ApiError::Unavailable("too many backtests running; retry later", 5));
  }
  // Released when the task is done or dropped (OffLoop may refuse it with a 503).
  std::shared_ptr<void> slot(nullptr, [running](void*) { running->fetch_sub(1); });
  ctx.OffLoop(std::move(call), [&ctx, set, options, slot = std::move(slot)](Call& call) {
    auto report = engine::RunBacktest(ctx.deps.ledger->store(), set, options);
    if (!report.ok()) return call.Fail(ApiError::FromStatus(report.status()));
    call.Send(200, engine::BacktestReportToJson(*report));
  });
}

}  // namespace

void AddBacktestRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  // Owned by the route's handler, which the router keeps for the server's life.
  auto running = std::make_shared<std::atomic<int>>(0);
  router.Add("POST", "/v1/policies/backtest", Access::Bearer(auth::Permission::kRead),
             [&ctx, &policies, running](Call&& call) {
               Backtest(ctx, policies, running, std::move(call));
             });
}

}  // namespace quell::api::internal
