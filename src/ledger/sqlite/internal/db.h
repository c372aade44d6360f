// A thin, Status-returning wrapper over one sqlite3 connection and its prepared
// statements. Private to the SQLite backend.
//
// Thread-safety: a Db (and its Stmts) is used by one thread at a time; the connection is
// opened with SQLITE_OPEN_NOMUTEX, so callers must serialise access themselves.
#ifndef QUELL_LEDGER_SQLITE_INTERNAL_DB_H_
#define QUELL_LEDGER_SQLITE_INTERNAL_DB_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::ledger::sqlite_internal {

// Turns an SQLite result code into a Status with the most specific code and the
// connection's message: BUSY/LOCKED -> kUnavailable, CONSTRAINT -> kAlreadyExists,
// CORRUPT/NOTADB -> kDataLoss, FULL -> kResourceExhausted, others -> kInternal.
absl::Status SqliteError(int rc, sqlite3* db, std::string_view context);

// A prepared statement owned by its Db's cache. Bind* indexes start at 1. A Stmt is
// borrowed for one use: take it with Db::Prepare, which resets it and clears bindings.
class Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* stmt, std::string sql)
      : db_(db), stmt_(stmt), sql_(std::move(sql)) {}
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // A failed bind is remembered and reported by the next Step/Run.
  void BindInt(int i, int64_t v) { Check(sqlite3_bind_int64(stmt_, i, v)); }
  // An empty view binds '' (never NULL, even if its data() is null).
  void BindText(int i, std::string_view v) {
    Check(sqlite3_bind_text(stmt_, i, Data(v), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  // Like BindText, but `v` must stay alive until the statement is reset.
  void BindTextStatic(int i, std::string_view v) {
    Check(sqlite3_bind_text(stmt_, i, Data(v), static_cast<int>(v.size()), SQLITE_STATIC));
  }
  // The bytes of `v` as a BLOB (not text), kept alive by the caller like BindTextStatic.
  void BindBlobStatic(int i, std::string_view v) {
    Check(sqlite3_bind_blob(stmt_, i, Data(v), static_cast<int>(v.size()), SQLITE_STATIC));
  }
  void BindDouble(int i, double v) { Check(sqlite3_bind_double(stmt_, i, v)); }
  void BindTime(int i, absl::Time t) { BindInt(i, absl::ToUnixMicros(t)); }
  void BindNull(int i) { Check(sqlite3_bind_null(stmt_, i)); }

  //! true: a row is available; false: done. Errors carry sqlite's message.
  absl::StatusOr<bool> Step();
  //! Steps to completion, expecting no rows (INSERT/UPDATE/DELETE/DDL).
  absl::Status Run();

  int64_t ColumnInt(int i) const { return sqlite3_column_int64(stmt_, i); }
  double ColumnDouble(int i) const { return sqlite3_column_double(stmt_, i); }
  bool ColumnIsNull(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  bool ColumnIsBlob(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_BLOB; }
  std::string_view ColumnText(int i) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
    return p ? std::string_view(p, sqlite3_column_bytes(stmt_, i)) : std::string_view();
  }
  absl::Time ColumnTime(int i) const { return absl::FromUnixMicros(ColumnInt(i)); }

  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
    bind_rc_ = SQLITE_OK;
  }
  const std::string& sql() const { return sql_; }

 private:
  static const char* Data(std::string_view v) { return v.data() != nullptr ? v.data() : ""; }
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  int bind_rc_ = SQLITE_OK;
  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string sql_;
};

// Resets a borrowed statement when it goes out of scope, so a statement never holds a
// read snapshot or bound buffers past its use.
class StmtUse {
 public:
  explicit StmtUse(Stmt* s) : s_(s) {}
  ~StmtUse() { s_->Reset(); }
  StmtUse(const StmtUse&) = delete;
  StmtUse& operator=(const StmtUse&) = delete;
  Stmt* operator->() const { return s_; }
  Stmt& operator*() const { return *s_; }

 private:
  Stmt* s_;
};

struct DbOptions {
  bool synchronous_full = true;
  int busy_timeout_ms = 5000;
  bool read_only = false;
  int cache_kib = 16384;                    // page cache per connection
  int64_t mmap_bytes = int64_t{256} << 20;  // PRAGMA mmap_size per connection
};

// One connection with a cache of prepared statements keyed by SQL text.
class Db {
 public:
  static absl::StatusOr<std::unique_ptr<Db>> Open(const std::string& file, const DbOptions& opts);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  //! Runs one or more statements that return no rows of interest.
  absl::Status Exec(std::string_view sql);
  //! The cached statement for `sql`, prepared on first use. Wrap it in a StmtUse.
  absl::StatusOr<Stmt*> Prepare(std::string_view sql);
  //! Runs a statement returning one value (e.g. a PRAGMA); "" if no row.
  absl::StatusOr<std::string> QueryText(std::string_view sql);

  int64_t changes() const { return sqlite3_changes64(db_); }
  sqlite3* raw() const { return db_; }

 private:
  explicit Db(sqlite3* db) : db_(db) {}
  sqlite3* db_;
  absl::flat_hash_map<std::string, std::unique_ptr<Stmt>> stmts_;
};

}  // namespace quell::ledger::sqlite_internal

#endif  // QUELL_LEDGER_SQLITE_INTERNAL_DB_H_
