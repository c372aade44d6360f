// The cross-node change feed: several nodes write at once, every node's feed delivers
// every change exactly once, in seq order, equal to what the database holds.
#include "ledger/postgres/change_feed.h"

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::ledger {
namespace {

using pg_internal::TestCluster;

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

std::string FreshDatabase() {
  auto cluster = TestCluster::Shared();
  EXPECT_TRUE(cluster.ok()) << cluster.status();  // PostgreSQL must be installed
  if (!cluster.ok()) return "";
  auto url = (*cluster)->NewDatabase();
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : "";
}

absl::Status WriteNotes(Store& store, int n, const std::string& tag) {
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Txn> txn, store.Begin(kT0));
  for (int i = 0; i < n; ++i) {
    Change c;
    c.kind = ChangeKind::kReview;
    c.actor = "node";
    c.subject = absl::StrCat(tag, "/", i);
    c.payload = R"({"note":"x"})";
    QUELL_RETURN_IF_ERROR(txn->Append(std::move(c), nullptr).status());
  }
  return txn->Commit();
}

// What a feed delivered: (seq, hash) in delivery order.
struct Received {
  absl::Mutex mu;
  std::vector<std::pair<int64_t, std::string>> changes ABSL_GUARDED_BY(mu);
  PostgresChangeFeed::Apply Sink() {
    return [this](const Change& c) {
      absl::MutexLock lock(&mu);
      changes.emplace_back(c.seq, c.hash);
      return absl::OkStatus();
    };
  }
  std::vector<std::pair<int64_t, std::string>> Get() {
    absl::MutexLock lock(&mu);
    return changes;
  }
};

// Waits (generously; this bounds a hang, it is not a timing assertion) for `feed`.
bool WaitApplied(const PostgresChangeFeed& feed, int64_t seq) {
  for (int i = 0; i < 600 && feed.applied() < seq; ++i) absl::SleepFor(absl::Milliseconds(100));
  return feed.applied() >= seq;
}

std::vector<std::pair<int64_t, std::string>> Database(Store& store) {
  std::vector<std::pair<int64_t, std::string>> out;
  int64_t last = 0;
  while (true) {
    auto page = store.ReadChanges(last, 1000);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok() || page->empty()) return out;
    for (const Change& c : *page) out.emplace_back(last = c.seq, c.hash);
  }
}

TEST(PostgresChangeFeed, EveryNodeSeesEveryChangeOfEveryNodeOnceInOrder) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  constexpr int kNodes = 3, kTxns = 50, kPerTxn = 4;
  std::vector<std::unique_ptr<Store>> nodes;
  std::vector<std::unique_ptr<Received>> received;
  std::vector<std::unique_ptr<PostgresChangeFeed>> feeds;
  for (int i = 0; i < kNodes; ++i) {
    auto s = OpenPostgresStore({.url = url});
    ASSERT_TRUE(s.ok()) << s.status();
    nodes.push_back(*std::move(s));
    received.push_back(std::make_unique<Received>());
    auto feed =
        PostgresChangeFeed::Start(nodes.back().get(), {.url = url}, received.back()->Sink());
    ASSERT_TRUE(feed.ok()) << feed.status();
    feeds.push_back(*std::move(feed));
  }
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int n = 0; n < kNodes; ++n) {
    writers.emplace_back([&, n] {
      for (int t = 0; t < kTxns; ++t) {
        if (!WriteNotes(*nodes[n], kPerTxn, absl::StrCat(n, "/", t)).ok()) ++failures;
      }
    });
  }
  for (auto& w : writers) w.join();
  EXPECT_EQ(failures.load(), 0);
  const int64_t total = kNodes * kTxns * kPerTxn;
  auto db = Database(*nodes[0]);
  ASSERT_EQ(db.size(), static_cast<size_t>(total));
  for (int i = 0; i < kNodes; ++i) {
    ASSERT_TRUE(WaitApplied(*feeds[i], total)) << "feed " << i << " at " << feeds[i]->applied();
    EXPECT_EQ(received[i]->Get(), db) << "feed " << i;
    EXPECT_TRUE(feeds[i]->status().ok()) << feeds[i]->status();
  }
}

TEST(PostgresChangeFeed, ReconnectsAfterItsConnectionIsKilledAndMissesNothing) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(WriteNotes(**s, 3, "before").ok());
  Received got;
  // Starts after seq 2: delivers 3 onwards.
  auto feed = PostgresChangeFeed::Start(s->get(), {.url = url, .after = 2}, got.Sink());
  ASSERT_TRUE(feed.ok());
  ASSERT_TRUE(WaitApplied(**feed, 3));
  ASSERT_TRUE(TestCluster::Exec(url,
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "datname = current_database() AND "
                                "application_name = 'quell-feed'")
                  .ok());
  ASSERT_TRUE(WriteNotes(**s, 4, "during").ok());
  ASSERT_TRUE(WriteNotes(**s, 4, "after").ok());
  ASSERT_TRUE(WaitApplied(**feed, 11));
  auto db = Database(**s);
  db.erase(db.begin(), db.begin() + 2);
  EXPECT_EQ(got.Get(), db);
}

TEST(PostgresChangeFeed, RefusesBadOptions) {
  Received got;
  EXPECT_EQ(PostgresChangeFeed::Start(nullptr, {.url = "x"}, got.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quell::ledger
