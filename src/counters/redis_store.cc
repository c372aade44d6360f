#include "counters/redis_store.h"

#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "counters/internal/floor_div.h"
#include "counters/internal/hll.h"
#include "counters/internal/resp.h"

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

// The keys whose TTL this node has set, and to which deadline (unix ms): a write to a
// key whose TTL is already at least the deadline it needs sends no PEXPIRE; and when
// this node last dropped a hash's fields that left their windows, and whether a distinct
// hash has been promoted to sketches (valid while the hash's deadline has not passed). Keyed
// by a 64-bit hash of the Redis key. Bounded by two generations: when the current one is
// full it becomes the old one (the previous old one is dropped), and an entry found in the
// old one moves back to the current one when used (Touch), so keys written again within a
// generation (users, playlists) keep their entries while one-off keys (a new IP per
// event) age out. Cleared whenever a connection is (re)established or fails (Redis may
// have restarted and lost the keys): such a Clear moves epoch(), so a batch that read the
// cache before it knows its skipped TTLs may be gone.
// Thread-safety: thread-safe.
class TtlCache {
 public:
  explicit TtlCache(size_t max_entries) : max_entries_(max_entries) {}
  struct Entry {
    int64_t deadline_ms = 0;  // the TTL this node last set, or 0
    int64_t cleaned_ms = 0;   // when this node last cleaned the hash, or 0
    bool promoted = false;    // a distinct hash this node saw holding sketches
  };
  Entry Get(uint64_t key_hash) ABSL_SHARED_LOCKS_REQUIRED(mu) {
    auto it = set_.find(key_hash);
    if (it != set_.end()) return it->second;
    it = old_.find(key_hash);
    return it == old_.end() ? Entry() : it->second;
  }
  // Keeps the entry of a key this node is using in the current generation.
  void Touch(uint64_t key_hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!set_.contains(key_hash) && old_.contains(key_hash)) Slot(key_hash);
  }
  void Note(uint64_t key_hash, int64_t deadline_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = Slot(key_hash);
    e.deadline_ms = std::max(e.deadline_ms, deadline_ms);
  }
  void NoteCleaned(uint64_t key_hash, int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Entry& e = Slot(key_hash);
    e.cleaned_ms = std::max(e.cleaned_ms, now_ms);
  }
  void NotePromoted(uint64_t key_hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Slot(key_hash).promoted = true;
  }
  void Clear() {
    absl::MutexLock lock(&mu);
    set_.clear();
    old_.clear();
    epoch_.fetch_add(1, std::memory_order_relaxed);
  }
  uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }
  absl::Mutex mu;

 private:
  Entry& Slot(uint64_t key_hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = set_.find(key_hash);
    if (it != set_.end()) return it->second;
    if (set_.size() >= max_entries_) {
      old_.swap(set_);
      set_.clear();
    }
    Entry& e = set_[key_hash];
    if (auto was = old_.find(key_hash); was != old_.end()) e = was->second;
    return e;
  }
  const size_t max_entries_;                                      // per generation
  absl::flat_hash_map<uint64_t, Entry> set_ ABSL_GUARDED_BY(mu);  // current generation
  absl::flat_hash_map<uint64_t, Entry> old_ ABSL_GUARDED_BY(mu);  // previous generation
  std::atomic<uint64_t> epoch_{0};                                // Clear()s so far
};

}  // namespace internal

namespace {

// Writes the decimal digits of `v` at `p`; returns the end.
char* PutInt(char* p, int64_t v) { return std::to_chars(p, p + 20, v).ptr; }

}  // namespace

using Reply = internal::RedisReply;
using Replies = internal::RedisReplies;

// Commands of one pipeline, their arguments packed in one buffer.
class RedisCounterStore::Commands {
 public:
  // Starts the next command; its arguments follow.
  void Begin() {
    Close();
    start_ = out_.size();
    args_ = 0;
    open_ = true;
    ++count_;
  }
  void Arg(std::string_view a) {
    PutLen(out_.size(), '$', a.size());
    out_.append(a.data(), a.size());
    out_ += "\r\n";
    ++args_;
  }
  void Arg(int64_t v) {
    char digits[24];
    Arg(std::string_view(digits, PutInt(digits, v) - digits));
  }
  // An argument built in place by `build(std::string&)` (appending to it).
  template <typename F>
  void ArgBuilt(F build) {
    const size_t at = out_.size();
    build(out_);
    PutLen(at, '$', out_.size() - at);
    out_ += "\r\n";
    ++args_;
  }
  size_t size() const { return count_; }
  // The commands in Redis's protocol (RESP), for one write.
  const std::string& Finish() {
    Close();
    return out_;
  }

 private:
  // Inserts "<tag><n>\r\n" at `at`: the commands are written in RESP as they are built,
  // and a length is known only once its argument (or command) is complete, so it goes in
  // front of it then (moving a few dozen bytes, not the whole pipeline).
  void PutLen(size_t at, char tag, size_t n) {
    char head[24];
    head[0] = tag;
    char* p = PutInt(head + 1, static_cast<int64_t>(n));
    *p++ = '\r';
    *p++ = '\n';
    out_.insert(at, head, p - head);
  }
  void Close() {
    if (open_) PutLen(start_, '*', args_);
    open_ = false;
  }

  std::string out_;
  size_t start_ = 0;  // of the open command in out_
  size_t args_ = 0;   // of the open command
  size_t count_ = 0;
  bool open_ = false;
};

absl::StatusOr<std::unique_ptr<RedisCounterStore>> RedisCounterStore::Create(
    std::vector<CounterSpec> specs, RedisOptions options) {
  if (options.connections < 1 || options.connections > 256) {
    return absl::InvalidArgumentError("connections must be in 1..256");
  }
  if (options.ttl_cache_entries < 1) {
    return absl::InvalidArgumentError("ttl_cache_entries must be >= 1");
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
    // A distinct counter's name carries "#d" (no counter name holds '#'): a name that a
    // later policy set gives to the other kind starts on keys of its own, instead of
    // reading and writing the old kind's fields (both have "<window>:<bucket>" fields).
    stems_.push_back(absl::StrCat(options_.key_prefix, "{", set_.spec(c).name,
                                  set_.spec(c).is_distinct() ? "#d|" : "|"));
    std::vector<std::string> tags;
    for (absl::Duration w : set_.spec(c).windows) tags.push_back(core::DurationString(w));
    tags_.push_back(std::move(tags));
    // Clean a busy hash about six times per shortest window (at most once per bucket).
    int64_t interval_us = std::numeric_limits<int64_t>::max();
    for (const WindowGeometry& g : set_.geometry(c)) {
      interval_us = std::min(interval_us, std::max(g.width_us, g.width_us * g.buckets / 6));
    }
    cleanup_interval_ms_.push_back(interval_us / 1000);
    const auto& geometry = set_.geometry(c);
    std::vector<int> order(geometry.size());
    for (size_t w = 0; w < order.size(); ++w) order[w] = static_cast<int>(w);
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return geometry[a].width_us < geometry[b].width_us; });
    bool nested = !set_.spec(c).is_distinct() && order.size() >= 2;
    std::vector<int> wider(order.size(), -1);
    for (size_t k = 0; k + 1 < order.size(); ++k) {
      nested = nested && geometry[order[k + 1]].width_us % geometry[order[k]].width_us == 0;
      wider[order[k]] = order[k + 1];
    }
    nested_.push_back(nested ? 1 : 0);
    narrow_first_.push_back(std::move(order));
    wider_.push_back(std::move(wider));
  }
  for (int i = 0; i < options_.connections; ++i) {
    conns_.push_back(std::make_unique<internal::RedisConn>());
  }
  ttl_cache_ = std::make_unique<internal::TtlCache>(options_.ttl_cache_entries);
  sentinel_ = absl::StrCat(options_.key_prefix, "node:", core::RandomHex(8));
}

RedisCounterStore::~RedisCounterStore() = default;

void RedisCounterStore::AppendHashKey(std::string& out, int counter, std::string_view key) const {
  out += stems_[counter];
  out.append(key.data(), key.size());
  out += '}';
}

void RedisCounterStore::AppendField(std::string& out, int counter, int window,
                                    int64_t bucket) const {
  if (nested_[counter]) out += '+';
  out += tags_[counter][window];
  out += ':';
  absl::StrAppend(&out, bucket);
}

void RedisCounterStore::AppendKey(std::string& out, int counter, int window, std::string_view key,
                                  int64_t bucket) const {
  AppendHashKey(out, counter, key);
  out += ':';
  AppendField(out, counter, window, bucket);
}

std::string RedisCounterStore::HashKeyForTest(int counter, std::string_view key) const {
  std::string out;
  AppendHashKey(out, counter, key);
  return out;
}

std::string RedisCounterStore::KeyForTest(int counter, int window, std::string_view key,
                                          int64_t bucket) const {
  std::string out;
  if (set_.spec(counter).is_distinct()) {
    AppendKey(out, counter, window, key, bucket);
  } else {
    AppendHashKey(out, counter, key);
  }
  return out;
}

absl::Status RedisCounterStore::Execute(Commands& commands, Replies& replies) {
  internal::RedisConn& conn =
      *conns_[next_conn_.fetch_add(1, std::memory_order_relaxed) % conns_.size()];
  absl::MutexLock lock(&conn.mu);
  auto fail = [&](std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(conn.mu) {
    std::string detail = conn.ctx && conn.ctx->err ? conn.ctx->errstr : "";
    if (conn.ctx) redisFree(conn.ctx);
    conn.ctx = nullptr;
    conn.failed_at = absl::Now();
    ttl_cache_->Clear();
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
    // Redis may have restarted and lost every key: forget which TTLs are set.
    ttl_cache_->Clear();
  }
  // The connection's socket is used directly (hiredis only connects and sets the
  // timeouts): one send of the whole pipeline, replies parsed from one buffer.
  const std::string& out = commands.Finish();
  commands_.fetch_add(static_cast<int64_t>(commands.size()), std::memory_order_relaxed);
  const int fd = conn.ctx->fd;
  for (size_t sent = 0; sent < out.size();) {
    const ssize_t n = send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
    } else if (errno != EINTR) {
      return fail(errno == EAGAIN || errno == EWOULDBLOCK ? "write timed out" : "write failed");
    }
  }
  if (std::string_view error = replies.ReadFrom(fd, commands.size()); !error.empty()) {
    return fail(error);
  }
  last_success_us_.store(absl::ToUnixMicros(absl::Now()), std::memory_order_relaxed);
  return absl::OkStatus();
}

namespace {

absl::Status ReplyError(const Reply& r) {
  return absl::InternalError(absl::StrCat("redis error: ", std::string(r.str, r.len)));
}

}  // namespace

namespace {

// A distinct counter's hash holds its buckets' values exactly (fields
// "<window>:<bucket>:<value>") until kExactLimit values have been written to it; then its
// buckets move to HyperLogLog sketches (fields "<window>:<bucket>" -> "1" index them).
// The field kAddsField counts the values written while exact, plus kPromoted once the
// hash has sketches, so every writer learns from its own HINCRBY reply which mode the
// hash is in.
constexpr std::string_view kAddsField = "n";
// A node's sentinel key lives this long without writes (each batch's PEXPIRE renews it).
constexpr int64_t kSentinelTtlMs = 24 * 3600 * 1000;
constexpr int64_t kExactLimit = 32;
constexpr int64_t kPromoted = int64_t{1} << 40;
static_assert(kPromoted == 1099511627776, "kMaintainScript spells kPromoted out");

// For each hash KEYS[i]: drops the fields of buckets that have left their window
// ("<window>:<bucket>" or "<window>:<bucket>:<value>"; a field of a window not listed is
// kept: another node may declare it), except that a nested count field
// "+<window>:<bucket>" moves its count into the bucket of the next wider window that
// still reads it (HINCRBY; dropped if none does); if its flag is 1, moves every exact
// value "<window>:<bucket>:<value>" into the bucket's sketch "KEYS[i]:<window>:<bucket>"
// (PFADD, TTL until the bucket leaves its window plus the margin), indexes the sketch and
// marks the hash promoted (adds field >= 2^40); and sets the hash's TTL. Atomic, so
// readers never see a count twice or a value lost, and a value written after it is a
// straggler that its writer moves by running this script again (its HINCRBY reply shows
// the promotion).
// ARGV: the number of windows nw; per window its tag, oldest bucket read, bucket width
// (us), buckets per read, next wider window's tag ("" if none) and width ratio to it;
// the margin (ms); now (unix ms); per key its TTL (ms) and flag.
constexpr char kMaintainScript[] = R"lua(
local nw = tonumber(ARGV[1])
local win = {}
for j = 0, nw - 1 do
  local a = 2 + 6 * j
  win[ARGV[a]] = {tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
                  ARGV[a + 4], tonumber(ARGV[a + 5])}
end
local base = 1 + 6 * nw
local margin = tonumber(ARGV[base + 1])
local now = tonumber(ARGV[base + 2])
for i = 1, #KEYS do
  local key = KEYS[i]
  local promote = ARGV[base + 2 + 2 * i] == '1'
  local sketches = {}
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local nested = string.byte(f, 1) == 43
    local c1 = string.find(f, ':', 1, true)
    local g = c1 and win[string.sub(f, nested and 2 or 1, c1 - 1)]
    if g then
      local c2 = string.find(f, ':', c1 + 1, true)
      local b = tonumber(string.sub(f, c1 + 1, c2 and c2 - 1 or -1))
      if b and b < g[1] then
        if nested then
          local cur, nb = g, b
          while cur[4] ~= '' and win[cur[4]] do
            local up = win[cur[4]]
            nb = math.floor(nb / cur[5])
            if nb >= up[1] then
              redis.call('HINCRBY', key, '+' .. cur[4] .. ':' .. string.format('%d', nb),
                         redis.call('HGET', key, f))
              break
            end
            cur = up
          end
        end
        redis.call('HDEL', key, f)
      elseif b and c2 and promote then
        local s = string.sub(f, 1, c2 - 1)
        local t = sketches[s]
        if not t then
          t = {g = g, b = b, v = {}}
          sketches[s] = t
        end
        t.v[#t.v + 1] = string.sub(f, c2 + 1)
        redis.call('HDEL', key, f)
      end
    end
  end
  if promote then
    for s, t in pairs(sketches) do
      local sk = key .. ':' .. s
      for first = 1, #t.v, 500 do
        redis.call('PFADD', sk, unpack(t.v, first, math.min(first + 499, #t.v)))
      end
      redis.call('PEXPIRE', sk, math.floor(((t.b + t.g[3]) * t.g[2] + 999) / 1000) + margin - now)
      redis.call('HSET', key, s, '1')
    end
    local n = tonumber(redis.call('HGET', key, 'n') or '0') or 0
    if n < 1099511627776 then redis.call('HINCRBY', key, 'n', 1099511627776) end
  end
  redis.call('PEXPIRE', key, ARGV[base + 1 + 2 * i])
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
  // Group observations by (counter, key) hash, then by (window, bucket) field: one
  // HINCRBY / PFADD per field.
  struct Bucket {
    int window = 0;
    int64_t bucket = 0;
    int64_t n = 0;
    int64_t deadline_ms = 0;  // distinct: the sketch key's expiry (unix ms)
    uint64_t sketch_hash = 0;
    bool ttl_known = false;  // distinct: this node already set the sketch's TTL
    std::vector<std::string_view> values;
  };
  struct HashOp {
    std::string key;
    int counter = 0;
    bool distinct = false;
    bool ttl_known = false;  // this node already set the hash's TTL to >= deadline_ms
    bool exists = false;     // this node wrote the hash, and it has not expired since
    bool clean_due = false;  // this node has not cleaned the hash for a cleanup interval
    bool sketched = false;   // distinct: written to sketches (else as exact values)
    int64_t adds = 0;        // distinct: values written (distinct per bucket)
    int64_t deadline_ms = 0;
    uint64_t hash = 0;
    absl::InlinedVector<Bucket, 3> buckets;
  };
  std::vector<HashOp> ops;  // in first-seen order
  // Hash key (a view of the op's own key: `ops` never grows past batch.size(), so it is
  // never moved) -> position in `ops`.
  absl::flat_hash_map<absl::string_view, size_t> index;
  ops.reserve(batch.size());
  index.reserve(batch.size());
  const int64_t now_ms = absl::ToUnixMillis(now);
  const int64_t margin_ms = absl::ToInt64Milliseconds(options_.expire_margin);
  const absl::Time newest_accepted = now + options_.time.max_future_skew;
  // A bucket is read until now >= (b + buckets) * width; its key expires `margin` later.
  auto deadline_of = [&](const WindowGeometry& g, int64_t b) {
    return ((b + g.buckets) * g.width_us + 999) / 1000 + margin_ms;
  };
  // A (counter, key) hash lives until the newest bucket any accepted event can write (now
  // + max_future_skew) leaves the counter's longest window: the same for every event of
  // the batch, never below what an earlier write needed (so a plain PEXPIRE never
  // shortens it), and unchanged for a whole bucket width of that window.
  auto hash_deadline = [&](int counter) {
    int64_t d = 0;
    for (const WindowGeometry& g : set_.geometry(counter)) {
      d = std::max(d, deadline_of(g, g.BucketOf(newest_accepted)));
    }
    return d;
  };
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
    key.clear();
    AppendHashKey(key, o.counter, o.key);
    HashOp* op = nullptr;
    const bool nested = nested_[o.counter];
    for (size_t k = 0; k < geometry.size(); ++k) {
      const size_t w = nested ? narrow_first_[o.counter][k] : k;
      const WindowGeometry& g = geometry[w];
      const int64_t b = g.BucketOf(o.at);
      if (b < g.OldestBucket(now)) continue;  // late, and already out of this window
      if (op == nullptr) {
        auto it = index.find(AV(key));
        if (it == index.end()) {
          HashOp& added = ops.emplace_back();
          added.key = key;
          added.counter = o.counter;
          added.distinct = distinct;
          added.deadline_ms = hash_deadline(o.counter);
          added.hash = internal::HashValue(key);
          it = index.emplace(AV(added.key), ops.size() - 1).first;
        }
        op = &ops[it->second];
      }
      Bucket* bucket = nullptr;
      for (Bucket& x : op->buckets) {
        if (x.bucket == b && x.window == static_cast<int>(w)) bucket = &x;
      }
      if (bucket == nullptr) {
        bucket = &op->buckets.emplace_back();
        bucket->window = static_cast<int>(w);
        bucket->bucket = b;
        bucket->deadline_ms = deadline_of(g, b);
      }
      ++bucket->n;
      if (distinct) bucket->values.push_back(o.value);
      // Nested: the narrowest window that reads the bucket holds the event; the wider
      // ones read it from there.
      if (nested) break;
    }
  }
  for (HashOp& op : ops) {
    if (!op.distinct) continue;
    for (Bucket& x : op.buckets) {
      if (x.values.size() > 1) {
        std::sort(x.values.begin(), x.values.end());
        x.values.erase(std::unique(x.values.begin(), x.values.end()), x.values.end());
      }
      op.adds += static_cast<int64_t>(x.values.size());
    }
  }
  if (!ops.empty()) {
    std::string sketch_key;
    uint64_t epoch = 0;  // of what this batch read from the cache
    {
      absl::ReaderMutexLock lock(&ttl_cache_->mu);
      epoch = ttl_cache_->epoch();
      for (HashOp& op : ops) {
        const internal::TtlCache::Entry e = ttl_cache_->Get(op.hash);
        op.ttl_known = e.deadline_ms >= op.deadline_ms;
        op.exists = e.deadline_ms > now_ms;
        op.clean_due = now_ms - e.cleaned_ms >= cleanup_interval_ms_[op.counter];
        if (!op.distinct) continue;
        // A hash this node saw promoted, or one this batch alone would fill, is written
        // to sketches (the HINCRBY reply then tells whether older exact values must move).
        op.sketched = (op.exists && e.promoted) || op.adds >= kExactLimit;
        if (!op.sketched) continue;
        for (Bucket& x : op.buckets) {
          sketch_key = op.key;
          sketch_key += ':';
          AppendField(sketch_key, op.counter, x.window, x.bucket);
          x.sketch_hash = internal::HashValue(sketch_key);
          x.ttl_known = ttl_cache_->Get(x.sketch_hash).deadline_ms >= x.deadline_ms;
        }
      }
    }
    auto arg_sketch = [&](Commands& cmds, const HashOp& op, const Bucket& x) {
      cmds.ArgBuilt([&](std::string& out) {
        out += op.key;
        out += ':';
        AppendField(out, op.counter, x.window, x.bucket);
      });
    };
    auto arg_field = [&](Commands& cmds, const HashOp& op, const Bucket& x) {
      cmds.ArgBuilt([&](std::string& out) { AppendField(out, op.counter, x.window, x.bucket); });
    };
    // Round trip 1, plain pipelined commands. Count: per field HINCRBY. Distinct, exact:
    // one HSET of every "<window>:<bucket>:<value>" field; sketched: per bucket PFADD, a
    // PEXPIRE of the sketch unless this node already set it, and HSET of its index field;
    // both then HINCRBY of the adds field. Per hash whose TTL this node has not yet set
    // to the deadline, one PEXPIRE.
    Commands commands;
    // The replies round trip 1 reads, noted as their commands are added: each count
    // bucket's HINCRBY, an exact distinct hash's HSET, each sketched bucket's index HSET
    // (in ops' and buckets' order), and each distinct hash's adds HINCRBY.
    std::vector<size_t> field_reply;
    std::vector<size_t> adds_reply(ops.size());
    for (size_t k = 0; k < ops.size(); ++k) {
      const HashOp& op = ops[k];
      if (!op.distinct) {
        for (const Bucket& x : op.buckets) {
          field_reply.push_back(commands.size());
          commands.Begin();
          commands.Arg("HINCRBY");
          commands.Arg(op.key);
          arg_field(commands, op, x);
          commands.Arg(x.n);
        }
      } else if (!op.sketched) {
        field_reply.push_back(commands.size());
        commands.Begin();
        commands.Arg("HSET");
        commands.Arg(op.key);
        for (const Bucket& x : op.buckets) {
          for (std::string_view v : x.values) {
            commands.ArgBuilt([&](std::string& out) {
              AppendField(out, op.counter, x.window, x.bucket);
              out += ':';
              out.append(v.data(), v.size());
            });
            commands.Arg("1");
          }
        }
      } else {
        for (const Bucket& x : op.buckets) {
          commands.Begin();
          commands.Arg("PFADD");
          arg_sketch(commands, op, x);
          for (std::string_view v : x.values) commands.Arg(v);
          if (!x.ttl_known) {
            commands.Begin();
            commands.Arg("PEXPIRE");
            arg_sketch(commands, op, x);
            commands.Arg(x.deadline_ms - now_ms);
          }
          // Always sent: a new field on a known sketch means the keys were lost and
          // re-created (the sketch's TTL is then set in round trip 2).
          field_reply.push_back(commands.size());
          commands.Begin();
          commands.Arg("HSET");
          commands.Arg(op.key);
          arg_field(commands, op, x);
          commands.Arg("1");
        }
      }
      if (op.distinct) {
        adds_reply[k] = commands.size();
        commands.Begin();
        commands.Arg("HINCRBY");
        commands.Arg(op.key);
        commands.Arg(kAddsField);
        commands.Arg(op.adds);
      }
      if (!op.ttl_known) {
        commands.Begin();
        commands.Arg("PEXPIRE");
        commands.Arg(op.key);
        commands.Arg(op.deadline_ms - now_ms);
      }
    }
    // Last, this node's sentinel key: if it is gone, so may be every key this batch took
    // as having its TTL (FLUSHALL, FLUSHDB, a restart behind a live connection).
    commands.Begin();
    commands.Arg("PEXPIRE");
    commands.Arg(sentinel_);
    commands.Arg(kSentinelTtlMs);
    // Round trip 2 is for hashes that need the maintenance script: cleaning (a hash this
    // node knows to exist got a new field, and its cleanup interval has passed) or
    // promotion (a distinct hash reached kExactLimit values, or has exact values although
    // promoted); for TTLs set again (the sentinel was gone, or a distinct hash's adds
    // field was missing: re-created behind this node); and for the TTLs of sketches that
    // may have been lost.
    struct Maintain {
      size_t op;
      bool promote;
    };
    std::vector<Maintain> maintain;
    std::vector<size_t> reexpire;
    std::vector<std::pair<size_t, size_t>> lost_sketches;  // (op, bucket): TTL to set again
    std::vector<size_t> promoted;                          // ops whose hash has sketches now
    // Cleared (a connection opened or failed) since this batch read the cache: every TTL
    // it skipped is set in round trip 2, and what it sets is good from round trip 1 on.
    bool cleared = false;
    bool sentinel_missing = false;
    uint64_t epoch_after_first = 0;
    {
      Replies replies;
      absl::Status s = Execute(commands, replies);
      if (!s.ok()) return s;
      for (size_t i = 0; i < replies.size(); ++i) {
        if (replies[i].type == REDIS_REPLY_ERROR) return ReplyError(replies[i]);
      }
      const Reply& sentinel = replies[replies.size() - 1];
      if (sentinel.type != REDIS_REPLY_INTEGER) {
        return absl::InternalError("redis: unexpected reply to the sentinel's PEXPIRE");
      }
      if (sentinel.integer == 0) {
        // Keys may have gone behind this node: forget every TTL it set (a later write
        // sets it again), set this batch's in round trip 2, and the sentinel again.
        ttl_cache_->Clear();
        sentinel_missing = true;
      }
      epoch_after_first = ttl_cache_->epoch();
      cleared = epoch_after_first != epoch;
      auto integer = [&](size_t i) -> absl::StatusOr<int64_t> {
        if (replies[i].type != REDIS_REPLY_INTEGER) {
          return absl::InternalError("redis: unexpected reply to a counter write");
        }
        return replies[i].integer;
      };
      size_t f = 0;  // next of field_reply
      for (size_t k = 0; k < ops.size(); ++k) {
        const HashOp& op = ops[k];
        bool new_field = false;  // the hash got a field it did not have
        bool lost = false;       // the hash was re-created behind this node
        bool promote = false;
        if (!op.distinct) {
          for (const Bucket& x : op.buckets) {
            QUELL_ASSIGN_OR_RETURN(const int64_t v, integer(field_reply[f++]));
            if (v == x.n) new_field = true;
          }
        } else {
          if (!op.sketched) {
            QUELL_ASSIGN_OR_RETURN(const int64_t v, integer(field_reply[f++]));
            new_field = v > 0;
          } else {
            for (size_t j = 0; j < op.buckets.size(); ++j) {
              QUELL_ASSIGN_OR_RETURN(const int64_t v, integer(field_reply[f++]));
              if (v == 1) {
                new_field = true;
                if (op.buckets[j].ttl_known) lost_sketches.push_back({k, j});
              }
            }
          }
          QUELL_ASSIGN_OR_RETURN(const int64_t adds, integer(adds_reply[k]));
          lost = adds == op.adds && op.exists;
          // Sketched, but the hash was not promoted: promote it (older exact values move
          // to the sketches). Exact, but the hash is full or promoted: move them.
          promote = op.sketched ? adds < kPromoted : adds >= kExactLimit;
          if (op.sketched || adds >= kPromoted || promote) promoted.push_back(k);
        }
        if (promote || (new_field && op.exists && op.clean_due)) {
          maintain.push_back({k, promote});
        } else if (lost || (cleared && op.ttl_known)) {
          // The cache was cleared: Redis may have restarted, so TTLs this batch skipped
          // are set.
          reexpire.push_back(k);
        }
      }
    }
    Commands second;
    constexpr size_t kKeysPerScript = 64;
    std::stable_sort(maintain.begin(), maintain.end(), [&](const Maintain& a, const Maintain& b) {
      return ops[a.op].counter < ops[b.op].counter;
    });
    for (size_t first = 0; first < maintain.size();) {
      const int counter = ops[maintain[first].op].counter;
      size_t last = first;
      while (last < maintain.size() && last - first < kKeysPerScript &&
             ops[maintain[last].op].counter == counter) {
        ++last;
      }
      const auto& geometry = set_.geometry(counter);
      second.Begin();
      second.Arg("EVAL");
      second.Arg(kMaintainScript);
      second.Arg(static_cast<int64_t>(last - first));
      for (size_t k = first; k < last; ++k) second.Arg(ops[maintain[k].op].key);
      second.Arg(static_cast<int64_t>(geometry.size()));
      for (size_t w = 0; w < geometry.size(); ++w) {
        second.Arg(tags_[counter][w]);
        second.Arg(geometry[w].OldestBucket(now));
        second.Arg(geometry[w].width_us);
        second.Arg(geometry[w].buckets);
        const int wider = nested_[counter] ? wider_[counter][w] : -1;
        second.Arg(wider < 0 ? std::string_view() : std::string_view(tags_[counter][wider]));
        second.Arg(wider < 0 ? int64_t{1} : geometry[wider].width_us / geometry[w].width_us);
      }
      second.Arg(margin_ms);
      second.Arg(now_ms);
      for (size_t k = first; k < last; ++k) {
        second.Arg(ops[maintain[k].op].deadline_ms - now_ms);
        second.Arg(maintain[k].promote ? "1" : "0");
      }
      first = last;
    }
    if (sentinel_missing) {
      second.Begin();
      second.Arg("SET");
      second.Arg(sentinel_);
      second.Arg("1");
      second.Arg("PX");
      second.Arg(kSentinelTtlMs);
    }
    for (size_t k : reexpire) {
      second.Begin();
      second.Arg("PEXPIRE");
      second.Arg(ops[k].key);
      second.Arg(ops[k].deadline_ms - now_ms);
    }
    auto set_sketch_ttl = [&](const HashOp& op, const Bucket& x) {
      second.Begin();
      second.Arg("PEXPIRE");
      arg_sketch(second, op, x);
      second.Arg(x.deadline_ms - now_ms);
    };
    if (cleared) {
      for (const HashOp& op : ops) {
        if (!op.sketched) continue;
        for (const Bucket& x : op.buckets) {
          if (x.ttl_known) set_sketch_ttl(op, x);
        }
      }
    } else {
      for (const auto& [k, j] : lost_sketches) set_sketch_ttl(ops[k], ops[k].buckets[j]);
    }
    if (second.size() > 0) {
      Replies replies;
      absl::Status s = Execute(second, replies);
      if (!s.ok()) return s;
      for (size_t i = 0; i < replies.size(); ++i) {
        if (replies[i].type == REDIS_REPLY_ERROR) return ReplyError(replies[i]);
      }
    }
    absl::MutexLock lock(&ttl_cache_->mu);
    // Cleared again after round trip 1 (a new connection for round trip 2): what this
    // batch set may have gone with the old server; note nothing, later writes set it again.
    if (ttl_cache_->epoch() == epoch_after_first) {
      // A hash this node did not know counts as cleaned now: it is cleaned one interval
      // later if it stays busy (a busy hash holds at most two intervals' worth of old
      // buckets, and a key seen once costs no cleanup).
      for (const Maintain& m : maintain) ttl_cache_->NoteCleaned(ops[m.op].hash, now_ms);
      for (const HashOp& op : ops) {
        ttl_cache_->Touch(op.hash);
        if (!op.exists) ttl_cache_->NoteCleaned(op.hash, now_ms);
        // (Cleared: round trip 2 set the TTLs this batch had skipped.)
        if (!op.ttl_known || cleared) ttl_cache_->Note(op.hash, op.deadline_ms);
        if (!op.sketched) continue;
        for (const Bucket& x : op.buckets) {
          if (x.ttl_known && !cleared) {
            ttl_cache_->Touch(x.sketch_hash);
          } else {
            ttl_cache_->Note(x.sketch_hash, x.deadline_ms);
          }
        }
      }
      for (size_t k : promoted) ttl_cache_->NotePromoted(ops[k].hash);
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
  return ReadWith(reads, {}, now, values);
}

absl::Status RedisCounterStore::ReadWith(absl::Span<const ReadRequest> reads,
                                         absl::Span<const Observation> pending, absl::Time now,
                                         absl::Span<int64_t> values) {
  if (values.size() != reads.size()) {
    return absl::InvalidArgumentError("values must be as long as reads");
  }
  if (reads.empty()) return absl::OkStatus();
  // Round trip 1: each read's (counter, key) hash (HGETALL: "<window>:<bucket>" ->
  // count; HKEYS: a distinct counter's exact values and the buckets it has sketches for);
  // only the fields of the window read are used.
  absl::InlinedVector<int, 8> windows;
  Commands commands;
  for (const ReadRequest& r : reads) {
    auto w = internal::ResolveRead(set_, r);
    if (!w.ok()) return w.status();
    windows.push_back(*w);
    commands.Begin();
    commands.Arg(set_.spec(r.counter).is_distinct() ? "HKEYS" : "HGETALL");
    commands.ArgBuilt([&](std::string& out) { AppendHashKey(out, r.counter, r.key); });
  }
  Replies replies;
  absl::Status s = Execute(commands, replies);
  if (!s.ok()) return s;
  // Round trip 2 (only if a distinct window holds sketches): PFCOUNT over the buckets
  // inside the window, usually one key (Redis's cached cardinality, no merge).
  Commands counts;
  std::vector<size_t> counted_read;                 // counts command -> read index
  std::vector<int64_t> sketch_extra(reads.size());  // pending values beside sketches
  std::vector<std::string_view> exact;
  std::vector<const Observation*> seen;
  for (size_t i = 0; i < reads.size(); ++i) {
    const Reply& r = replies[i];
    seen.clear();
    internal::PendingSeen(set_, pending, reads[i], windows[i], now, &seen);
    if (r.type == REDIS_REPLY_ERROR) return ReplyError(r);
    if (r.type != REDIS_REPLY_ARRAY) return absl::InternalError("redis: unexpected hash reply");
    const WindowGeometry& g = set_.geometry(reads[i].counter)[windows[i]];
    const int64_t newest = g.BucketOf(now);
    const int64_t oldest = g.OldestBucket(now);
    const std::string& tag = tags_[reads[i].counter][windows[i]];
    // A field "<window>:<bucket>[:<value>]": false if it is not one; *b = -1 for another
    // window; *value is empty unless the field holds an exact value.
    auto bucket_of = [&](const Reply& e, int64_t* b, std::string_view* value) {
      if (e.type != REDIS_REPLY_STRING) return false;
      std::string_view f(e.str, e.len);
      const size_t colon = f.find(':');
      if (colon == std::string_view::npos) return false;
      std::string_view rest = f.substr(colon + 1);
      const size_t colon2 = rest.find(':');
      *value = colon2 == std::string_view::npos ? std::string_view() : rest.substr(colon2 + 1);
      if (!absl::SimpleAtoi(AV(rest.substr(0, colon2)), b)) return false;
      if (f.substr(0, colon) != tag) *b = -1;
      return true;
    };
    auto number_of = [](const Reply& e, int64_t* v) {
      return e.type == REDIS_REPLY_STRING && absl::SimpleAtoi(absl::string_view(e.str, e.len), v);
    };
    values[i] = 0;
    if (set_.spec(reads[i].counter).is_distinct()) {
      // Buckets with a sketch are estimated together (PFCOUNT); without any, the exact
      // values are counted. Exact values beside sketches are stragglers their writer is
      // moving into the sketches (see kMaintainScript): not counted twice.
      bool any = false;
      exact.clear();
      for (size_t e = 0; e < r.elements; ++e) {
        const Reply& field = r.element[e];
        if (field.type == REDIS_REPLY_STRING &&
            std::string_view(field.str, field.len) == kAddsField) {
          continue;
        }
        int64_t b;
        std::string_view value;
        if (!bucket_of(field, &b, &value)) {
          return absl::InternalError("redis: a counter hash field is not a bucket");
        }
        if (b < oldest || b > newest) continue;
        if (!value.empty()) {
          exact.push_back(value);
          continue;
        }
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
      if (any) {
        // PFCOUNT answers for the sketches alone: the pending values count as new.
        exact.clear();
        for (const Observation* o : seen) exact.push_back(o->value);
        std::sort(exact.begin(), exact.end());
        sketch_extra[i] = std::unique(exact.begin(), exact.end()) - exact.begin();
        continue;
      }
      for (const Observation* o : seen) exact.push_back(o->value);
      if (!exact.empty()) {
        std::sort(exact.begin(), exact.end());
        values[i] = std::unique(exact.begin(), exact.end()) - exact.begin();
      }
      continue;
    }
    // Fields "<window>:<bucket>" of the window read, and nested fields
    // "+<window>:<bucket>" of any window whose buckets divide this window's (mapped to the
    // bucket of this window that holds them).
    int64_t sum = 0;
    for (size_t e = 0; e + 1 < r.elements; e += 2) {
      const Reply& field = r.element[e];
      int64_t b, v;
      if (!number_of(r.element[e + 1], &v)) {
        return absl::InternalError("redis: a counter hash does not hold bucket counts");
      }
      if (field.type == REDIS_REPLY_STRING && field.len > 0 && field.str[0] == '+') {
        std::string_view f(field.str + 1, field.len - 1);
        const size_t colon = f.find(':');
        if (colon == std::string_view::npos || !absl::SimpleAtoi(AV(f.substr(colon + 1)), &b)) {
          return absl::InternalError("redis: a counter hash field is not a bucket");
        }
        const int64_t width = NestedWidth(reads[i].counter, f.substr(0, colon));
        if (width <= 0 || g.width_us % width != 0) continue;
        const int64_t ratio = g.width_us / width;
        const int64_t mapped = internal::FloorDiv(b, ratio);
        if (mapped >= oldest && mapped <= newest) sum += v;
        continue;
      }
      std::string_view value;
      if (!bucket_of(field, &b, &value) || !value.empty()) {
        return absl::InternalError("redis: a counter hash does not hold bucket counts");
      }
      if (b >= oldest && b <= newest) sum += v;
    }
    values[i] = sum + static_cast<int64_t>(seen.size());
  }
  if (counts.size() == 0) return absl::OkStatus();
  Replies estimates;
  s = Execute(counts, estimates);
  if (!s.ok()) return s;
  for (size_t k = 0; k < counted_read.size(); ++k) {
    const Reply& r = estimates[k];
    if (r.type == REDIS_REPLY_ERROR) return ReplyError(r);
    if (r.type != REDIS_REPLY_INTEGER)
      return absl::InternalError("redis: unexpected PFCOUNT reply");
    values[counted_read[k]] = r.integer + sketch_extra[counted_read[k]];
  }
  return absl::OkStatus();
}

int64_t RedisCounterStore::NestedWidth(int counter, std::string_view tag) const {
  const auto& tags = tags_[counter];
  for (size_t w = 0; w < tags.size(); ++w) {
    if (tags[w] == tag) return set_.geometry(counter)[w].width_us;
  }
  // A window another node declares (a policy set being rolled out).
  auto d = core::ParseDuration(tag);
  if (!d.ok() || *d <= absl::ZeroDuration()) return 0;
  return WindowGeometry::Of(*d, options_.time.buckets_per_window).width_us;
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
