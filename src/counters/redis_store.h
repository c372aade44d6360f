// The Redis CounterStore: counters live in one Redis shared by every Quell node, so all
// nodes see the same view. hiredis connects (with timeouts); pipelines are written to its
// socket in one send and their replies parsed in place (no allocation per reply).
//
// Data layout (same bucket geometry as the in-process store; counters/counter_store.h).
// Every (counter, key) has one hash "<prefix>{<counter>|<key>}" ("<prefix>{<counter>#d|<key>}"
// for a distinct counter, so that a name reused as the other kind does not share fields)
// holding all the counter's windows (<window> is the duration string, "1h"; <bucket> the
// bucket number since the epoch):
//   count:    "<window>:<bucket>" -> the bucket's count (HINCRBY), one field per window.
//             A counter whose windows' bucket widths divide one another is *nested*: an
//             event is one field "+<window>:<bucket>" of the narrowest window that still
//             reads its bucket, and a wider window's read adds the nested fields of
//             narrower windows (any, also windows this node does not declare) into its
//             own buckets, so a play of `plays` (1m, 1h, 24h) is one HINCRBY.
//   distinct: "<window>:<bucket>:<value>" -> "1", the bucket's values kept exactly, while
//             the hash's field "n" (values written, HINCRBY with every write) is below
//             kExactLimit (32); then the hash is promoted: a script moves the values into
//             one Redis HyperLogLog per bucket, "<hash>:<window>:<bucket>" (PFADD; 0.81%
//             standard error), indexed by fields "<window>:<bucket>" -> "1", and adds 2^40
//             to "n". Each writer learns the hash's state from its HINCRBY reply: a node
//             that wrote exact values into a hash promoted meanwhile runs the script again
//             to move them (reads ignore exact values beside sketches until then).
// A read is one HGETALL (counts: the fields of the window read, inside it, are summed
// here) or one HKEYS (distinct: the exact values of the window's buckets are counted
// here, or, if the window has sketches, one PFCOUNT over them follows, usually one key:
// Redis's cached cardinality, no 16K-register merge). The braces are a Redis Cluster hash
// tag: a counter key's hash and sketches share one slot. (Upgrades: docs/counters.md.)
//
// Expiry and size. A hash lives until the newest bucket an accepted event can write
// (bucket of now + max_future_skew) leaves the counter's longest window, plus
// `expire_margin`; a sketch until its bucket leaves the window, plus the margin. That
// deadline only grows with `now`, so a plain PEXPIRE never shortens a TTL, and it
// changes once per bucket width of the longest window: each node remembers (a bounded
// in-memory cache of key hashes, two generations of `ttl_cache_entries`) which deadline
// it last set per key and sends a key's PEXPIRE only when the deadline moved. Writes
// are plain pipelined commands: per bucket HINCRBY (count); per distinct hash one HSET of
// its exact values, or per bucket PFADD + HSET of its index field (+ PEXPIRE of a sketch
// the node has not set up), then HINCRBY "n"; per hash at most one PEXPIRE. Observations
// of the same (counter, key, window, bucket) in one batch are summed first: one HINCRBY
// with the sum, one HSET/PFADD with all the values. Each batch ends with a PEXPIRE of
// the node's sentinel key "<prefix>node:<random>" (SET when missing, 24 h TTL): if it is
// gone, keys went behind the node's back (FLUSHALL, FLUSHDB, a restart on a live
// connection), so the node forgets every TTL it set and a second round trip sets this
// batch's. A distinct hash whose "n" was missing (re-created) gets its TTL again too. (A
// single key deleted by hand gets its TTL back when its deadline next moves.) And,
// once per cleanup interval (a sixth of the counter's shortest window, at least one
// bucket width; counted from the first write this node made to the hash), a hash that
// got a new field runs a short Lua script that deletes the fields of buckets that have
// left their window, or moves a nested one into the next wider window that still reads
// it (fields of windows this node does not declare are kept: another node may). Keys
// lost when Redis restarts get their TTLs back because the node reconnects and drops its
// cache. So keys expire with their longest window, a busy hash holds at most each
// window's buckets plus two cleanup intervals of old ones (plus those written ahead
// within max_future_skew), and Redis needs no sweeping. Run Redis with maxmemory-policy
// noeviction (an evicted sketch re-created by a node that took its TTL as set would have
// none). Nothing is cached on the read side: every Read() asks Redis, so all nodes see
// one view, exact within one bucket's width.
//
// Round trips: a Record() batch is one pipelined round trip, plus the TTL/cleanup/
// promotion one when needed; a Read() batch is one round trip, plus one more if it reads distinct
// windows that hold sketches.
//
// Failure: connect_timeout bounds connecting and io_timeout bounds each round trip; on a
// failure the connection is dropped and the call returns kUnavailable. The next call
// reconnects by itself, but not before `reconnect_backoff` has passed since the failure
// (calls in between fail at once with kUnavailable, unless another connection has
// succeeded since), so a dead Redis costs callers microseconds, not timeouts. A kUnavailable
// Record() may have been partly applied. Protocol errors from Redis (e.g. WRONGTYPE on a foreign
// key) are kInternal.
//
// Thread-safety: thread-safe. `connections` connections are used round-robin, each by
// one thread at a time.
#ifndef QUELL_COUNTERS_REDIS_STORE_H_
#define QUELL_COUNTERS_REDIS_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "counters/counter_store.h"

namespace quell::counters {

struct RedisOptions {
  TimeOptions time;
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string key_prefix = "quell:c:";
  absl::Duration connect_timeout = absl::Milliseconds(250);
  absl::Duration io_timeout = absl::Milliseconds(250);
  absl::Duration reconnect_backoff = absl::Milliseconds(500);
  absl::Duration expire_margin = absl::Seconds(10);  // slack for clock skew between nodes
  int connections = 4;
  // Keys whose TTL a node remembers having set, per generation (two are kept; see
  // TtlCache in redis_store.cc): ~40 bytes each.
  int ttl_cache_entries = 1 << 19;
};

namespace internal {
struct RedisConn;
struct RedisReply;
class RedisReplies;
class TtlCache;
}  // namespace internal

class RedisCounterStore final : public CounterStore {
 public:
  // Validates specs and options; does not connect (the first call does), so Quell can
  // start before Redis. kInvalidArgument for bad specs or options.
  static absl::StatusOr<std::unique_ptr<RedisCounterStore>> Create(std::vector<CounterSpec> specs,
                                                                   RedisOptions options);
  ~RedisCounterStore() override;

  const CounterSet& counters() const override { return set_; }
  absl::StatusOr<RecordSummary> Record(absl::Span<const Observation> batch, absl::Time now,
                                       absl::Span<RecordOutcome> outcomes = {}) override;
  absl::StatusOr<int64_t> Count(std::string_view counter, std::string_view key,
                                absl::Duration window, absl::Time now) override;
  absl::StatusOr<int64_t> Distinct(std::string_view counter, std::string_view key,
                                   absl::Duration window, absl::Time now) override;
  absl::Status Read(absl::Span<const ReadRequest> reads, absl::Time now,
                    absl::Span<int64_t> values) override;
  // Read()'s round trips; the pending values of a distinct window that holds sketches
  // count as new (PFCOUNT cannot be asked about a value; PFADD to a copy would write).
  absl::Status ReadWith(absl::Span<const ReadRequest> reads, absl::Span<const Observation> pending,
                        absl::Time now, absl::Span<int64_t> values) override;
  StoreStats Stats() const override;

  // The Redis key of `bucket` of window `window` (an index) of `counter`, for tests: the
  // (counter, key) hash of a count counter (every window), a distinct bucket's sketch.
  std::string KeyForTest(int counter, int window, std::string_view key, int64_t bucket) const;
  // The hash of (counter, key), for tests (a distinct counter's exact values and index).
  std::string HashKeyForTest(int counter, std::string_view key) const;

 private:
  class Commands;
  RedisCounterStore(CounterSet set, RedisOptions options);
  // The hash of (counter, key), a bucket's field "<window>:<bucket>" in it
  // ("+<window>:<bucket>" for a nested counter), and a distinct bucket's sketch key
  // "<hash>:<window>:<bucket>".
  void AppendHashKey(std::string& out, int counter, std::string_view key) const;
  void AppendField(std::string& out, int counter, int window, int64_t bucket) const;
  void AppendKey(std::string& out, int counter, int window, std::string_view key,
                 int64_t bucket) const;
  // The bucket width (us) of window `tag` ("1h") of a nested count counter: one of
  // `counter`'s windows, else parsed (0 if it is not a duration).
  int64_t NestedWidth(int counter, std::string_view tag) const;
  // Sends `commands` in one pipelined round trip and returns their replies in order.
  // Opening or losing a connection clears the TTL cache (moving its epoch).
  absl::Status Execute(Commands& commands, internal::RedisReplies& replies);

  const CounterSet set_;
  const RedisOptions options_;
  std::vector<std::string> stems_;              // [counter]: prefix{name| or prefix{name#d|
  std::vector<std::vector<std::string>> tags_;  // [counter][window]: "1h"
  std::vector<int64_t> cleanup_interval_ms_;    // [counter]
  // Count counters whose windows' bucket widths divide one another ("nested"): an event is
  // written once, in the narrowest window that still reads its bucket, and wider windows
  // read those fields too. [counter]: 1 if nested.
  std::vector<uint8_t> nested_;
  std::vector<std::vector<int>> narrow_first_;  // [counter]: window indices, narrowest first
  std::vector<std::vector<int>> wider_;         // [counter][window]: next wider, or -1
  std::vector<std::unique_ptr<internal::RedisConn>> conns_;
  std::unique_ptr<internal::TtlCache> ttl_cache_;  // TTLs this node has set
  std::string sentinel_;  // "<prefix>node:<random>": gone means keys went behind our back
  std::atomic<uint64_t> next_conn_{0};
  std::atomic<int64_t> counted_{0};
  std::atomic<int64_t> too_late_{0};
  std::atomic<int64_t> too_early_{0};
  std::atomic<int64_t> invalid_{0};
  std::atomic<int64_t> unavailable_{0};
  std::atomic<int64_t> reconnects_{0};
  std::atomic<int64_t> commands_{0};
  std::atomic<int64_t> last_success_us_{0};  // real time of the last good round trip
};

}  // namespace quell::counters

#endif  // QUELL_COUNTERS_REDIS_STORE_H_
