// The change feed (/v1/changes, long-poll), the snapshot (/v1/snapshot) and the audit
// log (/v1/audit): views of the ledger for consumers and auditors.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "api/internal/context.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/threads.h"
#include "core/time.h"

namespace quell::api::internal {
namespace {

// Fails a read that found nothing after a cursor past the ledger's last change (a
// waiting feed would skip every change up to it); false if the cursor is fine.
bool FailCursorAhead(Context& ctx, Call& call, int64_t after) {
  absl::Status st = ledger::CheckCursor(*ctx.deps.ledger, after);
  if (st.ok()) return false;
  call.Fail(absl::IsOutOfRange(st) ? ApiError::CursorAhead(std::string(SV(st.message())))
                                   : ApiError::FromStatus(st));
  return true;
}

// `first`: the request's first read (a later one, after a wait, need not check the cursor
// again: the ledger's last change only moves forward).
void ServeChanges(Context& ctx, Call call, int64_t after, int limit, absl::Time deadline,
                  bool first) {
  ctx.OffLoop(std::move(call), [&ctx, after, limit, deadline, first](Call& call) {
    // Woken by a commit or the deadline: the key is checked again, so one revoked while
    // the poll waited gets no change written after its revocation (as gRPC's Watch).
    if (!first) {
      auto who = ctx.deps.keys->AuthenticateBearer(call.req.Header("authorization"));
      if (!who.ok()) {
        return call.Fail(absl::IsUnavailable(who.status()) ? ApiError::FromStatus(who.status())
                                                           : ApiError::Unauthenticated());
      }
    }
    auto changes = ledger::ReadDurableChanges(*ctx.deps.ledger, after, limit);
    if (!changes.ok()) return call.Fail(ApiError::FromStatus(changes.status()));
    if (changes->empty() && first && FailCursorAhead(ctx, call, after)) return;
    if (changes->empty() && absl::Now() < deadline) {
      auto shared = std::make_shared<Call>(std::move(call));
      ctx.waiters.Wait(after, deadline, [&ctx, shared, after, limit, deadline] {
        // A commit or the deadline: read again. Past the deadline the reply goes out even
        // if empty.
        ServeChanges(ctx, std::move(*shared), after, limit, std::min(deadline, absl::Now()),
                     /*first=*/false);
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

// One snapshot in flight: a producer thread fills `chunks`, the connection's IO thread
// takes them (never waiting: an empty queue means "nothing yet", and the server asks
// again). When the client goes away the consumer side is destroyed and the producer
// stops at its next chunk. A store error mid-scan ends the body with an
// {"error": ...} line, so a client can tell an incomplete snapshot from a complete one.
class SnapshotStream {
 public:
  static constexpr size_t kChunkBytes = 256 * 1024;
  static constexpr size_t kMaxQueued = 16;
  static constexpr int kMaxConcurrent = 4;

  // Called once, on the producer's thread: with the stream once the body's first line
  // (the seq) is ready, or with the error that stopped the scan before it — that error is
  // the request's answer (a 503 while the store is down), not a 200 whose body is only an
  // error line. Until then the producer holds the stream; afterwards whoever on_start
  // gave it to (the connection: its going away cancels the scan).
  using OnStart = std::function<void(std::shared_ptr<SnapshotStream>, absl::Status)>;

  // False when kMaxConcurrent snapshots are already being produced (on_start not called).
  // `enforcement`: each line holds only id, entity, action, state and expires_at.
  static bool Start(Context& ctx, bool enforcement, OnStart on_start) {
    if (!ctx.background.TryEnter(kMaxConcurrent)) return false;
    auto state = std::make_shared<State>();
    std::shared_ptr<SnapshotStream> stream(new SnapshotStream(state));
    std::thread([state, stream = std::move(stream), on_start = std::move(on_start), &ctx,
                 enforcement]() mutable {
      core::NameThisThread("quell-snapshot");
      auto started = [&](absl::Status st) {  // once: hands the stream over
        OnStart call = std::move(on_start);
        call(std::move(stream), std::move(st));
      };
      Produce(*state, *ctx.deps.ledger, enforcement, started);
      ctx.background.Exit();
    }).detach();
    return true;
  }

  ~SnapshotStream() {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancelled = true;
    state_->cv.notify_all();
  }

  bool Next(std::string* chunk) {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->chunks.empty()) {
      chunk->append(state_->chunks.front());
      state_->chunks.pop_front();
      state_->cv.notify_all();
      return true;
    }
    return !state_->done;
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> chunks;  // guarded by mu
    bool done = false;               // guarded by mu
    bool cancelled = false;          // guarded by mu
  };

  explicit SnapshotStream(std::shared_ptr<State> state) : state_(std::move(state)) {}

  // Hands a full chunk over; false when the consumer is gone.
  static bool Push(State& st, std::string* buf) {
    std::unique_lock<std::mutex> lock(st.mu);
    st.cv.wait(lock, [&] { return st.cancelled || st.chunks.size() < kMaxQueued; });
    if (st.cancelled) return false;
    st.chunks.push_back(std::move(*buf));
    buf->clear();
    buf->reserve(kChunkBytes + 4096);
    return true;
  }

  static void Produce(State& st, ledger::Ledger& ledger, bool enforcement,
                      const std::function<void(absl::Status)>& started) {
    ledger::Store& store = ledger.store();
    std::string buf;
    buf.reserve(kChunkBytes + 4096);
    // The client continues with /v1/changes?after=seq: seq must be durable (a crash could
    // reuse it otherwise), so the header waits for it; the scan's read holds meanwhile.
    absl::Status durable;
    bool sent_header = false;
    auto header = [&](int64_t seq) {
      durable = ledger::WaitDurable(ledger, seq, absl::Seconds(10));
      if (!durable.ok()) return;
      absl::StrAppend(&buf, "{\"seq\":", seq, "}\n");
      sent_header = true;
      started(absl::OkStatus());
    };
    auto line_done = [&]() -> absl::Status {
      if (!durable.ok()) return durable;
      buf.push_back('\n');
      if (buf.size() >= kChunkBytes && !Push(st, &buf)) {
        return absl::CancelledError("client went away");
      }
      return absl::OkStatus();
    };
    absl::StatusOr<int64_t> result;
    if (enforcement) {
      result = store.ScanActiveEntries(header, [&](const ledger::Store::ActiveEntry& e) {
        buf += "{\"id\":";
        core::AppendJsonString(e.id, &buf);
        buf += ",\"entity\":";
        core::AppendJsonString(e.entity, &buf);
        buf += ",\"action\":";
        core::AppendJsonString(e.action, &buf);
        buf += ",\"state\":\"active\",\"expires_at\":\"";
        char time[core::kRfc3339MaxBytes];
        buf += core::FormatRfc3339To(e.expires_at, time);
        buf += "\"}";
        return line_done();
      });
    } else {
      result = store.ScanActiveJson(header, [&](std::string_view json) {
        buf.append(json);
        return line_done();
      });
    }
    // With no entries, no line_done returned the header's error: report it here.
    if (result.ok() && !durable.ok()) result = durable;
    if (!sent_header) {  // nothing sent yet: the error is the reply's status
      {
        std::lock_guard<std::mutex> lock(st.mu);
        st.done = true;
      }
      started(result.ok() ? absl::InternalError("snapshot without a seq") : result.status());
      return;
    }
    if (!result.ok() && result.status().code() != absl::StatusCode::kCancelled) {
      buf += ErrorJson(ApiError::FromStatus(result.status()));
      buf += '\n';
    }
    if (result.ok() || result.status().code() != absl::StatusCode::kCancelled) Push(st, &buf);
    std::lock_guard<std::mutex> lock(st.mu);
    st.done = true;
  }

  std::shared_ptr<State> state_;
};

}  // namespace

void AddFeedRoutes(Router& router, Context& ctx) {
  using auth::Permission;

  router.Add(
      "GET", "/v1/changes", Access::Bearer(Permission::kCheck),
      [&ctx](Call&& call) {
        int64_t after = 0, limit = 1000, wait = 0;
        if (auto e = OnlyParams(call.req, {"after", "limit", "wait"})) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "limit", 1, 10000, &limit)) return call.Fail(*e);
        if (auto e =
                QueryInt(call.req, "wait", 0, absl::ToInt64Seconds(ctx.options.max_wait), &wait)) {
          return call.Fail(*e);
        }
        ServeChanges(ctx, std::move(call), after, static_cast<int>(limit),
                     absl::Now() + absl::Seconds(wait), /*first=*/true);
      },
      Router::Query::kHandler);

  // NDJSON: {"seq": N} then one active mitigation per line, from one consistent read;
  // with /v1/changes?after=N a client keeps an exact copy. Streamed: a producer thread
  // scans the store into a bounded queue of chunks that the connection drains, so a
  // million mitigations never sit in memory at once and the first bytes leave at once.
  // ?view=enforcement: only what enforcing takes (id, entity, action, state, expires_at),
  // a quarter of the bytes; what quell::client's mirror loads.
  router.Add(
      "GET", "/v1/snapshot", Access::Bearer(Permission::kCheck),
      [&ctx](Call&& call) {
        if (auto e = OnlyParams(call.req, {"view"})) return call.Fail(*e);
        const std::string_view view = call.req.QueryParam("view").value_or("full");
        if (view != "full" && view != "enforcement") {  // `view=` (empty) too
          return call.Fail(ApiError::Field("query.view", "must be full or enforcement"));
        }
        auto pending = std::make_shared<Call>(std::move(call));
        const bool started = SnapshotStream::Start(
            ctx, view == "enforcement",
            [pending](std::shared_ptr<SnapshotStream> stream, absl::Status st) {
              if (!st.ok()) return pending->Fail(ApiError::FromStatus(st));
              http::Response r;
              r.content_type = "application/x-ndjson";
              r.stream = [stream = std::move(stream)](std::string* chunk) {
                return stream->Next(chunk);
              };
              pending->Reply(std::move(r));
            });
        if (!started) {
          return pending->Fail(ApiError::Unavailable("too many snapshots in progress"));
        }
      },
      Router::Query::kHandler);

  router.Add(
      "GET", "/v1/audit", Access::Bearer(Permission::kRead),
      [&ctx](Call&& call) {
        int64_t after = 0, limit = 1000;
        if (auto e = OnlyParams(call.req, {"after", "limit"})) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "after", 0, INT64_MAX, &after)) return call.Fail(*e);
        if (auto e = QueryInt(call.req, "limit", 1, 10000, &limit)) return call.Fail(*e);
        ctx.OffLoop(std::move(call), [&ctx, after, limit](Call& call) {
          auto changes =
              ledger::ReadDurableChanges(*ctx.deps.ledger, after, static_cast<int>(limit));
          if (!changes.ok()) return call.Fail(ApiError::FromStatus(changes.status()));
          if (changes->empty() && FailCursorAhead(ctx, call, after)) return;
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
      },
      Router::Query::kHandler);
}

}  // namespace quell::api::internal
