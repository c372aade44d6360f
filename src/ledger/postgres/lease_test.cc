// The PostgreSQL lease: one holder at a time; a holder whose row expires (it died) is
// replaced; a clean stop hands the lease over.
#include "ledger/postgres/lease.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::ledger {
namespace {

using pg_internal::TestCluster;

std::string MigratedDatabase() {
  auto cluster = TestCluster::Shared();
  EXPECT_TRUE(cluster.ok()) << cluster.status();  // PostgreSQL must be installed
  if (!cluster.ok()) return "";
  auto url = (*cluster)->NewDatabase();
  EXPECT_TRUE(url.ok()) << url.status();
  if (!url.ok()) return "";
  EXPECT_TRUE(OpenPostgresStore({.url = *url}).ok());  // creates the leases table
  return *url;
}

// Waits (generously: this bounds a hang, it is not a timing assertion) for `pred`.
template <typename F>
bool Eventually(F pred) {
  for (int i = 0; i < 600 && !pred(); ++i) absl::SleepFor(absl::Milliseconds(50));
  return pred();
}

LeaseOptions Fast(const std::string& url, const std::string& holder) {
  return {.url = url,
          .name = "background",
          .holder = holder,
          .ttl = absl::Milliseconds(1500),
          .renew = absl::Milliseconds(100)};
}

struct Changes {
  absl::Mutex mu;
  std::vector<bool> seen ABSL_GUARDED_BY(mu);
  PostgresLease::OnChange Sink() {
    return [this](bool held) {
      absl::MutexLock lock(&mu);
      seen.push_back(held);
    };
  }
  std::vector<bool> Get() {
    absl::MutexLock lock(&mu);
    return seen;
  }
};

TEST(PostgresLease, OneHolderAtATimeAndACleanStopHandsOver) {
  std::string url = MigratedDatabase();
  ASSERT_FALSE(url.empty());
  Changes a_changes;
  auto a = PostgresLease::Start(Fast(url, "a"), a_changes.Sink());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(Eventually([&] { return (*a)->held(); }));
  auto b = PostgresLease::Start(Fast(url, "b"), nullptr);
  ASSERT_TRUE(b.ok()) << b.status();
  // Many renewals of both: never both at once, and a keeps it (it renews in time).
  int both = 0;
  for (int i = 0; i < 40; ++i) {
    if ((*a)->held() && (*b)->held()) ++both;
    absl::SleepFor(absl::Milliseconds(25));
  }
  EXPECT_EQ(both, 0);
  a->reset();  // releases
  EXPECT_EQ(a_changes.Get(), (std::vector<bool>{true, false}));
  EXPECT_TRUE(Eventually([&] { return (*b)->held(); }));
}

TEST(PostgresLease, ARowThatIsNotExpiredKeepsOthersOutAndAnExpiredOneIsTaken) {
  std::string url = MigratedDatabase();
  ASSERT_FALSE(url.empty());
  // A holder that died: its row stays until it expires.
  ASSERT_TRUE(TestCluster::Exec(url,
                                "INSERT INTO leases VALUES ('background', 'dead', "
                                "clock_timestamp() + interval '1 hour')")
                  .ok());
  auto lease = PostgresLease::Start(Fast(url, "live"), nullptr);
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (int i = 0; i < 20; ++i) {  // several attempts, each refused
    EXPECT_FALSE((*lease)->held());
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(TestCluster::Exec(url,
                                "UPDATE leases SET expires_at = clock_timestamp() - "
                                "interval '1 second'")
                  .ok());
  EXPECT_TRUE(Eventually([&] { return (*lease)->held(); }));
}

TEST(PostgresLease, LosesItWhenAnotherNodeTookTheRow) {
  std::string url = MigratedDatabase();
  ASSERT_FALSE(url.empty());
  Changes changes;
  auto lease = PostgresLease::Start(Fast(url, "x"), changes.Sink());
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(Eventually([&] { return (*lease)->held(); }));
  // As if x had been partitioned away past its expiry and y took over.
  ASSERT_TRUE(TestCluster::Exec(url,
                                "UPDATE leases SET holder = 'y', expires_at = "
                                "clock_timestamp() + interval '1 hour'")
                  .ok());
  EXPECT_TRUE(Eventually([&] { return !(*lease)->held(); }));
  EXPECT_EQ(changes.Get(), (std::vector<bool>{true, false}));
}

TEST(PostgresLease, RejectsBadOptions) {
  EXPECT_FALSE(PostgresLease::Start({.url = "", .name = "x"}, nullptr).ok());
  EXPECT_FALSE(
      PostgresLease::Start(
          {.url = "u", .name = "x", .ttl = absl::Seconds(2), .renew = absl::Seconds(1)}, nullptr)
          .ok());
}

}  // namespace
}  // namespace quell::ledger
