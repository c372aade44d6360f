// The change feed (/v1/changes, long-poll), the snapshot (/v1/snapshot) and the audit
// log (/v1/audit): views of the ledger for consumers and auditors.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "api/internal/context.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"

namespace quell::api::internal {
namespace {

void ServeChanges(Context& ctx, Call call, int64_t after, int limit, absl::Time deadline) {
  ctx.OffLoop(std::move(call), [&ctx, after, limit, deadline](Call& call) {
    auto changes = ctx.deps.ledger->store().ReadChanges(after, limit);
    if (!changes.ok()) return call.Fail(ApiError::FromStatus(changes.status()));
    if (changes->empty() && absl::Now() < deadline) {
      auto shared = std::make_shared<Call>(std::move(call));
      ctx.waiters.Wait(after, deadline, [&ctx, shared, after, limit, deadline] {
        // A commit or the deadline: read again. Past the deadline the reply goes out even
        // if empty.
        ServeChanges(ctx, std::move(*shared), after, limit, std::min(deadline, absl::Now()));
      });
      return;
    }
    std::string body = "{\"changes\":[";
    int64_t next = after;
    bool first = true;
    for (const ledger::Change& c : *changes) {
      next = c.seq;
      if (c.kind != ledger::ChangeKind::kMitigation) continue;
      // The feed speaks of the enforced set: a mitigation is in it while active.
      bool active = c.payload.find("\"state\":\"active\"") != std::string::npos;
      if (!first) body += ',';
      first = false;
      absl::StrAppend(&body, "{\"seq\":", c.seq, ",\"op\":\"", active ? "upsert" : "delete",
                      "\",\"mitigation\":", c.payload, "}");
    }
    absl::StrAppend(&body, "],\"next\":", next, "}");
    call.Send(200, std::move(body));
  });
}

}  // namespace

void AddFeedRoutes(Router& router, Context& ctx) {
  using auth::Permission;

  router.Add("GET", "/v1/changes", Access::Bearer(Permission::kCheck), [&ctx](Call&& call) {
    int64_t after = 0, limit = 1000, wait = 0;
    if (auto e = OnlyParams(call.req, {"after", "limit", "wait"})) return call.Fail(*e);
    if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
    if (auto e = QueryInt(call.req, "limit", 1, 10000, &limit)) return call.Fail(*e);
    if (auto e = QueryInt(call.req, "wait", 0, absl::ToInt64Seconds(ctx.options.max_wait), &wait)) {
      return call.Fail(*e);
    }
    ServeChanges(ctx, std::move(call), after, static_cast<int>(limit),
                 absl::Now() + absl::Seconds(wait));
  });

  // NDJSON: {"seq": N} then one active mitigation per line, from one consistent read;
  // with /v1/changes?after=N a client keeps an exact copy.
  router.Add("GET", "/v1/snapshot", Access::Bearer(Permission::kCheck), [&ctx](Call&& call) {
    ctx.OffLoop(std::move(call), [&ctx](Call& call) {
      std::string lines;
      auto seq = ctx.deps.ledger->store().ScanLive([&lines](const core::Mitigation& m) {
        if (m.state == core::MitigationState::kActive) {
          core::AppendMitigationJson(m, &lines);
          lines += '\n';
        }
        return absl::OkStatus();
      });
      if (!seq.ok()) return call.Fail(ApiError::FromStatus(seq.status()));
      http::Response r;
      r.content_type = "application/x-ndjson";
      r.body = absl::StrCat("{\"seq\":", *seq, "}\n", lines);
      call.Reply(std::move(r));
    });
  });

  router.Add("GET", "/v1/audit", Access::Bearer(Permission::kRead), [&ctx](Call&& call) {
    int64_t after = 0, limit = 1000;
    if (auto e = OnlyParams(call.req, {"after", "limit"})) return call.Fail(*e);
    if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
    if (auto e = QueryInt(call.req, "limit", 1, 10000, &limit)) return call.Fail(*e);
    ctx.OffLoop(std::move(call), [&ctx, after, limit](Call& call) {
      auto changes = ctx.deps.ledger->store().ReadChanges(after, static_cast<int>(limit));
      if (!changes.ok()) return call.Fail(ApiError::FromStatus(changes.status()));
      std::string body = "{\"changes\":[";
      int64_t next = after;
      for (size_t i = 0; i < changes->size(); ++i) {
        const ledger::Change& c = (*changes)[i];
        next = c.seq;
        if (i) body += ',';
        absl::StrAppend(&body, "{\"seq\":", c.seq, ",\"at\":\"", core::FormatRfc3339(c.at),
                        "\",\"kind\":\"", AV(ledger::ChangeKindName(c.kind)), "\",\"actor\":");
        core::AppendJsonString(c.actor, &body);
        body += ",\"subject\":";
        core::AppendJsonString(c.subject, &body);
        body += ",\"entity\":";
        core::AppendJsonString(c.entity, &body);
        absl::StrAppend(&body, ",\"payload\":", c.payload, ",\"prev_hash\":\"", c.prev_hash,
                        "\",\"hash\":\"", c.hash, "\"}");
      }
      absl::StrAppend(&body, "],\"next\":", next, "}");
      call.Send(200, std::move(body));
    });
  });
}

}  // namespace quell::api::internal
