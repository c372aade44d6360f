#include "counters/redis_store.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"

namespace quell::counters {
namespace internal {

// One hiredis connection; null while disconnected.
struct RedisConn {
  absl::Mutex mu;
  redisContext* ctx ABSL_GUARDED_BY(mu) = nullptr;
  absl::Time failed_at ABSL_GUARDED_BY(mu) = absl::InfinitePast();  // real time

  ~RedisConn() {
    absl::MutexLock lock(&mu);
    if (ctx) redisFree(ctx);
  }
};

}  // namespace internal

namespace {

struct ReplyDeleter {
  void operator()(void* r) const { freeReplyObject(r); }
};

}  // namespace

// Commands of one pipeline, their arguments packed in one buffer.
class RedisCounterStore::Commands {
 public:
  void Begin() { cmd_end_.push_back(arg_end_.size()); }
  void Arg(std::string_view a) {
    bytes_.append(a.data(), a.size());
    arg_end_.push_back(bytes_.size());
    cmd_end_.back() = arg_end_.size();
  }
  void Arg(int64_t v) { Arg(SV(absl::StrCat(v))); }
  // A key argument built in place by `build(std::string&)`.
  template <typename F>
  void ArgBuilt(F build) {
    build(bytes_);
    arg_end_.push_back(bytes_.size());
    cmd_end_.back() = arg_end_.size();
  }
  size_t size() const { return cmd_end_.size(); }

  // Appends every command to the context's output buffer.
  int AppendTo(redisContext* ctx) const {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    size_t arg = 0;
    for (size_t c = 0; c < cmd_end_.size(); ++c) {
      argv.clear();
      lens.clear();
      for (; arg < cmd_end_[c]; ++arg) {
        const size_t begin = arg == 0 ? 0 : arg_end_[arg - 1];
        argv.push_back(bytes_.data() + begin);
        lens.push_back(arg_end_[arg] - begin);
      }
      if (redisAppendCommandArgv(ctx, static_cast<int>(argv.size()), argv.data(), lens.data()) !=
          REDIS_OK) {
        return REDIS_ERR;
      }
    }
    return REDIS_OK;
  }

 private:
  std::string bytes_;
  std::vector<size_t> arg_end_;  // end offset in bytes_ of each argument
  std::vector<size_t> cmd_end_;  // end index in arg_end_ of each command
};

absl::StatusOr<std::unique_ptr<RedisCounterStore>> RedisCounterStore::Create(
    std::vector<CounterSpec> specs, RedisOptions options) {
  if (options.connections < 1 || options.connections > 256) {
    return absl::InvalidArgumentError("connections must be in 1..256");
  }
  if (options.host.empty() || options.port < 1 || options.port > 65535) {
    return absl::InvalidArgumentError("redis host and port are required");
  }
  if (options.connect_timeout <= absl::ZeroDuration() ||
      options.io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("redis timeouts must be > 0");
  }
  auto set = CounterSet::Create(std::move(specs), options.time);
  if (!set.ok()) return set.status();
  return std::unique_ptr<RedisCounterStore>(new RedisCounterStore(*std::move(set), options));
}

RedisCounterStore::RedisCounterStore(CounterSet set, RedisOptions options)
    : set_(std::move(set)), options_(std::move(options)) {
  for (int c = 0; c < set_.size(); ++c) {
    std::vector<std::string> stems;
    for (absl::Duration w : set_.spec(c).windows) {
      stems.push_back(absl::StrCat(options_.key_prefix, "{", set_.spec(c).name, "|",
                                   core::DurationString(w), "|"));
    }
    stems_.push_back(std::move(stems));
  }
  for (int i = 0; i < options_.connections; ++i) {
    conns_.push_back(std::make_unique<internal::RedisConn>());
  }
}

RedisCounterStore::~RedisCounterStore() = default;

void RedisCounterStore::AppendKey(std::string& out, int counter, int window, std::string_view key,
                                  int64_t bucket) const {
  out += stems_[counter][window];
  out.append(key.data(), key.size());
  out += "}:";
  absl::StrAppend(&out, bucket);
}

std::string RedisCounterStore::KeyForTest(int counter, int window, std::string_view key,
                                          int64_t bucket) const {
  std::string out;
  AppendKey(out, counter, window, key, bucket);
  return out;
}

absl::Status RedisCounterStore::Execute(const Commands& commands, std::vector<void*>& replies) {
  replies.clear();
  internal::RedisConn& conn =
      *conns_[next_conn_.fetch_add(1, std::memory_order_relaxed) % conns_.size()];
  absl::MutexLock lock(&conn.mu);
  auto fail = [&](std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(conn.mu) {
    std::string detail = conn.ctx && conn.ctx->err ? conn.ctx->errstr : "";
    if (conn.ctx) redisFree(conn.ctx);
    conn.ctx = nullptr;
    conn.failed_at = absl::Now();
    for (void* r : replies) freeReplyObject(r);
    replies.clear();
    unavailable_.fetch_add(1, std::memory_order_relaxed);
    return absl::UnavailableError(absl::StrCat("redis ", options_.host, ":", options_.port, ": ",
                                               AV(what), detail.empty() ? "" : ": ", detail));
  };
  if (conn.ctx == nullptr) {
    // Back off after a failure, unless another connection has succeeded since.
    const int64_t last_success = last_success_us_.load(std::memory_order_relaxed);
    if (absl::Now() < conn.failed_at + options_.reconnect_backoff &&
        last_success < absl::ToUnixMicros(conn.failed_at)) {
      unavailable_.fetch_add(1, std::memory_order_relaxed);
      return absl::UnavailableError(absl::StrCat("redis ", options_.host, ":", options_.port,
                                                 ": down (waiting to reconnect)"));
    }
    conn.ctx = redisConnectWithTimeout(options_.host.c_str(), options_.port,
                                       absl::ToTimeval(options_.connect_timeout));
    if (conn.ctx == nullptr || conn.ctx->err) return fail("connect failed");
    if (redisSetTimeout(conn.ctx, absl::ToTimeval(options_.io_timeout)) != REDIS_OK) {
      return fail("setting the timeout failed");
    }
    reconnects_.fetch_add(1, std::memory_order_relaxed);
  }
  if (commands.AppendTo(conn.ctx) != REDIS_OK) return fail("append failed");
  commands_.fetch_add(static_cast<int64_t>(commands.size()), std::memory_order_relaxed);
  replies.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    void* reply = nullptr;
    if (redisGetReply(conn.ctx, &reply) != REDIS_OK || reply == nullptr) {
      return fail("request failed");
    }
    replies.push_back(reply);
  }
  last_success_us_.store(absl::ToUnixMicros(absl::Now()), std::memory_order_relaxed);
  return absl::OkStatus();
}

namespace {

// Frees replies when it goes out of scope.
struct Replies {
  std::vector<void*> items;
  ~Replies() {
    for (void* r : items) freeReplyObject(r);
  }
  const redisReply& operator[](size_t i) const { return *static_cast<redisReply*>(items[i]); }
};

absl::Status ReplyError(const redisReply& r) {
  return absl::InternalError(absl::StrCat("redis error: ", std::string(r.str, r.len)));
}

}  // namespace

absl::StatusOr<RecordSummary> RedisCounterStore::Record(absl::Span<const Observation> batch,
                                                        absl::Time now,
                                                        absl::Span<RecordOutcome> outcomes) {
  if (!outcomes.empty() && outcomes.size() != batch.size()) {
    return absl::InvalidArgumentError("outcomes must be empty or as long as the batch");
  }
  // Sum observations per bucket key first: one INCRBY / PFADD per key.
  struct Pending {
    std::string key;
    bool distinct = false;
    int64_t n = 0;
    int64_t ttl_ms = 0;
    std::vector<std::string_view> values;
  };
  std::vector<Pending> pending;                    // in first-seen order
  absl::flat_hash_map<std::string, size_t> index;  // key -> position in `pending`
  const int64_t now_us = absl::ToUnixMicros(now);
  const int64_t margin_ms = absl::ToInt64Milliseconds(options_.expire_margin);
  RecordSummary summary;
  std::string key;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Observation& o = batch[i];
    const RecordOutcome outcome = internal::Classify(set_, o, now);
    if (!outcomes.empty()) outcomes[i] = outcome;
    switch (outcome) {
      case RecordOutcome::kTooLate:
        ++summary.too_late;
        continue;
      case RecordOutcome::kTooEarly:
        ++summary.too_early;
        continue;
      case RecordOutcome::kInvalid:
        ++summary.invalid;
        continue;
      case RecordOutcome::kCounted:
        ++summary.counted;
        break;
    }
    const bool distinct = set_.spec(o.counter).is_distinct();
    const auto& geometry = set_.geometry(o.counter);
    for (size_t w = 0; w < geometry.size(); ++w) {
      const WindowGeometry& g = geometry[w];
      const int64_t b = g.BucketOf(o.at);
      if (b < g.OldestBucket(now)) continue;  // late, and already out of this window
      key.clear();
      AppendKey(key, o.counter, static_cast<int>(w), o.key, b);
      auto [it, inserted] = index.try_emplace(key, pending.size());
      if (inserted) pending.emplace_back().key = key;
      Pending& p = pending[it->second];
      if (inserted) {
        p.distinct = distinct;
        // The bucket is read until now >= (b + buckets) * width.
        const int64_t until_us = (b + g.buckets) * g.width_us;
        p.ttl_ms = (until_us - now_us + 999) / 1000 + margin_ms;
      }
      ++p.n;
      if (distinct) p.values.push_back(o.value);
    }
  }
  if (!pending.empty()) {
    Commands commands;
    for (const Pending& p : pending) {
      const std::string* k = &p.key;
      commands.Begin();
      if (p.distinct) {
        commands.Arg("PFADD");
        commands.Arg(*k);
        for (std::string_view v : p.values) commands.Arg(v);
      } else {
        commands.Arg("INCRBY");
        commands.Arg(*k);
        commands.Arg(p.n);
      }
      commands.Begin();
      commands.Arg("PEXPIRE");
      commands.Arg(*k);
      commands.Arg(p.ttl_ms);
    }
    Replies replies;
    absl::Status s = Execute(commands, replies.items);
    if (!s.ok()) return s;
    for (size_t i = 0; i < replies.items.size(); ++i) {
      if (replies[i].type == REDIS_REPLY_ERROR) return ReplyError(replies[i]);
    }
  }
  if (summary.counted) counted_.fetch_add(summary.counted, std::memory_order_relaxed);
  if (summary.too_late) too_late_.fetch_add(summary.too_late, std::memory_order_relaxed);
  if (summary.too_early) too_early_.fetch_add(summary.too_early, std::memory_order_relaxed);
  if (summary.invalid) invalid_.fetch_add(summary.invalid, std::memory_order_relaxed);
  return summary;
}

absl::Status RedisCounterStore::Read(absl::Span<const ReadRequest> reads, absl::Time now,
                                     absl::Span<int64_t> values) {
  if (values.size() != reads.size()) {
    return absl::InvalidArgumentError("values must be as long as reads");
  }
  if (reads.empty()) return absl::OkStatus();
  Commands commands;
  for (const ReadRequest& r : reads) {
    auto w = internal::ResolveRead(set_, r);
    if (!w.ok()) return w.status();
    const WindowGeometry& g = set_.geometry(r.counter)[*w];
    const int64_t newest = g.BucketOf(now);
    commands.Begin();
    commands.Arg(set_.spec(r.counter).is_distinct() ? "PFCOUNT" : "MGET");
    for (int64_t b = newest - g.buckets + 1; b <= newest; ++b) {
      commands.ArgBuilt([&](std::string& out) { AppendKey(out, r.counter, *w, r.key, b); });
    }
  }
  Replies replies;
  absl::Status s = Execute(commands, replies.items);
  if (!s.ok()) return s;
  for (size_t i = 0; i < reads.size(); ++i) {
    const redisReply& r = replies[i];
    if (r.type == REDIS_REPLY_ERROR) return ReplyError(r);
    if (r.type == REDIS_REPLY_INTEGER) {  // PFCOUNT
      values[i] = r.integer;
      continue;
    }
    if (r.type != REDIS_REPLY_ARRAY) return absl::InternalError("redis: unexpected MGET reply");
    int64_t sum = 0;
    for (size_t e = 0; e < r.elements; ++e) {
      const redisReply& item = *r.element[e];
      if (item.type != REDIS_REPLY_STRING) continue;  // nil: an empty bucket
      int64_t v;
      if (!absl::SimpleAtoi(absl::string_view(item.str, item.len), &v)) {
        return absl::InternalError("redis: a bucket key does not hold an integer");
      }
      sum += v;
    }
    values[i] = sum;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RedisCounterStore::Count(std::string_view counter, std::string_view key,
                                                 absl::Duration window, absl::Time now) {
  int c;
  auto w = internal::ResolveRead(set_, counter, /*want_distinct=*/false, window, &c);
  if (!w.ok()) return w.status();
  ReadRequest r{c, key, window};
  int64_t v = 0;
  QUELL_RETURN_IF_ERROR(Read({&r, 1}, now, {&v, 1}));
  return v;
}

absl::StatusOr<int64_t> RedisCounterStore::Distinct(std::string_view counter, std::string_view key,
                                                    absl::Duration window, absl::Time now) {
  int c;
  auto w = internal::ResolveRead(set_, counter, /*want_distinct=*/true, window, &c);
  if (!w.ok()) return w.status();
  ReadRequest r{c, key, window};
  int64_t v = 0;
  QUELL_RETURN_IF_ERROR(Read({&r, 1}, now, {&v, 1}));
  return v;
}

StoreStats RedisCounterStore::Stats() const {
  StoreStats st;
  st.counted = counted_.load(std::memory_order_relaxed);
  st.rejected_too_late = too_late_.load(std::memory_order_relaxed);
  st.rejected_too_early = too_early_.load(std::memory_order_relaxed);
  st.rejected_invalid = invalid_.load(std::memory_order_relaxed);
  st.unavailable = unavailable_.load(std::memory_order_relaxed);
  st.reconnects = reconnects_.load(std::memory_order_relaxed);
  st.commands = commands_.load(std::memory_order_relaxed);
  return st;
}

}  // namespace quell::counters
