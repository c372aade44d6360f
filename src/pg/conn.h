// The PostgreSQL client layer shared by every module that talks to the server (the
// ledger backend, its lease, the webhooks state store): a libpq connection with a cache
// of prepared statements, text parameters, results read as text, errors as absl::Status
// with the SQLSTATE mapped to a code (ErrorStatus), deferred statements that travel with
// the next query in one libpq pipeline (one round trip), and re-opening a lost
// connection (Reconnect).
//
// Thread-safety: a Conn is not thread-safe; it is used by one thread at a time (its
// owner serialises calls: a pool, a transaction, a mutex). Param, RowTemplate and
// ConnOptions are plain values; a Result is immutable once returned and may be read from
// any thread. Ownership: a Conn owns its PGconn and closes it on destruction; a Result
// owns its PGresult.
#ifndef QUELL_PG_CONN_H_
#define QUELL_PG_CONN_H_

#include <libpq-fe.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::pg {

// One text-format parameter ($n). Times are microseconds since the epoch.
struct Param {
  std::string value;
  bool null = false;
};
Param P(std::string_view s);
Param P(int64_t n);
Param P(double d);
Param PTime(absl::Time t);
Param PNull();

// An INSERT of one row that may travel merged with its deferred neighbours (Conn::DeferRow):
// `single` inserts one row from $1..$n; `multi` inserts many from one array per column
// ($1::type[] .. $n::type[], e.g. SELECT * FROM unnest(...)). Rows with equal values in
// column `key` (if >= 0) never share a statement (an ON CONFLICT DO UPDATE may not touch
// a row twice). Must outlive the Conn (a static).
struct RowTemplate {
  std::string single;
  std::string multi;
  int key = -1;
};

//! A PostgreSQL array literal of `items` ({"a",NULL,"b\"c"}): each quoted, nulls NULL.
std::string ArrayLiteral(const std::vector<const Param*>& items);
//! The same for non-null texts.
std::string ArrayLiteral(const std::vector<std::string_view>& items);

// A query result; rows are read as text.
class Result {
 public:
  explicit Result(PGresult* r) : r_(r, &PQclear) {}
  int rows() const { return PQntuples(r_.get()); }
  bool IsNull(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view Text(int row, int col) const {
    return std::string_view(PQgetvalue(r_.get(), row, col), PQgetlength(r_.get(), row, col));
  }
  int64_t Int(int row, int col) const;
  double Double(int row, int col) const;
  absl::Time Time(int row, int col) const { return absl::FromUnixMicros(Int(row, col)); }
  //! Rows affected by an INSERT/UPDATE/DELETE.
  int64_t Affected() const;
  //! The command tag ("COMMIT", "ROLLBACK", "INSERT 0 1", ...).
  std::string_view CommandTag() const { return PQcmdStatus(r_.get()); }

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> r_;
};

struct ConnOptions {
  std::string url;                         // libpq connection string or URI
  int connect_timeout_s = 5;               // connect_timeout
  int statement_timeout_ms = 30000;        // statement_timeout; 0 = none
  int lock_timeout_ms = 10000;             // lock_timeout; 0 = none
  std::string application_name = "quell";  // shown in pg_stat_activity
};

// One server connection (see the file comment for threading and ownership).
class Conn {
 public:
  //! Connects; kUnavailable if the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<Conn>> Open(const ConnOptions& o);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  //! Runs one or more statements without parameters (simple protocol).
  absl::Status Exec(std::string_view sql);
  //! Runs `sql` as a named prepared statement (prepared on first use on this connection).
  //! Deferred statements are sent first, in the same pipeline (one round trip); the first
  //! error among them and `sql` is returned (statements after an error are skipped).
  absl::StatusOr<Result> Query(const std::string& sql, const std::vector<Param>& params = {});
  //! A statement of QueryAll.
  struct Statement {
    std::string sql;
    std::vector<Param> params;
    const RowTemplate* row = nullptr;  // a DeferRow row (sql is row->single)
  };
  //! As Query, for several statements sent together after the deferred ones (one round
  //! trip): the result of each of `stmts`, in order; the first error otherwise.
  absl::StatusOr<std::vector<Result>> QueryAll(std::vector<Statement> stmts);
  //! Queues `sql` (a statement whose result only matters if it fails) to be sent with
  //! the next Query, Exec, Stream or Flush. Sends the queue when it grows past
  //! kMaxDeferred; the returned error is then that flush's.
  absl::Status Defer(const std::string& sql, std::vector<Param> params = {});
  //! Defer of `t.single` with `params` (one row), except that when the queue is sent, the
  //! rows between two other statements are sent as one `t.multi` per template (rows of
  //! different templates may be reordered among themselves; those of one template keep
  //! their order; an equal key splits them). Fewer statements for the server to run.
  absl::Status DeferRow(const RowTemplate& t, std::vector<Param> params);
  //! Sends the deferred statements (one round trip); the first error.
  absl::Status Flush();
  //! How many statements are deferred; DropDeferred(n) forgets all but the first n.
  size_t deferred() const { return deferred_.size(); }
  void DropDeferred(size_t n) {
    if (n < deferred_.size()) deferred_.resize(n);
  }
  //! Forgets the i-th deferred statement (if it is queued).
  void EraseDeferred(size_t i) {
    if (i < deferred_.size()) deferred_.erase(deferred_.begin() + static_cast<ptrdiff_t>(i));
  }
  static constexpr size_t kMaxDeferred = 512;
  //! Counts the times the deferred queue was sent: a statement queued at index i while
  //! sends() was g is still unsent iff sends() is still g.
  uint64_t sends() const { return sends_; }
  //! Runs `sql` in single-row mode, calling `row` for each row; stops calling it after an
  //! error (the rest of the result is drained). Returns the first error. Inside a
  //! transaction, lifts statement_timeout for the rest of it (long scans).
  absl::Status Stream(const std::string& sql, const std::vector<Param>& params,
                      const std::function<absl::Status(const Result&)>& row);
  //! Whether the connection is usable (not lost).
  bool ok() const { return !broken_ && PQstatus(conn_) == CONNECTION_OK; }
  //! Whether the server reports we are inside a transaction block (ok or failed).
  bool InTransaction() const;

 private:
  explicit Conn(PGconn* c) : conn_(c) {}
  absl::Status Check(PGresult* r, std::string_view what);
  // Merges the runs of DeferRow rows in `stmts` (see DeferRow).
  static std::vector<Statement> MergeRows(std::vector<Statement> stmts);
  // Sends deferred_ (then `tail`) in pipeline mode with one sync; clears deferred_.
  // Returns the results of `tail`'s statements.
  absl::StatusOr<std::vector<Result>> RunPipeline(std::vector<Statement> tail);
  PGconn* conn_;
  bool broken_ = false;  // a pipeline ended in an unknown state: the connection is dropped
  int64_t next_name_ = 0;
  uint64_t sends_ = 0;
  absl::flat_hash_map<std::string, std::string> prepared_;  // sql -> statement name
  std::vector<Statement> deferred_;
};

//! Makes `conn` usable: keeps it if it is open and ok(), otherwise closes it (a lost
//! connection, or a pipeline left in an unknown state) and opens a new one with `o`
//! (prepared statements are prepared again on first use). On error `conn` is null and
//! the status is Conn::Open's (kUnavailable if the server cannot be reached).
absl::Status Reconnect(std::unique_ptr<Conn>& conn, const ConnOptions& o);

//! An error status for a failed result (SQLSTATE in the message; 23505 -> kAlreadyExists,
//! class 08 or a lost connection -> kUnavailable, 57014 -> kDeadlineExceeded, 55P03 ->
//! kUnavailable, 40001/40P01 -> kAborted, class 22 -> kInvalidArgument).
absl::Status ErrorStatus(PGconn* conn, const PGresult* r, std::string_view what);

}  // namespace quell::pg

#endif  // QUELL_PG_CONN_H_
