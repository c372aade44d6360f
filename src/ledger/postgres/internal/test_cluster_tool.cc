// Test-only: the throwaway cluster of test_cluster.h for tests in other languages (the
// Python multi-node tests in tests/integration). It starts a cluster, creates a fresh
// database and prints "url <connection string>" on stdout; then it reads commands on
// stdin, one a line, and answers each with "ok" or "error <message>":
//   stop      pg_ctl stop -m fast           restart   start again (same data and port)
//   newdb     a fresh database: "ok <connection string>"
// At end of input (the test ended, or died) it stops the cluster and removes its files.
// With --durable the cluster keeps PostgreSQL's durable defaults (fsync, synchronous_commit,
// full_page_writes on: for benchmarks of durable writes); otherwise they are off.
#include <iostream>
#include <string>

#include "ledger/postgres/internal/test_cluster.h"

int main(int argc, char** argv) {
  using quell::ledger::pg_internal::TestCluster;
  const bool durable = argc > 1 && std::string(argv[1]) == "--durable";
  auto cluster = TestCluster::Start(durable);
  if (!cluster.ok()) {
    std::cout << "error " << cluster.status().message() << std::endl;
    return 1;
  }
  auto url = (*cluster)->NewDatabase();
  if (!url.ok()) {
    std::cout << "error " << url.status().message() << std::endl;
    delete *cluster;
    return 1;
  }
  std::cout << "url " << *url << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    absl::Status st;
    std::string extra;
    if (line == "stop") {
      st = (*cluster)->Stop();
    } else if (line == "restart") {
      st = (*cluster)->Restart();
    } else if (line == "newdb") {
      auto db = (*cluster)->NewDatabase();
      st = db.status();
      if (db.ok()) extra = " " + *db;
    } else {
      st = absl::InvalidArgumentError("unknown command: " + line);
    }
    if (st.ok()) {
      std::cout << "ok" << extra << std::endl;
    } else {
      std::cout << "error " << st.message() << std::endl;
    }
  }
  delete *cluster;
  return 0;
}
