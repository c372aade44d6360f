// The PostgreSQL ledger store, for several Quell nodes sharing one system of record.
//
//   auto store = OpenPostgresStore({.url = "postgresql://quell@db/quell"});
//
// One write connection serves the (single) open Txn. Every write transaction starts by
// locking the chain head row (`SELECT seq, hash FROM chain_head ... FOR UPDATE`), so
// writers on every node are serialised by PostgreSQL and each sees the head the previous
// writer committed: seq N+1 is assigned only after seq N is committed, hence seqs become
// visible in commit order and a change-feed tailer reading `seq > last` never skips one.
// Each commit that appended changes also sends NOTIFY quell_changes (payload: the new
// last seq), to wake change-feed tailers (LISTEN kPostgresChangeChannel, then catch up
// with ReadChanges; see docs/cluster.md). Savepoints are PostgreSQL SAVEPOINTs. Reads use a small
// pool of connections, each read method one REPEATABLE READ READ ONLY transaction (one consistent
// snapshot). Key writes and purges use a side connection. All statements are prepared once per
// connection. Every connection has connect_timeout, statement_timeout and lock_timeout set.
//
// Errors carry the SQLSTATE in their message; a lost connection is kUnavailable (the
// connection is dropped and re-opened on next use).
//
// Thread-safety: as the Store interface (reads thread-safe; one Txn at a time).
// Ownership: the returned Store owns its connections; a Txn must not outlive it.
#ifndef QUELL_LEDGER_POSTGRES_POSTGRES_STORE_H_
#define QUELL_LEDGER_POSTGRES_POSTGRES_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "ledger/store.h"

namespace quell::ledger {

struct PostgresOptions {
  std::string url;                   // libpq connection string or postgresql:// URI
  int connect_timeout_s = 5;         // per connection attempt
  int statement_timeout_ms = 30000;  // per statement; 0 = none
  int lock_timeout_ms = 10000;       // waiting for the chain head (other writers); 0 = none
  int read_pool_size = 4;            // read connections, opened on demand
  bool apply_migrations = true;      // false: refuse (kFailedPrecondition) an old schema
  // false: a database without Quell's schema (no schema_version table: empty, or another
  // application's) is kNotFound, not given one; for commands that read what is there.
  bool create_schema = true;
};

//! The channel every commit that appended changes notifies.
inline constexpr char kPostgresChangeChannel[] = "quell_changes";

//! Connects, and applies pending schema migrations (each in its own transaction, under
//! an advisory lock so that nodes starting together migrate once). kFailedPrecondition
//! if the database's schema is newer than this binary knows (or older and
//! !apply_migrations); kUnavailable if the server cannot be reached.
absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options);

//! The newest schema version this binary knows.
int PostgresSchemaVersion();

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_POSTGRES_POSTGRES_STORE_H_
