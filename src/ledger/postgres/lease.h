// A lease in PostgreSQL, for work that must run on exactly one node at a time (expiry,
// sweeps): a row (name, holder, expires_at) in table `leases`.
//
//   auto lease = PostgresLease::Start({.url = url, .name = "expiry"},
//                                     [&](bool held) { held ? x.Start() : x.Stop(); });
//
// One thread per lease, with its own connection, tries every `renew` to take or extend
// the row: an upsert that succeeds only if the row is ours or expired, setting
// expires_at = the server's clock + ttl. A node believes it holds the lease only until
// (its own clock when it sent the last successful attempt) + ttl, which is never later
// than the row's expiry, so two nodes never both believe they hold it (clocks need only
// tick at the same rate). When the holder dies, another node takes over within
// ttl + renew. The destructor releases a held lease (deletes our row), so a clean
// shutdown hands over at the next attempt of another node.
//
// Thread-safety: held() is thread-safe; `on_change` runs on the lease's thread, once per
// change of held(), starting from not held; the destructor calls it with false if held.
// Ownership: the lease owns its thread and connection.
#ifndef QUELL_LEDGER_POSTGRES_LEASE_H_
#define QUELL_LEDGER_POSTGRES_LEASE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::ledger {

struct LeaseOptions {
  std::string url;                          // libpq connection string of the ledger
  std::string name;                         // which work ("background")
  std::string holder;                       // unique per node; "" = host, pid, random
  absl::Duration ttl = absl::Seconds(10);   // how long one renewal holds
  absl::Duration renew = absl::Seconds(2);  // attempt period; must be < ttl / 2
};

class PostgresLease {
 public:
  using OnChange = std::function<void(bool held)>;

  //! Starts trying. kInvalidArgument on empty url/name or renew >= ttl / 2.
  static absl::StatusOr<std::unique_ptr<PostgresLease>> Start(LeaseOptions options,
                                                              OnChange on_change);
  ~PostgresLease();
  PostgresLease(const PostgresLease&) = delete;
  PostgresLease& operator=(const PostgresLease&) = delete;

  bool held() const { return held_.load(); }
  const std::string& holder() const { return options_.holder; }

 private:
  PostgresLease(LeaseOptions options, OnChange on_change, int wake_fd);
  void Run();

  const LeaseOptions options_;
  const OnChange on_change_;
  const int wake_fd_;  // eventfd: the destructor wakes the thread
  std::atomic<bool> stop_{false};
  std::atomic<bool> held_{false};
  std::thread thread_;
};

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_POSTGRES_LEASE_H_
