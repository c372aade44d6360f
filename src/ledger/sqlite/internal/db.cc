#include "ledger/sqlite/internal/db.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "ledger/sqlite/internal/wal_vfs.h"

namespace quell::ledger::sqlite_internal {

absl::Status SqliteError(int rc, sqlite3* db, std::string_view context) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  std::string text = absl::StrCat("sqlite: ", AV(context), ": ", msg, " (", sqlite3_errstr(rc),
                                  ", code ", rc, ")");
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(text);
    case SQLITE_CONSTRAINT:
      return absl::AlreadyExistsError(text);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(text);
    case SQLITE_FULL:  // the disk (or the file's page limit): retry once there is room
      return absl::UnavailableError(text);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(text);
    default:
      return absl::InternalError(text);
  }
}

absl::StatusOr<bool> Stmt::Step() {
  if (bind_rc_ != SQLITE_OK) return SqliteError(bind_rc_, db_, absl::StrCat("bind: ", sql_));
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return SqliteError(rc, db_, sql_);
}

absl::Status Stmt::Run() {
  if (bind_rc_ != SQLITE_OK) return SqliteError(bind_rc_, db_, absl::StrCat("bind: ", sql_));
  int rc = sqlite3_step(stmt_);
  while (rc == SQLITE_ROW) rc = sqlite3_step(stmt_);
  if (rc == SQLITE_DONE) return absl::OkStatus();
  return SqliteError(rc, db_, sql_);
}

absl::StatusOr<std::unique_ptr<Db>> Db::Open(const std::string& file, const DbOptions& opts) {
  // Memory statistics take a process-wide mutex on every sqlite3_malloc/free; nothing
  // here reads them. Possible only before SQLite initialises: if another part of the
  // process opened a database first, the call fails and statistics stay on (harmless).
  static std::once_flag once;
  std::call_once(once, [] { (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX |
              (opts.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  // WAL frames go out in large writes (wal_vfs.h); null: the default VFS.
  int rc = sqlite3_open_v2(file.c_str(), &raw, flags, WalBufferingVfs());
  if (rc != SQLITE_OK) {
    absl::Status st = SqliteError(rc, raw, absl::StrCat("open ", file));
    sqlite3_close_v2(raw);
    return st;
  }
  std::unique_ptr<Db> db(new Db(raw));
  sqlite3_extended_result_codes(raw, 1);
  rc = sqlite3_busy_timeout(raw, opts.busy_timeout_ms);
  if (rc != SQLITE_OK) return SqliteError(rc, raw, "busy_timeout");
  // The first statements are where a file that opened but cannot be read or written
  // fails (an immutable directory, no room for the -wal/-shm files): say which file, as
  // SQLite's "unable to open database file" does not.
  absl::Status set = [&]() -> absl::Status {
    // synchronous is a per-connection setting; journal_mode=WAL is persistent in the file
    // and is set once by the store on its write connection.
    QUELL_RETURN_IF_ERROR(
        db->Exec(opts.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
    // Savepoints write the pages they touch to a sub-journal; keep it (and temp tables)
    // in memory rather than in a temporary file: the ledger takes one savepoint per
    // mutation. A larger page cache keeps a big batch from spilling to the WAL before
    // COMMIT.
    QUELL_RETURN_IF_ERROR(db->Exec("PRAGMA temp_store=MEMORY"));
    QUELL_RETURN_IF_ERROR(db->Exec(absl::StrCat("PRAGMA cache_size=-", opts.cache_kib)));
    // Reads through a memory map save a pread per page; writes still go through the WAL.
    return db->Exec(absl::StrCat("PRAGMA mmap_size=", opts.mmap_bytes));
  }();
  if (!set.ok()) return absl::Status(set.code(), absl::StrCat(file, ": ", set.message()));
  return db;
}

Db::~Db() {
  stmts_.clear();  // finalize before close
  sqlite3_close_v2(db_);
}

absl::Status Db::Exec(std::string_view sql) {
  std::string s(sql);
  char* err = nullptr;
  int rc = sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    absl::Status st = SqliteError(rc, db_, s);
    sqlite3_free(err);
    return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<Stmt*> Db::Prepare(std::string_view sql) {
  auto it = stmts_.find(AV(sql));
  if (it != stmts_.end()) return it->second.get();
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) return SqliteError(rc, db_, sql);
  if (stmt == nullptr)
    return absl::InternalError(absl::StrCat("sqlite: empty statement: ", AV(sql)));
  auto owned = std::make_unique<Stmt>(db_, stmt, std::string(sql));
  Stmt* p = owned.get();
  stmts_.emplace(std::string(sql), std::move(owned));
  return p;
}

absl::StatusOr<std::string> Db::QueryText(std::string_view sql) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, Prepare(sql));
  StmtUse use(s);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::string();
  return std::string(use->ColumnText(0));
}

}  // namespace quell::ledger::sqlite_internal
