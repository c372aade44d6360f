// One suite, run against every CounterStore backend: in process always, and Redis on a
// redis-server this test starts itself (the Redis cases fail, loudly, if redis-server is
// not installed; scripts/setup installs it).
#include "counters/counter_store.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/time.h"
#include "counters/in_process_store.h"
#include "counters/redis_store.h"
#include "gtest/gtest.h"
#include "tests/integration/redis_server.h"

namespace quell::counters {
namespace {

using absl::Hours;
using absl::Minutes;
using absl::Seconds;

enum class Backend { kInProcess, kRedis };

std::vector<CounterSpec> ExampleSpecs() {
  return {
      {"plays", "play", "entity", "", {Minutes(1), Hours(1), Hours(24)}},
      {"tracks_per_ip", "play", "attrs.ip", "attrs.track", {Hours(1)}},
      {"accounts_per_ip", "login", "attrs.ip", "entity", {Hours(1)}},
  };
}

class CounterStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  static void SetUpTestSuite() { redis_ = new testing::RedisServerForTest(); }
  static void TearDownTestSuite() {
    delete redis_;
    redis_ = nullptr;
  }

  std::unique_ptr<CounterStore> Make(std::vector<CounterSpec> specs = ExampleSpecs(),
                                     TimeOptions time = {}) {
    if (GetParam() == Backend::kInProcess) {
      InProcessOptions options;
      options.time = time;
      auto store = InProcessCounterStore::Create(std::move(specs), options);
      EXPECT_TRUE(store.ok()) << store.status();
      return store.ok() ? *std::move(store) : nullptr;
    }
    RedisOptions options;
    options.time = time;
    return MakeRedis(std::move(specs), options);
  }

  // A Redis store on the test's server (started if needed) under a prefix of its own, or
  // with `peer` another node sharing the last store's keys (same server and prefix);
  // `options` gives the rest. Null, with a failure recorded, if it cannot be made.
  std::unique_ptr<RedisCounterStore> MakeRedis(std::vector<CounterSpec> specs, RedisOptions options,
                                               bool peer = false) {
    absl::Status started = redis_->Start();
    EXPECT_TRUE(started.ok()) << started;
    if (!started.ok()) return nullptr;
    options.port = redis_->port();
    options.key_prefix = absl::StrCat("test", peer ? store_serial_ : ++store_serial_, ":");
    auto store = RedisCounterStore::Create(std::move(specs), options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // A direct connection to the test's Redis, for looking at the layout (freed however the
  // test ends).
  using RedisConn = std::unique_ptr<redisContext, decltype(&redisFree)>;
  static RedisConn ConnectRedis() {
    return RedisConn(redisConnect("127.0.0.1", redis_->port()), &redisFree);
  }

  int64_t CountOf(CounterStore& s, std::string_view key, absl::Duration window) {
    auto v = s.Count("plays", key, window, clock_.Now());
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : -1;
  }

  RecordSummary Play(CounterStore& s, std::string_view entity, absl::Time at, int times = 1) {
    std::vector<Observation> batch(times, Observation{0, entity, "", at});
    auto r = s.Record(batch, clock_.Now());
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : RecordSummary{};
  }

  static testing::RedisServerForTest* redis_;
  static int store_serial_;
  core::FakeClock clock_;  // starts at 2026-01-01T00:00:00Z
};

testing::RedisServerForTest* CounterStoreTest::redis_ = nullptr;
int CounterStoreTest::store_serial_ = 0;

TEST_P(CounterStoreTest, CountsPerWindow) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time t0 = clock_.Now();
  Play(*store, "user:u1", t0);
  clock_.Advance(Minutes(30));
  Play(*store, "user:u1", clock_.Now(), 2);
  clock_.Advance(Minutes(29) + Seconds(30));
  Play(*store, "user:u1", clock_.Now(), 3);
  Play(*store, "user:u2", clock_.Now());
  EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), 3);
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(1)), 6);
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(24)), 6);
  EXPECT_EQ(CountOf(*store, "user:u2", Hours(24)), 1);
  EXPECT_EQ(CountOf(*store, "user:nobody", Hours(1)), 0);

  clock_.Set(t0 + Hours(1) + Minutes(31));
  EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), 0);
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(1)), 3);  // the 30m plays are 61m old
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(24)), 6);
  clock_.Set(t0 + Hours(24) + Minutes(10));
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(24)), 5);  // t0's play is 24h10m old
}

TEST_P(CounterStoreTest, BadReadsAreInvalidArgument) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  EXPECT_EQ(store->Count("nope", "k", Hours(1), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Count("plays", "k", Hours(2), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Count("tracks_per_ip", "k", Hours(1), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Distinct("plays", "k", Hours(1), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  ReadRequest bad{0, "k", Minutes(5)};
  int64_t v;
  EXPECT_EQ(store->Read({&bad, 1}, now, {&v, 1}).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(CounterStoreTest, SlidingExpiryExactWithinABucket) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  // One play every 10 s for two minutes; the 1m window (1 s buckets) holds the last six.
  for (int i = 0; i <= 12; ++i) {
    Play(*store, "user:u1", clock_.Now());
    EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), std::min(i + 1, 6)) << i;
    clock_.Advance(Seconds(10));
  }
  clock_.Advance(Seconds(39));  // the last two plays are 49 s and 59 s old
  EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), 2);
  clock_.Advance(Seconds(10) + absl::Milliseconds(999));  // 59.999 s: same bucket as 59 s
  EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), 1);
  clock_.Advance(absl::Milliseconds(1));  // 60 s: gone
  EXPECT_EQ(CountOf(*store, "user:u1", Minutes(1)), 0);
  EXPECT_EQ(CountOf(*store, "user:u1", Hours(1)), 13);
}

TEST_P(CounterStoreTest, LateEventsCountInTheirOwnBucket) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  clock_.Advance(Minutes(10));
  const absl::Time now = clock_.Now();
  // 2 minutes late: within the 5-minute bound, outside the 1m window.
  EXPECT_EQ(Play(*store, "user:late", now - Minutes(2)).counted, 1);
  EXPECT_EQ(CountOf(*store, "user:late", Minutes(1)), 0);
  EXPECT_EQ(CountOf(*store, "user:late", Hours(1)), 1);
  // It leaves the 1h window 60 minutes after `at`, not after its arrival.
  clock_.Set(now - Minutes(2) + Minutes(59) + Seconds(30));
  EXPECT_EQ(CountOf(*store, "user:late", Hours(1)), 1);
  clock_.Set(now - Minutes(2) + Minutes(60) + Seconds(30));
  EXPECT_EQ(CountOf(*store, "user:late", Hours(1)), 0);

  // 30 s late inside the 1m window: gone 30 s later, not 60.
  clock_.Set(now);
  EXPECT_EQ(Play(*store, "user:late2", now - Seconds(30)).counted, 1);
  // Out of order: a newer play first, then an older one.
  Play(*store, "user:late3", now);
  Play(*store, "user:late3", now - Seconds(45));
  EXPECT_EQ(CountOf(*store, "user:late2", Minutes(1)), 1);
  EXPECT_EQ(CountOf(*store, "user:late3", Minutes(1)), 2);
  clock_.Advance(Seconds(31));
  EXPECT_EQ(CountOf(*store, "user:late2", Minutes(1)), 0);
  EXPECT_EQ(CountOf(*store, "user:late3", Minutes(1)), 1);
}

TEST_P(CounterStoreTest, TooLateTooEarlyAndInvalidAreRejectedWithAReason) {
  TimeOptions time;
  time.max_lateness = Minutes(5);
  time.max_future_skew = Seconds(5);
  auto store = Make(ExampleSpecs(), time);
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  std::vector<Observation> batch = {
      {0, "user:a", "", now - Minutes(5) - Seconds(1)},  // too late
      {0, "user:a", "", now - Minutes(5)},               // exactly at the bound: counted
      {0, "user:a", "", now + Seconds(6)},               // too early
      {0, "user:a", "", now + Seconds(3)},               // small skew: counted
      {-1, "user:a", "", now},                           // unknown counter
      {0, "", "", now},                                  // empty key
      {1, "ip:1.2.3.4", "", now},                        // distinct counter, no value
      {0, "user:a", "extra", now},                       // count counter with a value
  };
  std::vector<RecordOutcome> outcomes(batch.size());
  auto summary = store->Record(batch, now, absl::MakeSpan(outcomes));
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->counted, 2);
  EXPECT_EQ(summary->too_late, 1);
  EXPECT_EQ(summary->too_early, 1);
  EXPECT_EQ(summary->invalid, 4);
  std::vector<std::string_view> names;
  for (RecordOutcome o : outcomes) names.push_back(RecordOutcomeName(o));
  EXPECT_EQ(names, (std::vector<std::string_view>{"too_late", "counted", "too_early", "counted",
                                                  "invalid", "invalid", "invalid", "invalid"}));
  EXPECT_EQ(CountOf(*store, "user:a", Hours(1)), 2);
  EXPECT_EQ(CountOf(*store, "user:a", Minutes(1)), 0);  // the +3 s one is in a future bucket
  clock_.Advance(Seconds(3));
  EXPECT_EQ(CountOf(*store, "user:a", Minutes(1)), 1);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.counted, 2);
  EXPECT_EQ(st.rejected_too_late, 1);
  EXPECT_EQ(st.rejected_too_early, 1);
  EXPECT_EQ(st.rejected_invalid, 4);
  std::vector<RecordOutcome> wrong_size(2);
  EXPECT_EQ(store->Record(batch, now, absl::MakeSpan(wrong_size)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(CounterStoreTest, DistinctSmallCountsAreExactAndSlide) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time t0 = clock_.Now();
  std::vector<std::string> accounts;
  for (int i = 0; i < 21; ++i) accounts.push_back(absl::StrCat("user:", i));
  std::vector<Observation> batch;
  for (const auto& a : accounts) {
    batch.push_back({2, "ip:10.0.0.1", a, t0});
    batch.push_back({2, "ip:10.0.0.1", a, t0});  // repeats do not count twice
  }
  ASSERT_TRUE(store->Record(batch, t0).ok());
  auto d = store->Distinct("accounts_per_ip", "ip:10.0.0.1", Hours(1), t0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, 21);
  // 30 minutes later, 10 of the same accounts and 5 new ones.
  clock_.Advance(Minutes(30));
  batch.clear();
  std::vector<std::string> more;
  for (int i = 15; i < 30; ++i) more.push_back(absl::StrCat("user:", i));
  for (const auto& a : more) batch.push_back({2, "ip:10.0.0.1", a, clock_.Now()});
  ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
  EXPECT_EQ(*store->Distinct("accounts_per_ip", "ip:10.0.0.1", Hours(1), clock_.Now()), 30);
  clock_.Advance(Minutes(31));  // the first 21 have left the window
  EXPECT_EQ(*store->Distinct("accounts_per_ip", "ip:10.0.0.1", Hours(1), clock_.Now()), 15);
  EXPECT_EQ(*store->Distinct("accounts_per_ip", "ip:10.9.9.9", Hours(1), clock_.Now()), 0);
}

// Redis keeps every window of a (counter, key) in one hash, fields "<window>:<bucket>"
// (count), "<window>:<bucket>:<value>" (a distinct bucket's exact values) or
// "<window>:<bucket>" indexing a sketch (a distinct hash past its first 32 values): a
// bucket that has left its window is deleted when the key starts a new bucket, so a key
// that stays busy does not grow.
// A node sends each key's PEXPIRE once per deadline; keys lost behind its back (FLUSHALL
// on a live connection) get their TTLs back on the next write, and reads stay right.
// Tests of the Redis backend's own layout (keys, TTLs, promotion), on Redis only.
class RedisLayoutTest : public CounterStoreTest {
 protected:
  void SetUp() override {
    absl::Status started = redis_->Start();
    ASSERT_TRUE(started.ok()) << started;
    conn_ = ConnectRedis();
    ASSERT_TRUE(conn_ != nullptr && conn_->err == 0);
  }
  // `cmd key` on the test's own connection: its integer reply, -100 for any other.
  long long Int(std::string_view cmd, std::string_view key) {
    auto* r = static_cast<redisReply*>(
        redisCommand(conn_.get(), "%b %b", cmd.data(), cmd.size(), key.data(), key.size()));
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -100;
    if (r) freeReplyObject(r);
    return v;
  }
  RedisConn conn_{nullptr, &redisFree};
};

// A counter name that a later policy set gives to the other kind (count, then distinct,
// then count again) counts from zero on keys of its own: both kinds write "<window>:<bucket>"
// fields, and sharing one hash broke the distinct reads until the hash expired.
TEST_P(RedisLayoutTest, ACounterNameReusedAsTheOtherKindStartsAfresh) {
  const CounterSpec as_count{"n", "play", "entity", "", {Hours(1)}};
  const CounterSpec as_distinct{"n", "play", "entity", "attrs.track", {Hours(1)}};
  const absl::Time t = clock_.Now();
  auto counted = MakeRedis({as_count}, {});
  ASSERT_NE(counted, nullptr);
  ASSERT_TRUE(counted->Record({{0, "user:r", "", t}, {0, "user:r", "", t}}, t).ok());
  auto distinct = MakeRedis({as_distinct}, {}, /*peer=*/true);
  ASSERT_NE(distinct, nullptr);
  std::vector<Observation> tracks;
  for (const char* track : {"t1", "t2", "t2", "t3"}) tracks.push_back({0, "user:r", track, t});
  auto recorded = distinct->Record(tracks, t);
  ASSERT_TRUE(recorded.ok()) << recorded.status();
  auto d = distinct->Distinct("n", "user:r", Hours(1), t);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, 3);
  // Back to a count: the two plays counted before, not the distinct hash's fields.
  auto again = MakeRedis({as_count}, {}, /*peer=*/true);
  ASSERT_NE(again, nullptr);
  auto c = again->Count("n", "user:r", Hours(1), t);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, 2);
}

TEST_P(RedisLayoutTest, KeysLostBehindTheNodeGetTheirTtlsBack) {
  auto store = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(store, nullptr);
  RedisCounterStore* redis = store.get();
  redisContext* c = conn_.get();
  // "ip:10.0.0.9" holds its values exactly; "ip:10.0.0.8" gets 40 at once: sketches.
  std::vector<std::string> many;
  for (int i = 0; i < 40; ++i) many.push_back(absl::StrCat("user:m", i));
  auto play = [&](std::string value) {
    std::vector<Observation> batch = {{0, "user:lost", "", clock_.Now()},
                                      {2, "ip:10.0.0.9", value, clock_.Now()}};
    for (const auto& m : many) batch.push_back({2, "ip:10.0.0.8", m, clock_.Now()});
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
  };
  play("user:a");
  const int64_t commands_first = redis->Stats().commands;
  // The store's other connections open one by one (each new one sets the TTLs again,
  // since Redis may have restarted); then, on open connections, the same buckets: no
  // PEXPIRE this time.
  for (int i = 1; i < RedisOptions().connections; ++i) play("user:b");
  const int64_t commands_before = redis->Stats().commands;
  play("user:b");
  const int64_t commands_second = redis->Stats().commands - commands_before;
  EXPECT_LT(commands_second, commands_first);
  auto* r = static_cast<redisReply*>(redisCommand(c, "FLUSHALL"));
  ASSERT_NE(r, nullptr);
  freeReplyObject(r);
  play("user:c");
  const auto& set = store->counters();
  const int64_t b1h = set.geometry(2)[0].BucketOf(clock_.Now());
  const std::string sketch = redis->KeyForTest(2, 0, "ip:10.0.0.8", b1h);
  const std::string index = redis->HashKeyForTest(2, "ip:10.0.0.8");
  const std::string exact = redis->KeyForTest(2, 0, "ip:10.0.0.9", b1h);
  EXPECT_EQ(Int("EXISTS", exact), 0) << "a sketch for a hash of 1 value: " << exact;
  const std::string exact_index = redis->HashKeyForTest(2, "ip:10.0.0.9");
  // One hash holds every window of a count counter.
  for (const std::string& key :
       {redis->HashKeyForTest(0, "user:lost"), sketch, index, exact_index}) {
    EXPECT_GT(Int("PTTL", key), 0) << key;
  }
  EXPECT_EQ(CountOf(*store, "user:lost", Minutes(1)), 1);
  EXPECT_EQ(*store->Distinct("accounts_per_ip", "ip:10.0.0.9", Hours(1), clock_.Now()), 1);
  EXPECT_NEAR(*store->Distinct("accounts_per_ip", "ip:10.0.0.8", Hours(1), clock_.Now()), 40, 1);
}

// The node's memory of the TTLs it set keeps two generations: a key written again while
// other keys fill the cache keeps its entry (no second PEXPIRE), one that was not
// written for two generations loses it (its next write sets the TTL again).
TEST_P(RedisLayoutTest, TtlCacheKeepsKeysInUse) {
  RedisOptions options;
  options.connections = 1;
  options.ttl_cache_entries = 4;
  auto made = MakeRedis({{"plays", "play", "entity", "", {Hours(1)}}}, options);
  ASSERT_NE(made, nullptr);
  RedisCounterStore& store = *made;
  int other = 0;
  // Commands one write of `user` sends: HINCRBY, PEXPIRE unless remembered, and the
  // PEXPIRE of the node's sentinel key (SET once more on the first write).
  auto write = [&](std::string_view user) {
    const int64_t before = store.Stats().commands;
    Play(store, user, clock_.Now());
    return store.Stats().commands - before;
  };
  auto others = [&](int n) {
    for (int i = 0; i < n; ++i) EXPECT_EQ(write(absl::StrCat("user:other", other++)), 3);
  };
  EXPECT_EQ(write("user:kept"), 4);
  EXPECT_EQ(write("user:kept"), 2);
  for (int round = 0; round < 4; ++round) {
    others(3);  // a generation turns over every 4 entries
    EXPECT_EQ(write("user:kept"), 2) << round;
  }
  others(9);  // two generations without user:kept
  EXPECT_EQ(write("user:kept"), 3);
  EXPECT_EQ(CountOf(store, "user:kept", Hours(1)), 7);
}

// A key this node has set up costs one command per write, also when the write opens a
// new bucket (plus one per batch for the node's sentinel key); after FLUSHALL the
// sentinel is gone, and the next write sets the TTLs again.
TEST_P(RedisLayoutTest, KnownKeysSendOnlyTheirWrites) {
  RedisOptions options;
  options.connections = 1;
  auto made = MakeRedis({{"plays", "play", "entity", "", {Minutes(1), Hours(1)}}}, options);
  ASSERT_NE(made, nullptr);
  RedisCounterStore& store = *made;
  auto write = [&] {
    const int64_t before = store.Stats().commands;
    Play(store, "user:known", clock_.Now());
    return store.Stats().commands - before;
  };
  EXPECT_EQ(write(), 4);  // HINCRBY, PEXPIRE, sentinel PEXPIRE; SET of the sentinel
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(Seconds(1));  // a new one-second bucket, the same one-minute deadline
    EXPECT_EQ(write(), 2) << i;
  }
  auto* r = static_cast<redisReply*>(redisCommand(conn_.get(), "FLUSHALL"));
  ASSERT_NE(r, nullptr);
  freeReplyObject(r);
  clock_.Advance(Seconds(1));
  EXPECT_EQ(write(), 4);  // HINCRBY, sentinel PEXPIRE; then PEXPIRE and SET of the sentinel
  EXPECT_GT(Int("PTTL", store.HashKeyForTest(0, "user:known")), 3'600'000);
  EXPECT_EQ(CountOf(store, "user:known", Minutes(1)), 1);
  EXPECT_EQ(write(), 2);
}

TEST_P(RedisLayoutTest, WindowHashesDropBucketsThatLeftTheWindow) {
  auto store = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(store, nullptr);
  RedisCounterStore* redis = store.get();
  redisContext* c = conn_.get();
  // The buckets of window `window` that `key` has fields for ("<window>:<bucket>",
  // "+<window>:<bucket>" for a nested count counter's, or "<window>:<bucket>:<value>" for
  // a distinct bucket's exact values).
  auto hlen = [&](const std::string& key, std::string_view window) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "HKEYS %b", key.data(), key.size()));
    std::vector<std::string> buckets;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
      std::string_view f(r->element[i]->str, r->element[i]->len);
      if (!f.empty() && f[0] == '+') f.remove_prefix(1);
      const size_t colon = f.find(':');
      if (colon == std::string_view::npos || f.substr(0, colon) != window) continue;
      buckets.emplace_back(f.substr(0, f.find(':', colon + 1)));
    }
    const bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r) freeReplyObject(r);
    std::sort(buckets.begin(), buckets.end());
    buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
    return ok ? static_cast<long long>(buckets.size()) : -1LL;
  };
  // One hash per (counter, key) holds every window of the counter.
  const std::string plays = redis->KeyForTest(0, 0, "user:busy", 0);
  EXPECT_EQ(plays, redis->KeyForTest(0, 2, "user:busy", 0));
  const std::string ip_index = redis->HashKeyForTest(2, "ip:10.0.0.7");
  // `plays` (1m, 1h, 24h: bucket widths 1 s, 1 min, 24 min divide one another) is nested:
  // an event is one field of the narrowest window that reads it, and moves to the next
  // wider window when the hash is cleaned after it left that window.
  // Every 20 s for 3 minutes: a 1m window never holds more than its 60 buckets' worth.
  for (int i = 0; i < 10; ++i) {
    const std::string user = absl::StrCat("user:", i);  // outlives the batch's views
    std::vector<Observation> batch = {{0, "user:busy", "", clock_.Now()},
                                      {2, "ip:10.0.0.7", user, clock_.Now()}};
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
    if (i < 9) clock_.Advance(Seconds(20));
  }
  EXPECT_EQ(CountOf(*store, "user:busy", Minutes(1)), 3);
  EXPECT_EQ(CountOf(*store, "user:busy", Hours(1)), 10);
  EXPECT_EQ(CountOf(*store, "user:busy", Hours(24)), 10);
  EXPECT_EQ(hlen(plays, "1m"), 3);  // 2m20s..3m: buckets 2:20, 2:40, 3:00
  EXPECT_EQ(hlen(plays, "1h"), 3);  // the older ones, in one-minute buckets 0..2
  EXPECT_EQ(hlen(plays, core::DurationString(Hours(24))), 0);
  EXPECT_EQ(hlen(ip_index, "1h"), 4);
  // Two hours on (the fake clock; in real time Redis would have expired the 1h index
  // hash, and this node's TTL cache takes it as gone, so its first write does not clean
  // it but starts its cleanup interval, 10 min for a 1h window; the plays hash lives as
  // long as its 24h window, so its first write cleans it), one event, one a minute later
  // and one 10 minutes after that: a new bucket of a hash the node knows to exist drops
  // every bucket that left its window once per cleanup interval.
  clock_.Advance(Hours(2));
  for (int i = 0; i < 3; ++i) {
    std::vector<Observation> batch = {{0, "user:busy", "", clock_.Now()},
                                      {2, "ip:10.0.0.7", "user:late", clock_.Now()}};
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
    if (i == 1) {
      // The first write moved the 10 of two hours ago to 24-minute bucket 0, the
      // second the first one to its one-minute bucket.
      EXPECT_EQ(hlen(plays, "1m"), 1);
      EXPECT_EQ(hlen(plays, "1h"), 1);
      EXPECT_EQ(hlen(plays, core::DurationString(Hours(24))), 1);
      EXPECT_EQ(hlen(ip_index, "1h"), 6);  // not yet: within the interval
    }
    if (i < 2) clock_.Advance(Minutes(i == 0 ? 1 : 10));
  }
  EXPECT_EQ(hlen(plays, "1m"), 1);
  EXPECT_EQ(hlen(plays, "1h"), 2);
  EXPECT_EQ(hlen(plays, core::DurationString(Hours(24))), 1);
  EXPECT_EQ(hlen(ip_index, "1h"), 3);
  EXPECT_EQ(CountOf(*store, "user:busy", Minutes(1)), 1);
  EXPECT_EQ(CountOf(*store, "user:busy", Hours(1)), 3);
  EXPECT_EQ(CountOf(*store, "user:busy", Hours(24)), 13);
  EXPECT_EQ(*store->Distinct("accounts_per_ip", "ip:10.0.0.7", Hours(1), clock_.Now()), 1);
}

// A key written every second: its hash is cleaned about six times per 1m window (not at
// every new bucket), so it holds the window's 60 buckets plus at most two cleanup
// intervals (10 s each) of old ones, and reads stay exact.
TEST_P(RedisLayoutTest, BusyHashIsCleanedEveryInterval) {
  auto store = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(store, nullptr);
  RedisCounterStore* redis = store.get();
  redisContext* c = conn_.get();
  const std::string plays = redis->KeyForTest(0, 0, "user:steady", 0);
  int64_t most = 0;
  for (int i = 0; i < 150; ++i) {
    std::vector<Observation> batch = {{0, "user:steady", "", clock_.Now()}};
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
    auto* r = static_cast<redisReply*>(redisCommand(c, "HLEN %b", plays.data(), plays.size()));
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->type, REDIS_REPLY_INTEGER);
    most = std::max<int64_t>(most, r->integer);
    freeReplyObject(r);
    if (i < 149) clock_.Advance(Seconds(1));
  }
  // Fields: 1m buckets (<= 60 + 20 old), 3 1h buckets, 1 24h bucket.
  EXPECT_GT(most, 60 + 3 + 1);
  EXPECT_LE(most, 60 + 20 + 3 + 1);
  EXPECT_EQ(CountOf(*store, "user:steady", Minutes(1)), 60);
  EXPECT_EQ(CountOf(*store, "user:steady", Hours(1)), 150);
}

// The exact fields of a distinct hash ("<window>:<bucket>:<value>") and its sketch keys.
struct DistinctLayout {
  int64_t exact = 0;
  int64_t sketches = 0;
};

DistinctLayout LayoutOf(redisContext* c, RedisCounterStore& store, int counter,
                        std::string_view key, absl::Time now) {
  DistinctLayout out;
  const WindowGeometry& g = store.counters().geometry(counter)[0];
  const std::string hash = store.HashKeyForTest(counter, key);
  auto* r = static_cast<redisReply*>(redisCommand(c, "HKEYS %b", hash.data(), hash.size()));
  for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
    std::string_view f(r->element[i]->str, r->element[i]->len);
    if (std::count(f.begin(), f.end(), ':') >= 2) ++out.exact;
  }
  if (r) freeReplyObject(r);
  for (int64_t b = g.OldestBucket(now); b <= g.BucketOf(now); ++b) {
    const std::string sketch = store.KeyForTest(counter, 0, key, b);
    r = static_cast<redisReply*>(redisCommand(c, "EXISTS %b", sketch.data(), sketch.size()));
    if (r && r->type == REDIS_REPLY_INTEGER) out.sketches += r->integer;
    if (r) freeReplyObject(r);
  }
  return out;
}

// A distinct hash holds its first values exactly (no sketch key; reads are exact) and
// moves them into HyperLogLog sketches once 32 values have been written to it.
TEST_P(RedisLayoutTest, DistinctBucketsStayExactUntilTheyFill) {
  auto store = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(store, nullptr);
  RedisCounterStore* redis = store.get();
  redisContext* c = conn_.get();
  int next = 0;
  // `n` new accounts (and one repeat of the first) from one IP, one batch.
  auto logins = [&](int n) {
    std::vector<std::string> users;
    for (int i = 0; i < n; ++i) users.push_back(absl::StrCat("user:", next++));
    std::vector<Observation> batch;
    for (const auto& u : users) batch.push_back({2, "ip:10.1.1.1", u, clock_.Now()});
    batch.push_back({2, "ip:10.1.1.1", "user:0", clock_.Now()});
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
  };
  auto distinct = [&] {
    auto d = store->Distinct("accounts_per_ip", "ip:10.1.1.1", Hours(1), clock_.Now());
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : -1;
  };
  for (int i = 0; i < 3; ++i) {
    logins(5);
    clock_.Advance(Minutes(2));  // a new bucket of the 1h window each time
  }
  EXPECT_EQ(distinct(), 15);
  DistinctLayout layout = LayoutOf(c, *redis, 2, "ip:10.1.1.1", clock_.Now());
  EXPECT_EQ(layout.sketches, 0);
  EXPECT_EQ(layout.exact, 15 + 2);  // user:0 again in the second and third bucket
  logins(10);                       // 10 + 1 more: 29 values written, still exact
  EXPECT_EQ(distinct(), 25);
  EXPECT_EQ(LayoutOf(c, *redis, 2, "ip:10.1.1.1", clock_.Now()).sketches, 0);
  clock_.Advance(Minutes(2));
  logins(10);  // past 32: every bucket moves to a sketch
  layout = LayoutOf(c, *redis, 2, "ip:10.1.1.1", clock_.Now());
  EXPECT_EQ(layout.exact, 0);
  EXPECT_EQ(layout.sketches, 5);
  EXPECT_NEAR(distinct(), 35, 1);
  logins(5);  // written to the sketch directly
  EXPECT_EQ(LayoutOf(c, *redis, 2, "ip:10.1.1.1", clock_.Now()).exact, 0);
  EXPECT_NEAR(distinct(), 40, 1);
  // 55 minutes on, the buckets of minutes 0 and 2 have left the window; those of minutes
  // 4 (5 accounts and user:0), 6 (10) and 8 (15) have not.
  clock_.Advance(Minutes(55));
  EXPECT_NEAR(distinct(), 31, 1);
}

// A distinct window held as sketches cannot be asked about a value without writing to
// it: ReadWith counts each pending value as new there (in process, the sketch answers).
TEST_P(RedisLayoutTest, ReadWithCountsPendingValuesBesideSketchesAsNew) {
  auto store = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  std::vector<std::string> users;
  for (int i = 0; i < 40; ++i) users.push_back(absl::StrCat("user:", i));
  std::vector<Observation> batch;
  for (const auto& u : users) batch.push_back({2, "ip:10.2.2.2", u, now});
  ASSERT_TRUE(store->Record(batch, now).ok());
  ASSERT_EQ(LayoutOf(conn_.get(), *store, 2, "ip:10.2.2.2", now).exact, 0);
  const std::vector<ReadRequest> reads = {{2, "ip:10.2.2.2", Hours(1)}};
  std::vector<int64_t> before(1), with(1);
  ASSERT_TRUE(store->Read(reads, now, absl::MakeSpan(before)).ok());
  const std::vector<Observation> pending = {{2, "ip:10.2.2.2", "user:0", now},
                                            {2, "ip:10.2.2.2", "user:0", now}};
  ASSERT_TRUE(store->ReadWith(reads, pending, now, absl::MakeSpan(with)).ok());
  EXPECT_EQ(with[0], before[0] + 1);
}

// Two nodes on one Redis count one distinct set together, across the promotion: a node
// that still takes the hash as exact writes exact values, learns from its reply that the
// other node promoted it, and moves them into the sketches.
TEST_P(RedisLayoutTest, TwoNodesShareDistinctCountsAcrossThePromotion) {
  auto first = MakeRedis(ExampleSpecs(), {});
  ASSERT_NE(first, nullptr);
  auto second = MakeRedis(ExampleSpecs(), {}, /*peer=*/true);
  ASSERT_NE(second, nullptr);
  redisContext* c = conn_.get();
  auto logins = [&](CounterStore& node, int from, int to) {
    std::vector<std::string> users;
    for (int i = from; i < to; ++i) users.push_back(absl::StrCat("user:", i));
    std::vector<Observation> batch;
    for (const auto& u : users) batch.push_back({2, "ip:10.2.2.2", u, clock_.Now()});
    ASSERT_TRUE(node.Record(batch, clock_.Now()).ok());
  };
  auto distinct = [&](CounterStore& node) {
    auto d = node.Distinct("accounts_per_ip", "ip:10.2.2.2", Hours(1), clock_.Now());
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : -1;
  };
  logins(*first, 0, 10);
  logins(*second, 5, 15);
  EXPECT_EQ(distinct(*first), 15);
  EXPECT_EQ(distinct(*second), 15);
  logins(*first, 15, 45);  // 50 values written: the first node promotes the hash
  EXPECT_NEAR(distinct(*second), 45, 1);
  RedisCounterStore* redis = first.get();
  EXPECT_EQ(LayoutOf(c, *redis, 2, "ip:10.2.2.2", clock_.Now()).exact, 0);
  logins(*second, 45, 50);  // as exact values, then moved by the second node itself
  EXPECT_EQ(LayoutOf(c, *redis, 2, "ip:10.2.2.2", clock_.Now()).exact, 0);
  EXPECT_NEAR(distinct(*first), 50, 1);
  EXPECT_NEAR(distinct(*second), 50, 1);
  logins(*second, 50, 55);  // the second node now writes to the sketch
  EXPECT_EQ(LayoutOf(c, *redis, 2, "ip:10.2.2.2", clock_.Now()).exact, 0);
  EXPECT_NEAR(distinct(*first), 55, 1);
}

// Nodes whose policy sets declare different windows for one counter (a new set being
// rolled out) still count together: a nested writer's fields are read by a node that
// does not declare their window, and the other way round.
TEST_P(RedisLayoutTest, NodesWithDifferentWindowsCountTogether) {
  auto nested = Make({{"plays", "play", "entity", "", {Minutes(1), Hours(1)}}});
  ASSERT_NE(nested, nullptr);
  auto flat = MakeRedis({{"plays", "play", "entity", "", {Hours(1)}}}, {}, /*peer=*/true);
  ASSERT_NE(flat, nullptr);
  const absl::Time t0 = clock_.Now();
  Play(*nested, "user:mixed", t0, 3);
  Play(*flat, "user:mixed", t0, 2);
  EXPECT_EQ(*flat->Count("plays", "user:mixed", Hours(1), t0), 5);
  EXPECT_EQ(*nested->Count("plays", "user:mixed", Hours(1), t0), 5);
  EXPECT_EQ(*nested->Count("plays", "user:mixed", Minutes(1), t0), 3);  // the flat node has no 1m
  clock_.Advance(Minutes(5));
  Play(*nested, "user:mixed", clock_.Now());  // cleans: the first 3 move to their 1h bucket
  EXPECT_EQ(*flat->Count("plays", "user:mixed", Hours(1), clock_.Now()), 6);
  EXPECT_EQ(*nested->Count("plays", "user:mixed", Hours(1), clock_.Now()), 6);
  EXPECT_EQ(*nested->Count("plays", "user:mixed", Minutes(1), clock_.Now()), 1);
}

TEST_P(CounterStoreTest, DistinctAccuracyOn100kValues) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  constexpr int kValues = 100000;
  std::vector<std::string> tracks;
  tracks.reserve(kValues);
  for (int i = 0; i < kValues; ++i) tracks.push_back(absl::StrCat("track:", i * 7919 + 13));
  // Spread over 50 minutes (50 buckets of the 1h window), each value seen twice.
  for (int minute = 0; minute < 50; ++minute) {
    std::vector<Observation> batch;
    for (int i = minute; i < kValues; i += 50) {
      batch.push_back({1, "ip:192.0.2.7", tracks[i], clock_.Now()});
      batch.push_back({1, "ip:192.0.2.7", tracks[(i + 25) % kValues], clock_.Now()});
    }
    ASSERT_TRUE(store->Record(batch, clock_.Now()).ok());
    clock_.Advance(Minutes(1));
  }
  auto d = store->Distinct("tracks_per_ip", "ip:192.0.2.7", Hours(1), clock_.Now());
  ASSERT_TRUE(d.ok()) << d.status();
  const double error = std::abs(static_cast<double>(*d) - kValues) / kValues;
  EXPECT_LE(error, 0.02) << "estimate " << *d;
  std::printf("[ distinct ] backend %s: %lld for %d values, relative error %.3f%%\n",
              GetParam() == Backend::kRedis ? "redis" : "in-process", static_cast<long long>(*d),
              kValues, error * 100);
}

TEST_P(CounterStoreTest, BatchedReadsMatchSingleReads) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  std::vector<std::string> users;
  for (int i = 0; i < 10; ++i) users.push_back(absl::StrCat("user:", i));
  std::vector<Observation> batch;
  for (int i = 0; i < 10; ++i) {
    for (int j = 0; j <= i; ++j) batch.push_back({0, users[i], "", now - Seconds(j)});
    batch.push_back({1, "ip:1", users[i], now});
  }
  ASSERT_TRUE(store->Record(batch, now).ok());
  std::vector<ReadRequest> reads;
  for (int i = 0; i < 10; ++i) reads.push_back({0, users[i], Minutes(1)});
  reads.push_back({1, "ip:1", Hours(1)});
  reads.push_back({0, "user:none", Hours(24)});
  std::vector<int64_t> values(reads.size(), -1);
  ASSERT_TRUE(store->Read(reads, now, absl::MakeSpan(values)).ok());
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(values[i], i + 1) << users[i];
    EXPECT_EQ(*store->Count("plays", users[i], Minutes(1), now), i + 1);
  }
  EXPECT_EQ(values[10], 10);
  EXPECT_EQ(values[11], 0);
}

// ReadWith reads as if the pending observations had been recorded, and records nothing:
// what POST /v1/policies/test shows a rule, the store untouched.
TEST_P(CounterStoreTest, ReadWithCountsPendingObservationsWithoutRecordingThem) {
  TimeOptions time;
  time.max_lateness = Minutes(45);
  auto store = Make(ExampleSpecs(), time);
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  Play(*store, "user:u1", now, 3);
  ASSERT_TRUE(store
                  ->Record(std::vector<Observation>{{1, "ip:1", "track:t1", now},
                                                    {1, "ip:1", "track:t2", now}},
                           now)
                  .ok());
  const std::vector<Observation> pending = {
      {0, "user:u1", "", now},
      {0, "user:u1", "", now},
      {0, "user:u1", "", now - Minutes(30)},  // in the 1h window, not the 1m one
      {0, "user:u1", "", now - Minutes(50)},  // past the lateness bound: Record refuses it
      {0, "user:u1", "", now + Seconds(3)},   // ahead: in the 1h window's bucket of now,
                                              // past the 1m window's
      {0, "user:u2", "", now},
      {1, "ip:1", "track:t2", now},  // counted already: adds nothing
      {1, "ip:1", "track:t3", now},
      {1, "ip:1", "track:t3", now},  // twice in the batch: once
      {1, "ip:2", "track:t1", now},
  };
  const std::vector<ReadRequest> reads = {
      {0, "user:u1", Minutes(1)}, {0, "user:u1", Hours(1)}, {0, "user:u2", Hours(24)},
      {0, "user:u3", Hours(1)},   {1, "ip:1", Hours(1)},    {1, "ip:2", Hours(1)},
      {1, "ip:3", Hours(1)},
  };
  std::vector<int64_t> values(reads.size(), -1);
  ASSERT_TRUE(store->ReadWith(reads, pending, now, absl::MakeSpan(values)).ok());
  EXPECT_EQ(values, (std::vector<int64_t>{5, 7, 1, 0, 3, 1, 0}));
  // Nothing was recorded.
  ASSERT_TRUE(store->Read(reads, now, absl::MakeSpan(values)).ok());
  EXPECT_EQ(values, (std::vector<int64_t>{3, 3, 0, 0, 2, 0, 0}));
  EXPECT_EQ(store->Stats().counted, 5);
  // Without pending observations it is Read(); bad reads fail as Read()'s do.
  ASSERT_TRUE(store->ReadWith(reads, {}, now, absl::MakeSpan(values)).ok());
  EXPECT_EQ(values, (std::vector<int64_t>{3, 3, 0, 0, 2, 0, 0}));
  const std::vector<ReadRequest> bad = {{0, "user:u1", Minutes(5)}};
  std::vector<int64_t> one(1);
  EXPECT_EQ(store->ReadWith(bad, pending, now, absl::MakeSpan(one)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->ReadWith(reads, pending, now, absl::MakeSpan(one)).code(),
            absl::StatusCode::kInvalidArgument);
}

// Pipelines whose replies run to megabytes (Redis: replies cross every read's end,
// inside arrays too) come back whole and in order.
TEST_P(CounterStoreTest, LargeBatchesReadBackExactly) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  std::vector<std::string> users, ips, tracks;
  for (int i = 0; i < 3000; ++i) users.push_back(absl::StrCat("user:large-", i));
  for (int i = 0; i < 600; ++i) ips.push_back(absl::StrCat("ip:10.9.", i / 256, ".", i % 256));
  for (int i = 0; i < 31; ++i) tracks.push_back(absl::StrCat("track:a-rather-long-name-", i));
  std::vector<Observation> batch;
  for (int i = 0; i < 3000; ++i) {
    for (int j = 0; j <= i % 3; ++j) batch.push_back({0, users[i], "", now - Seconds(j)});
  }
  for (int i = 0; i < 600; ++i) {
    for (int j = 0; j <= i % 31; ++j) batch.push_back({1, ips[i], tracks[j], now});
  }
  ASSERT_TRUE(store->Record(batch, now).ok());
  std::vector<ReadRequest> reads;
  for (int i = 0; i < 3000; ++i) reads.push_back({0, users[i], Hours(24)});
  for (int i = 0; i < 600; ++i) reads.push_back({1, ips[i], Hours(1)});
  std::vector<int64_t> values(reads.size(), -1);
  ASSERT_TRUE(store->Read(reads, now, absl::MakeSpan(values)).ok());
  for (int i = 0; i < 3000; ++i) ASSERT_EQ(values[i], i % 3 + 1) << users[i];
  for (int i = 0; i < 600; ++i) ASSERT_EQ(values[3000 + i], i % 31 + 1) << ips[i];
}

TEST_P(CounterStoreTest, ConcurrentWritersLoseNothing) {
  auto store = Make();
  ASSERT_NE(store, nullptr);
  const absl::Time now = clock_.Now();
  constexpr int kThreads = 4;
  constexpr int kBatches = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<std::string> keys;
        for (int k = 0; k < 20; ++k) keys.push_back(absl::StrCat("user:", k));
        std::vector<Observation> batch;
        for (const auto& k : keys) batch.push_back({0, k, "", now});
        auto r = store->Record(batch, now);
        EXPECT_TRUE(r.ok()) << r.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < 20; ++k) {
    EXPECT_EQ(*store->Count("plays", absl::StrCat("user:", k), Minutes(1), now),
              kThreads * kBatches);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CounterStoreTest,
                         ::testing::Values(Backend::kInProcess, Backend::kRedis),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kRedis ? "Redis" : "InProcess";
                         });
INSTANTIATE_TEST_SUITE_P(Redis, RedisLayoutTest, ::testing::Values(Backend::kRedis));

TEST(CounterSetTest, ValidatesSpecs) {
  auto ok = CounterSet::Create(ExampleSpecs(), {});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->Find("accounts_per_ip"), 2);
  EXPECT_EQ(ok->Find("nope"), -1);
  EXPECT_EQ(ok->ForEvent("play").size(), 2u);
  EXPECT_EQ(ok->ForEvent("signup").size(), 0u);
  EXPECT_EQ(ok->key_field(1).kind, FieldRef::Kind::kAttr);
  EXPECT_EQ(ok->key_field(1).attr, "ip");
  EXPECT_EQ(ok->distinct_field(2).kind, FieldRef::Kind::kEntity);
  EXPECT_EQ(ok->distinct_field(0).kind, FieldRef::Kind::kNone);
  EXPECT_EQ(ok->geometry(0)[0].width_us, 1000000);
  EXPECT_EQ(ok->geometry(0)[2].width_us, 24 * 60 * 1000000LL);
  EXPECT_EQ(ok->geometry(0)[2].buckets, 60);

  auto bad = [](CounterSpec s) { return CounterSet::Create({std::move(s)}, {}).status().code(); };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(bad({"a b", "play", "entity", "", {Hours(1)}}), kInvalid);
  EXPECT_EQ(bad({"a", "", "entity", "", {Hours(1)}}), kInvalid);
  EXPECT_EQ(bad({"a", "play", "ip", "", {Hours(1)}}), kInvalid);
  EXPECT_EQ(bad({"a", "play", "entity", "attrs.", {Hours(1)}}), kInvalid);
  EXPECT_EQ(bad({"a", "play", "entity", "", {}}), kInvalid);
  EXPECT_EQ(bad({"a", "play", "entity", "", {Hours(1), Hours(1)}}), kInvalid);
  EXPECT_EQ(bad({"a", "play", "entity", "", {absl::ZeroDuration()}}), kInvalid);
  EXPECT_EQ(CounterSet::Create({ExampleSpecs()[0], ExampleSpecs()[0]}, {}).status().code(),
            kInvalid);
}

// In-process only: the memory bound.
TEST(InProcessCounterStoreTest, KeyCapEvictsLeastRecentlyWritten) {
  InProcessOptions options;
  options.max_keys = 100;
  options.shards = 1;
  auto store = InProcessCounterStore::Create(ExampleSpecs(), options);
  ASSERT_TRUE(store.ok());
  core::FakeClock clock;
  for (int i = 0; i < 1000; ++i) {
    std::string key = absl::StrCat("user:", i);
    Observation o{0, key, "", clock.Now()};
    ASSERT_TRUE((*store)->Record({&o, 1}, clock.Now()).ok());
    clock.Advance(absl::Milliseconds(10));
  }
  StoreStats st = (*store)->Stats();
  EXPECT_LE(st.keys, 100);
  EXPECT_EQ(st.keys + st.evicted_cap, 1000);
  EXPECT_EQ(st.evicted_expired, 0);
  EXPECT_EQ(*(*store)->Count("plays", "user:999", Hours(1), clock.Now()), 1);
  EXPECT_EQ(*(*store)->Count("plays", "user:0", Hours(1), clock.Now()), 0);

  // With many shards the cap holds in total.
  options.shards = 64;
  options.max_keys = 640;
  auto sharded = InProcessCounterStore::Create(ExampleSpecs(), options);
  ASSERT_TRUE(sharded.ok());
  for (int i = 0; i < 20000; ++i) {
    std::string key = absl::StrCat("ip:", i);
    Observation o{0, key, "", clock.Now()};
    ASSERT_TRUE((*sharded)->Record({&o, 1}, clock.Now()).ok());
  }
  st = (*sharded)->Stats();
  EXPECT_LE(st.keys, 640);
  EXPECT_GT(st.evicted_cap, 0);
  EXPECT_EQ(st.keys + st.evicted_cap, 20000);
}

TEST(InProcessCounterStoreTest, IdleKeysExpire) {
  InProcessOptions options;
  options.sweep_interval = Minutes(10);
  auto store = InProcessCounterStore::Create(ExampleSpecs(), options);
  ASSERT_TRUE(store.ok());
  core::FakeClock clock;
  std::vector<std::string> keys;
  for (int i = 0; i < 500; ++i) keys.push_back(absl::StrCat("user:", i));
  std::vector<Observation> batch;
  for (const auto& k : keys) batch.push_back({0, k, "", clock.Now()});
  for (const auto& k : keys) batch.push_back({2, "ip:1", k, clock.Now()});
  ASSERT_TRUE((*store)->Record(batch, clock.Now()).ok());
  EXPECT_EQ((*store)->Stats().keys, 501);
  // After 2h the 1h distinct counter's entry is dead; the 24h plays entries are not.
  clock.Advance(Hours(2));
  (*store)->Sweep(clock.Now());
  EXPECT_EQ((*store)->Stats().keys, 500);
  EXPECT_EQ((*store)->Stats().evicted_expired, 1);
  EXPECT_EQ(*(*store)->Count("plays", "user:7", Hours(24), clock.Now()), 1);
  // After 24h (+ one 24-minute bucket) they go too, swept inline by later writes.
  clock.Advance(Hours(23));
  EXPECT_EQ((*store)->Stats().keys, 500);
  clock.Advance(Minutes(25));
  for (int i = 0; i < 2000; ++i) {  // touches every shard
    std::string key = absl::StrCat("new:", i);
    Observation o{0, key, "", clock.Now()};
    ASSERT_TRUE((*store)->Record({&o, 1}, clock.Now()).ok());
  }
  StoreStats st = (*store)->Stats();
  EXPECT_EQ(st.keys, 2000);
  EXPECT_EQ(st.evicted_expired, 501);
  EXPECT_EQ(st.evicted_cap, 0);
}

TEST(InProcessCounterStoreTest, BusyDistinctBucketsTurnDense) {
  auto store = InProcessCounterStore::Create(ExampleSpecs(), {});
  ASSERT_TRUE(store.ok());
  core::FakeClock clock;
  std::vector<std::string> values;
  for (int i = 0; i < 10000; ++i) values.push_back(absl::StrCat("track:", i));
  std::vector<Observation> batch;
  for (const auto& v : values) batch.push_back({1, "ip:nat", v, clock.Now()});
  ASSERT_TRUE((*store)->Record(batch, clock.Now()).ok());
  EXPECT_EQ((*store)->Stats().dense_sketches, 1);
  auto d = (*store)->Distinct("tracks_per_ip", "ip:nat", Hours(1), clock.Now());
  EXPECT_NEAR(*d, 10000, 200);
  clock.Advance(Hours(3));
  (*store)->Sweep(clock.Now());
  EXPECT_EQ((*store)->Stats().dense_sketches, 0);
}

}  // namespace
}  // namespace quell::counters
