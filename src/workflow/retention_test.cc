#include "workflow/retention.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::workflow {
namespace {

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("quell-retention-test-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = ledger::OpenSqliteStore({.path = dir_.string(), .synchronous_full = false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Stores detection `id`, received at `received`.
  void Put(const std::string& id, absl::Time received) {
    auto txn = store_->Begin(received);
    ASSERT_TRUE(txn.ok()) << txn.status();
    ledger::StoredDetection d;
    d.source = "m";
    d.id = id;
    d.type = "bot";
    d.entity = "user:" + id;
    d.score = 0.9;
    d.observed_at = received - absl::Minutes(1);
    d.received_at = received;
    d.json = "{}";
    d.reply = "{}";
    ASSERT_TRUE((*txn)->PutDetection(d).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  bool Stored(const std::string& id) {
    auto d = store_->GetDetection("m", id);
    EXPECT_TRUE(d.ok());
    return d.ok() && d->has_value();
  }

  std::filesystem::path dir_;
  std::unique_ptr<ledger::Store> store_;
  core::FakeClock clock_;
};

TEST_F(RetentionTest, PurgesWhatWasReceivedBeforeTheRetention) {
  const absl::Time t0 = clock_.Now();
  Put("old", t0);
  Put("mid", t0 + absl::Hours(24 * 10));
  Put("new", t0 + absl::Hours(24 * 20));
  DetectionRetention retention(store_.get(), &clock_, absl::Hours(24 * 30));

  clock_.Set(t0 + absl::Hours(24 * 30));  // "old" is exactly 30d old: kept
  auto n = retention.RunOnce();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0);
  EXPECT_TRUE(Stored("old"));

  clock_.Advance(absl::Hours(24 * 10) + absl::Seconds(1));
  n = retention.RunOnce();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2);
  EXPECT_FALSE(Stored("old"));  // a replay of it would now be accepted again
  EXPECT_FALSE(Stored("mid"));
  EXPECT_TRUE(Stored("new"));
  EXPECT_EQ(retention.purged_total(), 2);

  n = retention.RunOnce();  // idempotent
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0);
}

TEST_F(RetentionTest, BackgroundJobPurgesAtStartAndStops) {
  const absl::Time t0 = clock_.Now();
  Put("a", t0);
  Put("b", t0 + absl::Hours(1));
  clock_.Set(t0 + absl::Hours(24 * 31));
  DetectionRetention retention(store_.get(), &clock_, absl::Hours(24 * 30), absl::Hours(1));
  retention.Start();
  // The first purge runs at Start; wait for it (bounded), not for a time.
  for (int i = 0; i < 500 && retention.purged_total() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  retention.Stop();  // returns at once although the interval is an hour
  EXPECT_EQ(retention.purged_total(), 2);
  EXPECT_FALSE(Stored("a"));
  retention.Stop();  // twice is fine
}

}  // namespace
}  // namespace quell::workflow
