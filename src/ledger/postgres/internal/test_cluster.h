// Test-only: a throwaway PostgreSQL 15 cluster. initdb into a fresh temporary directory,
// pg_ctl start on a free loopback port (as the `postgres` user when running as root,
// since initdb and pg_ctl refuse root), and on destruction pg_ctl stop and removal of the
// directory. Shared() starts one cluster per test binary on first use and stops it at
// exit. A watchdog process stops the server and removes the directory when the process
// that started it dies without that (a test that aborts or is killed), so no cluster
// outlives its test. If the server binaries are missing, Start fails loudly
// (scripts/setup installs postgresql-15).
//
// With QUELL_TEST_PG_SERVER set (a libpq connection string without dbname, for a server
// that lets user postgres create databases), Shared() starts nothing: it hands out fresh
// databases on that server and drops them at exit. scripts/test starts one cluster for the
// whole ctest run that way: one initdb instead of one per PostgreSQL test process (ctest
// runs every test in a process of its own). Such a cluster is not this process's to stop.
//
// Thread-safety: Shared() is thread-safe; a TestCluster is otherwise used by one thread.
#ifndef QUELL_LEDGER_POSTGRES_INTERNAL_TEST_CLUSTER_H_
#define QUELL_LEDGER_POSTGRES_INTERNAL_TEST_CLUSTER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::ledger::pg_internal {

class TestCluster {
 public:
  //! Creates and starts a cluster; kFailedPrecondition if PostgreSQL is not installed.
  //! Without `durable`, fsync and synchronous_commit are off (fast tests); benchmarks
  //! pass true (PostgreSQL's defaults: every commit is flushed).
  static absl::StatusOr<TestCluster*> Start(bool durable = false);
  //! The cluster of this process, started on first call; the same error every call if
  //! it could not start.
  static absl::StatusOr<TestCluster*> Shared();
  ~TestCluster();

  //! A connection string for database `db` (e.g. "postgres").
  std::string Url(const std::string& db) const;
  //! Creates a fresh empty database and returns its connection string.
  absl::StatusOr<std::string> NewDatabase();
  //! Runs `sql` on database `url` (simple protocol, several statements allowed).
  static absl::Status Exec(const std::string& url, const std::string& sql);
  //! pg_ctl stop -m fast / start again (same data, same port). kFailedPrecondition on the
  //! run's shared server (QUELL_TEST_PG_SERVER): a test that stops its server Start()s one.
  absl::Status Stop();
  absl::Status Restart();
  int port() const { return port_; }

 private:
  TestCluster() = default;
  std::string server_;            // the connection string without dbname
  std::vector<std::string> dbs_;  // created on a server not ours: dropped at destruction
  bool external_ = false;
  std::string dir_;
  int port_ = 0;
  bool running_ = false;
  std::string server_options_;
  int next_db_ = 0;
  int watchdog_fd_ = -1;  // the write end of the watchdog's pipe: closing it wakes it
};

}  // namespace quell::ledger::pg_internal

#endif  // QUELL_LEDGER_POSTGRES_INTERNAL_TEST_CLUSTER_H_
