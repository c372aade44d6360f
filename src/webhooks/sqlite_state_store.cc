// The SQLite StateStore: one connection behind a mutex (the state is small and written a
// few times per delivery), WAL, synchronous=FULL so an advanced cursor survives a crash.
#include <sqlite3.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "webhooks/internal/list_column.h"
#include "webhooks/state_store.h"

namespace quell::webhooks {
namespace {

absl::Status Error(sqlite3* db, std::string_view what) {
  return absl::InternalError(absl::StrCat("webhooks state: ", AV(what), ": ", sqlite3_errmsg(db)));
}

// A prepared statement, finalised on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  absl::Status status() const {
    return rc_ == SQLITE_OK ? absl::OkStatus() : Error(db_, "prepare");
  }
  void Int(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void Text(int i, std::string_view v) {
    sqlite3_bind_text(stmt_, i, v.data() ? v.data() : "", static_cast<int>(v.size()),
                      SQLITE_TRANSIENT);
  }
  //! True with a row, false when done.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT) return absl::AlreadyExistsError("already exists");
    return Error(db_, "step");
  }
  int64_t ColInt(int i) const { return sqlite3_column_int64(stmt_, i); }
  std::string ColText(int i) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
    return p ? std::string(p, sqlite3_column_bytes(stmt_, i)) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

using internal::JoinList;
using internal::SplitList;

class SqliteStateStore final : public StateStore {
 public:
  explicit SqliteStateStore(sqlite3* db) : db_(db) {}
  ~SqliteStateStore() override { sqlite3_close(db_); }

  absl::Status Init() {
    for (const char* sql : {
             "PRAGMA busy_timeout=5000",  // first: another opener may hold the lock
             "PRAGMA journal_mode=WAL",
             "PRAGMA synchronous=FULL",
             "CREATE TABLE IF NOT EXISTS subscriptions(id TEXT PRIMARY KEY, url TEXT NOT NULL,"
             " secret TEXT NOT NULL, actions TEXT NOT NULL, entity_types TEXT NOT NULL,"
             " created_at INTEGER NOT NULL, enabled INTEGER NOT NULL, cursor INTEGER NOT NULL)",
             // Added after the first release: a table of its own, so that an older file
             // needs no ALTER. A row is stale once its subscription's cursor reached seq.
             "CREATE TABLE IF NOT EXISTS delivery_failures(subscription_id TEXT PRIMARY KEY,"
             " seq INTEGER NOT NULL, failures INTEGER NOT NULL, last_error TEXT NOT NULL)",
             "CREATE TABLE IF NOT EXISTS dead_letters(subscription_id TEXT NOT NULL,"
             " seq INTEGER NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL,"
             " failed_at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY(subscription_id, seq))",
         }) {
      if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return Error(db_, sql);
    }
    return absl::OkStatus();
  }

  absl::Status CreateSubscription(const Subscription& s) override {
    std::lock_guard lock(mu_);
    Stmt st(db_,
            "INSERT INTO subscriptions(id, url, secret, actions, entity_types, created_at,"
            " enabled, cursor) VALUES(?,?,?,?,?,?,?,?)");
    QUELL_RETURN_IF_ERROR(st.status());
    st.Text(1, s.id);
    st.Text(2, s.url);
    st.Text(3, s.secret);
    st.Text(4, JoinList(s.actions));
    st.Text(5, JoinList(s.entity_types));
    st.Int(6, absl::ToUnixMicros(s.created_at));
    st.Int(7, s.enabled ? 1 : 0);
    st.Int(8, s.cursor);
    return st.Step().status();
  }

  absl::StatusOr<std::vector<Subscription>> ListSubscriptions() override {
    std::lock_guard lock(mu_);
    Stmt st(db_,
            "SELECT s.id, s.url, s.secret, s.actions, s.entity_types, s.created_at, s.enabled,"
            " s.cursor, f.seq, f.failures, f.last_error FROM subscriptions s"
            " LEFT JOIN delivery_failures f ON f.subscription_id = s.id AND f.seq > s.cursor"
            " ORDER BY s.created_at, s.id");
    QUELL_RETURN_IF_ERROR(st.status());
    std::vector<Subscription> out;
    for (;;) {
      QUELL_ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      Subscription s;
      s.id = st.ColText(0);
      s.url = st.ColText(1);
      s.secret = st.ColText(2);
      s.actions = SplitList(st.ColText(3));
      s.entity_types = SplitList(st.ColText(4));
      s.created_at = absl::FromUnixMicros(st.ColInt(5));
      s.enabled = st.ColInt(6) != 0;
      s.cursor = st.ColInt(7);
      s.failed_seq = st.ColInt(8);  // 0 when NULL: no failure recorded past the cursor
      s.failures = static_cast<int>(st.ColInt(9));
      s.last_error = st.ColText(10);
      out.push_back(std::move(s));
    }
    return out;
  }

  absl::Status DeleteSubscription(std::string_view id) override {
    std::lock_guard lock(mu_);
    QUELL_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status s = [&]() -> absl::Status {
      Stmt del(db_, "DELETE FROM subscriptions WHERE id = ?");
      QUELL_RETURN_IF_ERROR(del.status());
      del.Text(1, id);
      QUELL_RETURN_IF_ERROR(del.Step().status());
      if (sqlite3_changes(db_) == 0) return absl::NotFoundError("no such webhook subscription");
      for (const char* sql : {"DELETE FROM dead_letters WHERE subscription_id = ?",
                              "DELETE FROM delivery_failures WHERE subscription_id = ?"}) {
        Stmt dl(db_, sql);
        QUELL_RETURN_IF_ERROR(dl.status());
        dl.Text(1, id);
        QUELL_RETURN_IF_ERROR(dl.Step().status());
      }
      return absl::OkStatus();
    }();
    return Finish(s);
  }

  absl::Status AdvanceCursor(std::string_view id, int64_t seq) override {
    std::lock_guard lock(mu_);
    return AdvanceLocked(id, seq);
  }

  absl::Status RecordFailure(std::string_view id, int64_t seq, int failures,
                             std::string_view error) override {
    std::lock_guard lock(mu_);
    Stmt st(db_,
            "INSERT OR REPLACE INTO delivery_failures(subscription_id, seq, failures, last_error)"
            " SELECT id, ?, ?, ? FROM subscriptions WHERE id = ?");
    QUELL_RETURN_IF_ERROR(st.status());
    st.Int(1, seq);
    st.Int(2, failures);
    st.Text(3, error);
    st.Text(4, id);
    QUELL_RETURN_IF_ERROR(st.Step().status());
    if (sqlite3_changes(db_) == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status AddDeadLetter(const DeadLetter& d) override {
    std::lock_guard lock(mu_);
    QUELL_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status s = [&]() -> absl::Status {
      Stmt st(db_,
              "INSERT OR REPLACE INTO dead_letters(subscription_id, seq, attempts, last_error,"
              " failed_at, body) VALUES(?,?,?,?,?,?)");
      QUELL_RETURN_IF_ERROR(st.status());
      st.Text(1, d.subscription_id);
      st.Int(2, d.seq);
      st.Int(3, d.attempts);
      st.Text(4, d.last_error);
      st.Int(5, absl::ToUnixMicros(d.failed_at));
      st.Text(6, d.body);
      QUELL_RETURN_IF_ERROR(st.Step().status());
      return AdvanceLocked(d.subscription_id, d.seq);
    }();
    return Finish(s);
  }

  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(std::string_view id, int64_t after,
                                                      int limit) override {
    std::lock_guard lock(mu_);
    Stmt st(db_,
            "SELECT subscription_id, seq, attempts, last_error, failed_at, body FROM dead_letters"
            " WHERE subscription_id = ? AND seq > ? ORDER BY seq LIMIT ?");
    QUELL_RETURN_IF_ERROR(st.status());
    st.Text(1, id);
    st.Int(2, after);
    st.Int(3, limit);
    std::vector<DeadLetter> out;
    for (;;) {
      QUELL_ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      DeadLetter d;
      d.subscription_id = st.ColText(0);
      d.seq = st.ColInt(1);
      d.attempts = static_cast<int>(st.ColInt(2));
      d.last_error = st.ColText(3);
      d.failed_at = absl::FromUnixMicros(st.ColInt(4));
      d.body = st.ColText(5);
      out.push_back(std::move(d));
    }
    return out;
  }

 private:
  absl::Status Exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return Error(db_, sql);
    return absl::OkStatus();
  }
  absl::Status Finish(absl::Status s) {
    if (s.ok()) return Exec("COMMIT");
    (void)Exec("ROLLBACK");
    return s;
  }
  absl::Status AdvanceLocked(std::string_view id, int64_t seq) {
    Stmt st(db_, "UPDATE subscriptions SET cursor = MAX(cursor, ?) WHERE id = ?");
    QUELL_RETURN_IF_ERROR(st.status());
    st.Int(1, seq);
    st.Text(2, id);
    QUELL_RETURN_IF_ERROR(st.Step().status());
    if (sqlite3_changes(db_) == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  std::mutex mu_;
  sqlite3* db_;  // guarded by mu_
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(const std::string& path) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status s = absl::InternalError(
        absl::StrCat("open ", path, ": ", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
    sqlite3_close(db);
    return s;
  }
  auto store = std::make_unique<SqliteStateStore>(db);
  QUELL_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace quell::webhooks
