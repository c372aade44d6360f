// The webhook module's durable state: subscriptions, each one's delivery cursor and its
// dead letters. Kept apart from the ledger Store on purpose (the ledger seam stays as it
// is): the default implementation is a small SQLite file in the data directory
// (DIR/webhooks.db, WAL, synchronous=FULL), which ties webhook delivery to one node. With
// several nodes on PostgreSQL (`quell serve --postgres`) the state lives in the ledger's
// database instead (OpenPostgresStateStore), shared by every node, and only the node
// holding the "webhooks" lease runs the dispatcher (docs/cluster.md).
//
// Thread-safety: every method of a StateStore is thread-safe. Ownership: callers own the
// StateStore they open.
#ifndef QUELL_WEBHOOKS_STATE_STORE_H_
#define QUELL_WEBHOOKS_STATE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::webhooks {

struct Subscription {
  std::string id;                         // "wh_" + time-ordered id
  std::string url;                        // http://host[:port]/path
  std::string secret;                     // HMAC-SHA256 key (stored: it signs every POST)
  std::vector<std::string> actions;       // mitigation actions; empty = all
  std::vector<std::string> entity_types;  // entity types ("ip", "user"...); empty = all
  absl::Time created_at;
  bool enabled = true;
  int64_t cursor = 0;  // highest seq handled (delivered, skipped or dead-lettered)
  // The consecutive failed attempts at delivering change `failed_seq` and the last one's
  // error, as RecordFailure left them: what a restarted (or another) dispatcher goes on
  // counting from while failed_seq > cursor, so that a receiver that fails every attempt
  // still dead-letters after max_attempts across restarts. Stale once cursor >= failed_seq.
  int64_t failed_seq = 0;
  int failures = 0;
  std::string last_error;
  friend bool operator==(const Subscription&, const Subscription&) = default;
};

// A change that could not be delivered after the configured number of attempts.
struct DeadLetter {
  std::string subscription_id;
  int64_t seq = 0;
  int attempts = 0;
  std::string last_error;
  absl::Time failed_at;
  std::string body;  // the JSON that was POSTed
  friend bool operator==(const DeadLetter&, const DeadLetter&) = default;
};

class StateStore {
 public:
  virtual ~StateStore() = default;
  //! kAlreadyExists if the id is taken.
  virtual absl::Status CreateSubscription(const Subscription& s) = 0;
  //! Every subscription, oldest first.
  virtual absl::StatusOr<std::vector<Subscription>> ListSubscriptions() = 0;
  //! Deletes the subscription and its dead letters; kNotFound if there is none.
  virtual absl::Status DeleteSubscription(std::string_view id) = 0;
  //! Durably sets the cursor (only forward; a lower value is ignored). kNotFound if the
  //! subscription is gone.
  virtual absl::Status AdvanceCursor(std::string_view id, int64_t seq) = 0;
  //! Durably records that delivering change `seq` has failed `failures` times in a row,
  //! the last with `error` (replacing what was recorded). kNotFound if the subscription is
  //! gone.
  virtual absl::Status RecordFailure(std::string_view id, int64_t seq, int failures,
                                     std::string_view error) = 0;
  //! Atomically stores `letter` and advances its subscription's cursor to letter.seq.
  virtual absl::Status AddDeadLetter(const DeadLetter& letter) = 0;
  //! The subscription's dead letters in seq order, at most `limit`, with seq > after.
  virtual absl::StatusOr<std::vector<DeadLetter>> DeadLetters(std::string_view id, int64_t after,
                                                              int limit) = 0;
};

//! Opens (creating if needed) the SQLite state file at `path`.
absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(const std::string& path);

struct PostgresStateOptions {
  std::string url;                   // libpq connection string or URI (the ledger's)
  int connect_timeout_s = 5;         // connect_timeout
  int statement_timeout_ms = 10000;  // statement_timeout and lock_timeout
};

//! Connects to PostgreSQL and creates the tables webhook_subscriptions and
//! webhook_dead_letters if they do not exist (under an advisory lock: several nodes may
//! start at once). kUnavailable if the server cannot be reached. Later calls reconnect
//! by themselves after a lost connection (kUnavailable until it is back).
absl::StatusOr<std::unique_ptr<StateStore>> OpenPostgresStateStore(PostgresStateOptions options);

}  // namespace quell::webhooks

#endif  // QUELL_WEBHOOKS_STATE_STORE_H_
