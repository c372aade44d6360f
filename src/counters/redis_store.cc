#include "counters/redis_store.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
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

void RedisCounterStore::AppendHashKey(std::string& out, int counter, int window,
                                      std::string_view key) const {
  out += stems_[counter][window];
  out.append(key.data(), key.size());
  out += '}';
}

void RedisCounterStore::AppendKey(std::string& out, int counter, int window, std::string_view key,
                                  int64_t bucket) const {
  AppendHashKey(out, counter, window, key);
  out += ':';
  absl::StrAppend(&out, bucket);
}

std::string RedisCounterStore::KeyForTest(int counter, int window, std::string_view key,
                                          int64_t bucket) const {
  std::string out;
  if (set_.spec(counter).is_distinct()) {
    AppendKey(out, counter, window, key, bucket);
  } else {
    AppendHashKey(out, counter, window, key);
  }
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

namespace {

// Drops the fields of window hash KEYS[i] older than bucket ARGV[i] (they have left
// the window): a hash holds few fields, so HKEYS and the comparison run server side.
constexpr char kCleanupScript[] = R"lua(
for i = 1, #KEYS do
  local oldest = tonumber(ARGV[i])
  for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
    if tonumber(f) < oldest then redis.call('HDEL', KEYS[i], f) end
  end
end
return 0
)lua";

}  // namespace

absl::StatusOr<RecordSummary> RedisCounterStore::Record(absl::Span<const Observation> batch,
                                                        absl::Time now,
                                                        absl::Span<RecordOutcome> outcomes) {
  if (!outcomes.empty() && outcomes.size() != batch.size()) {
    return absl::InvalidArgumentError("outcomes must be empty or as long as the batch");
  }
  // Group observations by window hash, then by bucket: one HINCRBY / PFADD per bucket.
  struct Bucket {
    int64_t bucket = 0;
    int64_t n = 0;
    int64_t ttl_ms = 0;  // distinct: the bucket key's TTL
    std::vector<std::string_view> values;
  };
  struct HashOp {
    std::string key;
    bool distinct = false;
    int64_t ttl_ms = 0;
    int64_t oldest = 0;
    absl::InlinedVector<Bucket, 1> buckets;
  };
  std::vector<HashOp> ops;                         // in first-seen order
  absl::flat_hash_map<std::string, size_t> index;  // hash key -> position in `ops`
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
      const int64_t oldest = g.OldestBucket(now);
      if (b < oldest) continue;  // late, and already out of this window
      key.clear();
      AppendHashKey(key, o.counter, static_cast<int>(w), o.key);
      auto [it, inserted] = index.try_emplace(key, ops.size());
      if (inserted) {
        HashOp& op = ops.emplace_back();
        op.key = key;
        op.distinct = distinct;
        op.oldest = oldest;
      }
      HashOp& op = ops[it->second];
      // The bucket is read until now >= (b + buckets) * width.
      const int64_t until_us = (b + g.buckets) * g.width_us;
      const int64_t ttl_ms = (until_us - now_us + 999) / 1000 + margin_ms;
      op.ttl_ms = std::max(op.ttl_ms, ttl_ms);
      Bucket* bucket = nullptr;
      for (Bucket& x : op.buckets) {
        if (x.bucket == b) bucket = &x;
      }
      if (bucket == nullptr) {
        bucket = &op.buckets.emplace_back();
        bucket->bucket = b;
        bucket->ttl_ms = ttl_ms;
      }
      ++bucket->n;
      if (distinct) bucket->values.push_back(o.value);
    }
  }
  if (!ops.empty()) {
    // Round trip 1, plain pipelined commands: per bucket HINCRBY (count) or PFADD +
    // PEXPIRE of the sketch + HSET of its index field (distinct); per window hash
    // PEXPIRE NX (a hash this batch created) and PEXPIRE GT (an existing one: extended,
    // never shortened).
    Commands commands;
    for (const HashOp& op : ops) {
      for (const Bucket& x : op.buckets) {
        if (op.distinct) {
          std::string bucket_key = absl::StrCat(op.key, ":", x.bucket);
          commands.Begin();
          commands.Arg("PFADD");
          commands.Arg(bucket_key);
          for (std::string_view v : x.values) commands.Arg(v);
          commands.Begin();
          commands.Arg("PEXPIRE");
          commands.Arg(bucket_key);
          commands.Arg(x.ttl_ms);
          commands.Begin();
          commands.Arg("HSET");
          commands.Arg(op.key);
          commands.Arg(x.bucket);
          commands.Arg("1");
        } else {
          commands.Begin();
          commands.Arg("HINCRBY");
          commands.Arg(op.key);
          commands.Arg(x.bucket);
          commands.Arg(x.n);
        }
      }
      for (const char* mode : {"NX", "GT"}) {
        commands.Begin();
        commands.Arg("PEXPIRE");
        commands.Arg(op.key);
        commands.Arg(op.ttl_ms);
        commands.Arg(mode);
      }
    }
    std::vector<size_t> stale;  // ops whose existing hash just started a new bucket
    {
      Replies replies;
      absl::Status s = Execute(commands, replies.items);
      if (!s.ok()) return s;
      size_t r = 0;
      for (size_t k = 0; k < ops.size(); ++k) {
        const HashOp& op = ops[k];
        bool new_bucket = false;
        for (const Bucket& x : op.buckets) {
          const size_t field_reply = op.distinct ? r + 2 : r;
          for (size_t end = r + (op.distinct ? 3 : 1); r < end; ++r) {
            if (replies[r].type == REDIS_REPLY_ERROR) return ReplyError(replies[r]);
          }
          const redisReply& f = replies[field_reply];
          if (f.type == REDIS_REPLY_INTEGER && f.integer == (op.distinct ? 1 : x.n)) {
            new_bucket = true;
          }
        }
        const redisReply& nx = replies[r];
        for (size_t end = r + 2; r < end; ++r) {
          if (replies[r].type == REDIS_REPLY_ERROR) return ReplyError(replies[r]);
        }
        const bool existed = nx.type == REDIS_REPLY_INTEGER && nx.integer == 0;
        if (new_bucket && existed) stale.push_back(k);
      }
    }
    // Round trip 2, only when an existing hash started a new bucket (a busy key, once per
    // bucket width): drop its fields that have left the window, in short scripts.
    if (!stale.empty()) {
      constexpr size_t kKeysPerScript = 64;
      Commands cleanup;
      for (size_t first = 0; first < stale.size(); first += kKeysPerScript) {
        const size_t last = std::min(stale.size(), first + kKeysPerScript);
        cleanup.Begin();
        cleanup.Arg("EVAL");
        cleanup.Arg(kCleanupScript);
        cleanup.Arg(static_cast<int64_t>(last - first));
        for (size_t k = first; k < last; ++k) cleanup.Arg(ops[stale[k]].key);
        for (size_t k = first; k < last; ++k) cleanup.Arg(ops[stale[k]].oldest);
      }
      Replies replies;
      absl::Status s = Execute(cleanup, replies.items);
      if (!s.ok()) return s;
      for (size_t i = 0; i < replies.items.size(); ++i) {
        if (replies[i].type == REDIS_REPLY_ERROR) return ReplyError(replies[i]);
      }
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
  // Round trip 1: each read's window hash (HGETALL: bucket -> count; HKEYS: the buckets a
  // distinct counter has sketches for).
  absl::InlinedVector<int, 8> windows;
  Commands commands;
  for (const ReadRequest& r : reads) {
    auto w = internal::ResolveRead(set_, r);
    if (!w.ok()) return w.status();
    windows.push_back(*w);
    commands.Begin();
    commands.Arg(set_.spec(r.counter).is_distinct() ? "HKEYS" : "HGETALL");
    commands.ArgBuilt([&](std::string& out) { AppendHashKey(out, r.counter, *w, r.key); });
  }
  Replies replies;
  absl::Status s = Execute(commands, replies.items);
  if (!s.ok()) return s;
  // Round trip 2 (only if a distinct window holds sketches): PFCOUNT over the buckets
  // inside the window, usually one key (Redis's cached cardinality, no merge).
  Commands counts;
  std::vector<size_t> counted_read;  // counts command -> read index
  for (size_t i = 0; i < reads.size(); ++i) {
    const redisReply& r = replies[i];
    if (r.type == REDIS_REPLY_ERROR) return ReplyError(r);
    if (r.type != REDIS_REPLY_ARRAY) return absl::InternalError("redis: unexpected hash reply");
    const WindowGeometry& g = set_.geometry(reads[i].counter)[windows[i]];
    const int64_t newest = g.BucketOf(now);
    const int64_t oldest = newest - g.buckets + 1;
    auto bucket_of = [](const redisReply& e, int64_t* b) {
      return e.type == REDIS_REPLY_STRING && absl::SimpleAtoi(absl::string_view(e.str, e.len), b);
    };
    values[i] = 0;
    if (set_.spec(reads[i].counter).is_distinct()) {
      bool any = false;
      for (size_t e = 0; e < r.elements; ++e) {
        int64_t b;
        if (!bucket_of(*r.element[e], &b)) {
          return absl::InternalError("redis: a window hash field is not a bucket");
        }
        if (b < oldest || b > newest) continue;
        if (!any) {
          counts.Begin();
          counts.Arg("PFCOUNT");
          counted_read.push_back(i);
          any = true;
        }
        counts.ArgBuilt([&](std::string& out) {
          AppendKey(out, reads[i].counter, windows[i], reads[i].key, b);
        });
      }
      continue;
    }
    int64_t sum = 0;
    for (size_t e = 0; e + 1 < r.elements; e += 2) {
      int64_t b, v;
      if (!bucket_of(*r.element[e], &b) || !bucket_of(*r.element[e + 1], &v)) {
        return absl::InternalError("redis: a window hash does not hold bucket counts");
      }
      if (b >= oldest && b <= newest) sum += v;
    }
    values[i] = sum;
  }
  if (counts.size() == 0) return absl::OkStatus();
  Replies estimates;
  s = Execute(counts, estimates.items);
  if (!s.ok()) return s;
  for (size_t k = 0; k < counted_read.size(); ++k) {
    const redisReply& r = estimates[k];
    if (r.type == REDIS_REPLY_ERROR) return ReplyError(r);
    if (r.type != REDIS_REPLY_INTEGER)
      return absl::InternalError("redis: unexpected PFCOUNT reply");
    values[counted_read[k]] = r.integer;
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
