// The embedded ledger store: one SQLite file in WAL mode under a data directory.
//
//   auto store = OpenSqliteStore({.path = "./var"});   // ./var/quell.db
//
// One write connection serves the (single) open Txn, with BEGIN IMMEDIATE so that other
// processes writing the same file (`quell keys create`, `quell migrate`) are serialised by
// SQLite's lock, and the chain head is read inside each transaction. WAL checkpoints run
// on a background thread with a connection of its own (see checkpoint_pages). With
// synchronous_full the store fdatasyncs the WAL itself (Commit, SyncCommitted), so that
// the ledger can overlap one group's fsync with the next group's work. Reads use a small
// pool of connections, each read method being one consistent read transaction. Key
// writes and PurgeIdempotency use a third connection of their own, so they never wait for
// an open Txn of this process beyond SQLite's lock.
//
// Thread-safety: as the Store interface (reads thread-safe; one Txn at a time).
// Ownership: the returned Store owns its connections; a Txn must not outlive it.
#ifndef QUELL_LEDGER_SQLITE_SQLITE_STORE_H_
#define QUELL_LEDGER_SQLITE_SQLITE_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "ledger/store.h"

namespace quell::ledger {

struct SqliteOptions {
  std::string path;  // data directory (created if missing); file path/quell.db
  // FULL: every commit is durable before Commit() returns (or, after CommitVisible, once
  // SyncCommitted returns): the store fdatasyncs the WAL itself, its write connection
  // running at synchronous=NORMAL. false: NORMAL (durable across a crash of the process,
  // not of the machine).
  bool synchronous_full = true;
  int busy_timeout_ms = 5000;    // how long to wait for another process's write lock
  int read_pool_size = 4;        // read connections, opened on demand
  bool apply_migrations = true;  // false: refuse (kFailedPrecondition) an out-of-date file
  // WAL pages past which a background thread checkpoints (copies the WAL into the file),
  // so the committing thread never does; 0: SQLite's own autocheckpoint, in the commit.
  // A group commit of 8,000 detections writes ~2,500 pages: at 1,000 the background
  // checkpoint fell behind and the writer copied pages itself at the 4x backstop (5% of
  // it); 8,000 (a WAL of up to 32 MiB, 128 MiB at the backstop) gave +9% detections/s,
  // 16,000 no more (docs/benchmarks.md).
  int checkpoint_pages = 8000;
  // How much of the file each connection reads through a memory map (PRAGMA mmap_size).
  // Mapped pages that were read stay resident and count in the process's RSS (they are
  // the kernel's page cache, shared and reclaimable): a long-running server gains from the
  // map, a bulk writer that must keep a small footprint (quell import) sets it low.
  int64_t mmap_bytes = int64_t{256} << 20;
  // Memory for the entities' mitigations the write connection keeps (see
  // internal/entity_cache.h): a decision on a cached entity reads no rows. About 350
  // bytes per cached mitigation (kept encoded) and 160 per entity; 0 keeps none.
  size_t entity_cache_bytes = size_t{256} << 20;
  // false: a directory without a ledger (no quell.db) is kNotFound, "no ledger in DIR",
  // and nothing is created (commands that read or change what is there).
  bool create = true;
};

// The database file's name inside the data directory.
inline constexpr std::string_view kSqliteFileName = "quell.db";

//! OK if `dir` holds a ledger (its quell.db); else kNotFound "no ledger in DIR (no
//! quell.db): check --data", for commands that must not make one where --data is mistyped.
absl::Status CheckSqliteLedger(const std::string& dir);

//! Opens (creating if needed, unless !create) the store and applies pending migrations.
//! kFailedPrecondition if the file's schema is newer than this binary knows (or older
//! and !apply_migrations), or WAL cannot be enabled; other codes for I/O errors.
absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const SqliteOptions& options);

//! The newest schema version this binary knows.
int SqliteSchemaVersion();

//! Runs `PRAGMA <name>` on the store's write connection and returns the value as text
//! (e.g. "wal", "2" for synchronous FULL). `store` must come from OpenSqliteStore and
//! have no open Txn. For tests.
absl::StatusOr<std::string> SqlitePragmaForTest(Store& store, std::string_view name);

//! How many background checkpoints `store` (from OpenSqliteStore) has run. For tests.
absl::StatusOr<int64_t> SqliteCheckpointRunsForTest(Store& store);

//! How many entity reads done ahead (PrefetchEntities) a Txn of `store` (from
//! OpenSqliteStore) has used instead of reading. For tests.
absl::StatusOr<int64_t> SqlitePrefetchTakenForTest(Store& store);

//! How many fdatasyncs of the WAL `store` (from OpenSqliteStore) has made itself: with
//! synchronous_full, the write connection runs at NORMAL and Txn::Commit and
//! Store::SyncCommitted sync the WAL through the store. For tests.
absl::StatusOr<int64_t> SqliteWalSyncsForTest(Store& store);

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_SQLITE_SQLITE_STORE_H_
