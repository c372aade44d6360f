// The Redis CounterStore against a real redis-server that the test starts, stops, pauses
// and restarts under it: keys carry TTLs that match their windows, a dead or stuck Redis
// turns into kUnavailable, and the same store object recovers when Redis comes back.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/time.h"
#include "counters/redis_store.h"
#include "gtest/gtest.h"
#include "tests/integration/redis_server.h"

namespace quell::counters {
namespace {

using absl::Hours;
using absl::Minutes;

std::vector<CounterSpec> Specs() {
  return {
      {"plays", "play", "entity", "", {Minutes(1), Hours(1)}},
      {"accounts_per_ip", "login", "attrs.ip", "entity", {Hours(1)}},
  };
}

class RedisCounterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::Status s = redis_.Start();
    ASSERT_TRUE(s.ok()) << s;
    RedisOptions options;
    options.port = redis_.port();
    options.io_timeout = absl::Milliseconds(200);
    options.connect_timeout = absl::Milliseconds(200);
    options.reconnect_backoff = absl::Milliseconds(100);
    options.connections = 2;
    auto store = RedisCounterStore::Create(Specs(), options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  absl::Status PlayOnce(std::string_view user) {
    Observation o{0, user, "", clock_.Now()};
    return store_->Record({&o, 1}, clock_.Now()).status();
  }

  // Retries (real time, up to 10 s) until a write goes through again.
  bool RecoversWithin10s() {
    for (int i = 0; i < 1000; ++i) {
      if (PlayOnce("user:probe").ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  testing::RedisServerForTest redis_;
  core::FakeClock clock_;
  std::unique_ptr<RedisCounterStore> store_;
};

TEST_F(RedisCounterStoreTest, KeysExpireWithTheirWindows) {
  std::vector<Observation> batch = {{0, "user:u1", "", clock_.Now()},
                                    {1, "ip:10.0.0.1", "user:u1", clock_.Now()}};
  ASSERT_TRUE(store_->Record(batch, clock_.Now()).ok());
  redisContext* c = redisConnect("127.0.0.1", redis_.port());
  ASSERT_TRUE(c != nullptr && c->err == 0);
  auto pttl = [&](const std::string& key) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "PTTL %b", key.data(), key.size()));
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -100;
    if (r) freeReplyObject(r);
    return v;
  };
  // The hash's field names, sorted.
  auto hkeys = [&](const std::string& key) {
    std::vector<std::string> names;
    auto* r = static_cast<redisReply*>(redisCommand(c, "HKEYS %b", key.data(), key.size()));
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
      names.emplace_back(r->element[i]->str, r->element[i]->len);
    }
    if (r) freeReplyObject(r);
    std::sort(names.begin(), names.end());
    return names;
  };
  const auto& set = store_->counters();
  const int64_t b1m = set.geometry(0)[0].BucketOf(clock_.Now());
  const int64_t b1h = set.geometry(0)[1].BucketOf(clock_.Now());
  // Both windows of a (counter, key) share one hash. Their bucket widths (1 s, 1 min)
  // divide one another, so an event is one field "+<window>:<bucket>" of the narrowest
  // window that reads it, which the 1h window reads too. The hash lives until the newest
  // bucket an accepted event can write (now + 5 s max_future_skew) leaves the longest
  // window (1h, 1 min buckets), + a 10 s margin.
  const std::string plays = store_->KeyForTest(0, 0, "user:u1", b1m);
  EXPECT_EQ(plays, store_->KeyForTest(0, 1, "user:u1", b1h));
  long long ttl = pttl(plays);
  EXPECT_GT(ttl, 3'600'000);
  EXPECT_LE(ttl, 3'671'000);
  EXPECT_EQ(hkeys(plays), (std::vector<std::string>{absl::StrCat("+1m:", b1m)}));
  EXPECT_EQ(*store_->Count("plays", "user:u1", absl::Hours(1), clock_.Now()), 1);
  // A distinct bucket's first values are fields of the (counter, key) hash,
  // "<window>:<bucket>:<value>", beside "n" (values written); its sketch key
  // "<hash>:<window>:<bucket>" appears once the hash has had 32 values.
  const std::string hll_key = store_->KeyForTest(1, 0, "ip:10.0.0.1", b1h);
  const std::string ip_hash = store_->HashKeyForTest(1, "ip:10.0.0.1");
  EXPECT_EQ(hll_key.rfind(ip_hash + ":", 0), 0u) << hll_key;  // "<hash>:<window>:<bucket>"
  ttl = pttl(ip_hash);
  EXPECT_GT(ttl, 3'600'000);
  EXPECT_LE(ttl, 3'671'000);
  EXPECT_EQ(pttl(hll_key), -2);  // no such key
  EXPECT_EQ(hkeys(ip_hash), (std::vector<std::string>{absl::StrCat("1h:", b1h, ":user:u1"), "n"}));
  redisFree(c);
}

TEST_F(RedisCounterStoreTest, StoppedMidRunIsUnavailableThenRecovers) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(PlayOnce("user:u1").ok());
  EXPECT_EQ(*store_->Count("plays", "user:u1", Minutes(1), clock_.Now()), 5);

  redis_.Stop();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(PlayOnce("user:u1").code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(store_->Count("plays", "user:u1", Minutes(1), clock_.Now()).status().code(),
              absl::StatusCode::kUnavailable);
  }
  EXPECT_GE(store_->Stats().unavailable, 10);

  ASSERT_TRUE(redis_.Start().ok());  // same port, empty (no persistence)
  ASSERT_TRUE(RecoversWithin10s());
  ASSERT_TRUE(PlayOnce("user:u1").ok());
  auto count = store_->Count("plays", "user:u1", Minutes(1), clock_.Now());
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 1);
  EXPECT_GE(store_->Stats().reconnects, 2);
}

TEST_F(RedisCounterStoreTest, StuckRedisTimesOutThenRecovers) {
  ASSERT_TRUE(PlayOnce("user:u1").ok());
  redis_.Pause();  // the socket stays open; nothing answers
  EXPECT_EQ(PlayOnce("user:u1").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_->Distinct("accounts_per_ip", "ip:1", Hours(1), clock_.Now()).status().code(),
            absl::StatusCode::kUnavailable);
  redis_.Resume();
  ASSERT_TRUE(RecoversWithin10s());
  auto count = store_->Count("plays", "user:probe", Minutes(1), clock_.Now());
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_GE(*count, 1);
}

TEST_F(RedisCounterStoreTest, WritersUnderLoadSeeTheOutageAndTheRecovery) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> ok{0}, unavailable{0}, other{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&, t] {
      std::vector<std::string> keys;
      for (int k = 0; k < 100; ++k) keys.push_back(absl::StrCat("user:", t, "-", k));
      std::vector<Observation> batch;
      for (const auto& k : keys) batch.push_back({0, k, "", clock_.Now()});
      while (!stop.load()) {
        absl::Status s = store_->Record(batch, clock_.Now()).status();
        if (s.ok()) {
          ok.fetch_add(1);
        } else if (s.code() == absl::StatusCode::kUnavailable) {
          unavailable.fetch_add(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        } else {
          other.fetch_add(1);
        }
      }
    });
  }
  auto wait_for = [](std::atomic<int64_t>& v, int64_t above) {
    for (int i = 0; i < 1000 && v.load() <= above; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return v.load() > above;
  };
  EXPECT_TRUE(wait_for(ok, 20));
  redis_.Stop();
  EXPECT_TRUE(wait_for(unavailable, 20));
  ASSERT_TRUE(redis_.Start().ok());
  const int64_t ok_before = ok.load();
  EXPECT_TRUE(wait_for(ok, ok_before + 20));
  stop = true;
  for (auto& w : writers) w.join();
  EXPECT_EQ(other.load(), 0);
}

}  // namespace
}  // namespace quell::counters
