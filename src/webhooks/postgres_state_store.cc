// The PostgreSQL StateStore: the webhook state of a cluster of nodes in the ledger's
// database, so that whichever node holds the "webhooks" lease delivers from the same
// subscriptions and cursors (docs/cluster.md).
//
// Tables (created here, IF NOT EXISTS under an advisory lock so that nodes starting
// together do not race; they are the webhook module's, not ledger migrations):
//   webhook_subscriptions(id PK, url, secret, actions, entity_types, created_at (µs),
//                         enabled, cursor_seq)
//   webhook_dead_letters(subscription_id FK ON DELETE CASCADE, seq, attempts, last_error,
//                        failed_at (µs), body, PK (subscription_id, seq))
//   webhook_delivery_failures(subscription_id PK FK ON DELETE CASCADE, seq, failures,
//                             last_error): stale once the cursor reached seq
// Every method is one statement (autocommit), so each is atomic by itself: AddDeadLetter
// advances the cursor and inserts the letter in one statement (a data-modifying WITH).
//
// One connection behind a mutex (the state is written a few times per delivery); a lost
// connection is dropped and opened again by the next call (kUnavailable meanwhile). The
// connection, its prepared statements and the SQLSTATE -> status mapping are pg::Conn's.
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "core/strings.h"
#include "pg/conn.h"
#include "webhooks/internal/list_column.h"
#include "webhooks/state_store.h"

namespace quell::webhooks {
namespace {

using pg::P;
using pg::PTime;

constexpr int64_t kSchemaLockKey = 0x5175656c6c576831;  // "QuellWh1"

constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS webhook_subscriptions ("
    " id text PRIMARY KEY, url text NOT NULL, secret text NOT NULL,"
    " actions text NOT NULL, entity_types text NOT NULL, created_at bigint NOT NULL,"
    " enabled boolean NOT NULL, cursor_seq bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS webhook_dead_letters ("
    " subscription_id text NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,"
    " seq bigint NOT NULL, attempts integer NOT NULL, last_error text NOT NULL,"
    " failed_at bigint NOT NULL, body text NOT NULL, PRIMARY KEY (subscription_id, seq));"
    "CREATE TABLE IF NOT EXISTS webhook_delivery_failures ("
    " subscription_id text PRIMARY KEY REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,"
    " seq bigint NOT NULL, failures integer NOT NULL, last_error text NOT NULL);";

using internal::JoinList;
using internal::SplitList;

// The same code, with the message saying whose state it is (as the SQLite store's do).
absl::Status Tagged(const absl::Status& st) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("webhooks state: ", st.message()));
}

pg::ConnOptions ConnOptionsFor(const PostgresStateOptions& o) {
  pg::ConnOptions co;
  co.url = o.url;
  co.connect_timeout_s = o.connect_timeout_s;
  co.statement_timeout_ms = o.statement_timeout_ms;
  co.lock_timeout_ms = o.statement_timeout_ms;
  co.application_name = "quell-webhooks";
  return co;
}

// Thread-safe (one mutex around the connection). Owns its connection.
class PostgresStateStore final : public StateStore {
 public:
  explicit PostgresStateStore(const PostgresStateOptions& o) : options_(ConnOptionsFor(o)) {}

  absl::Status Init() {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(pg::Conn * db, ConnLocked());
    QUELL_RETURN_IF_ERROR(
        Tagged(db->Exec(absl::StrCat("SELECT pg_advisory_lock(", kSchemaLockKey, ")"))));
    absl::Status made = db->Exec(kSchema);
    absl::Status unlocked =
        db->Exec(absl::StrCat("SELECT pg_advisory_unlock(", kSchemaLockKey, ")"));
    QUELL_RETURN_IF_ERROR(Tagged(made));
    return Tagged(unlocked);
  }

  absl::Status CreateSubscription(const Subscription& s) override {
    absl::MutexLock lock(&mu_);
    return QueryLocked(
               "INSERT INTO webhook_subscriptions (id, url, secret, actions, entity_types,"
               " created_at, enabled, cursor_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
               {P(s.id), P(s.url), P(s.secret), P(JoinList(s.actions)), P(JoinList(s.entity_types)),
                PTime(s.created_at), P(s.enabled ? "true" : "false"), P(s.cursor)})
        .status();
  }

  absl::StatusOr<std::vector<Subscription>> ListSubscriptions() override {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(
        pg::Result r,
        QueryLocked("SELECT s.id, s.url, s.secret, s.actions, s.entity_types, s.created_at,"
                    " s.enabled, s.cursor_seq, f.seq, f.failures, f.last_error"
                    " FROM webhook_subscriptions s LEFT JOIN webhook_delivery_failures f"
                    " ON f.subscription_id = s.id AND f.seq > s.cursor_seq"
                    " ORDER BY s.created_at, s.id"));
    std::vector<Subscription> out;
    out.reserve(r.rows());
    for (int i = 0; i < r.rows(); ++i) {
      Subscription s;
      s.id = std::string(r.Text(i, 0));
      s.url = std::string(r.Text(i, 1));
      s.secret = std::string(r.Text(i, 2));
      s.actions = SplitList(r.Text(i, 3));
      s.entity_types = SplitList(r.Text(i, 4));
      s.created_at = r.Time(i, 5);
      s.enabled = r.Text(i, 6) == "t";
      s.cursor = r.Int(i, 7);
      if (!r.IsNull(i, 8)) {  // a failure recorded past the cursor
        s.failed_seq = r.Int(i, 8);
        s.failures = static_cast<int>(r.Int(i, 9));
        s.last_error = std::string(r.Text(i, 10));
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  absl::Status DeleteSubscription(std::string_view id) override {
    absl::MutexLock lock(&mu_);
    // Its dead letters go with it (ON DELETE CASCADE).
    QUELL_ASSIGN_OR_RETURN(pg::Result r,
                           QueryLocked("DELETE FROM webhook_subscriptions WHERE id = $1", {P(id)}));
    if (r.Affected() == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status AdvanceCursor(std::string_view id, int64_t seq) override {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(
        pg::Result r,
        QueryLocked("UPDATE webhook_subscriptions SET cursor_seq = GREATEST(cursor_seq, $2)"
                    " WHERE id = $1",
                    {P(id), P(seq)}));
    if (r.Affected() == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status RecordFailure(std::string_view id, int64_t seq, int failures,
                             std::string_view error) override {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(
        pg::Result r,
        QueryLocked("INSERT INTO webhook_delivery_failures (subscription_id, seq, failures,"
                    " last_error) SELECT id, $2, $3, $4 FROM webhook_subscriptions WHERE id = $1"
                    " ON CONFLICT (subscription_id) DO UPDATE SET seq = EXCLUDED.seq,"
                    " failures = EXCLUDED.failures, last_error = EXCLUDED.last_error",
                    {P(id), P(seq), P(int64_t{failures}), P(error)}));
    if (r.Affected() == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status AddDeadLetter(const DeadLetter& d) override {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(
        pg::Result r,
        QueryLocked(
            "WITH s AS (UPDATE webhook_subscriptions SET cursor_seq = GREATEST(cursor_seq, $2)"
            " WHERE id = $1 RETURNING id) "
            "INSERT INTO webhook_dead_letters (subscription_id, seq, attempts, last_error,"
            " failed_at, body) SELECT s.id, $2, $3, $4, $5, $6 FROM s "
            "ON CONFLICT (subscription_id, seq) DO UPDATE SET attempts = EXCLUDED.attempts,"
            " last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at,"
            " body = EXCLUDED.body",
            {P(d.subscription_id), P(d.seq), P(int64_t{d.attempts}), P(d.last_error),
             PTime(d.failed_at), P(d.body)}));
    if (r.Affected() == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(std::string_view id, int64_t after,
                                                      int limit) override {
    absl::MutexLock lock(&mu_);
    QUELL_ASSIGN_OR_RETURN(
        pg::Result r,
        QueryLocked("SELECT subscription_id, seq, attempts, last_error, failed_at, body"
                    " FROM webhook_dead_letters WHERE subscription_id = $1 AND seq > $2"
                    " ORDER BY seq LIMIT $3",
                    {P(id), P(after), P(int64_t{limit})}));
    std::vector<DeadLetter> out;
    out.reserve(r.rows());
    for (int i = 0; i < r.rows(); ++i) {
      DeadLetter d;
      d.subscription_id = std::string(r.Text(i, 0));
      d.seq = r.Int(i, 1);
      d.attempts = static_cast<int>(r.Int(i, 2));
      d.last_error = std::string(r.Text(i, 3));
      d.failed_at = r.Time(i, 4);
      d.body = std::string(r.Text(i, 5));
      out.push_back(std::move(d));
    }
    return out;
  }

 private:
  // The connection, opened again if it was lost (kUnavailable if the server cannot be
  // reached).
  absl::StatusOr<pg::Conn*> ConnLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    QUELL_RETURN_IF_ERROR(Tagged(pg::Reconnect(conn_, options_)));
    return conn_.get();
  }

  // Runs `sql` (a prepared statement) with text parameters; kAlreadyExists on a unique
  // violation, kUnavailable when the server cannot be reached (a lost connection is
  // re-opened by the next call).
  absl::StatusOr<pg::Result> QueryLocked(const std::string& sql,
                                         const std::vector<pg::Param>& params = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    QUELL_ASSIGN_OR_RETURN(pg::Conn * db, ConnLocked());
    absl::StatusOr<pg::Result> r = db->Query(sql, params);
    if (!r.ok()) return Tagged(r.status());
    return r;
  }

  const pg::ConnOptions options_;
  absl::Mutex mu_;
  // Null or lost: opened again by the next call.
  std::unique_ptr<pg::Conn> conn_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> OpenPostgresStateStore(PostgresStateOptions options) {
  if (options.url.empty()) return absl::InvalidArgumentError("webhooks state: empty URL");
  auto store = std::make_unique<PostgresStateStore>(options);
  QUELL_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace quell::webhooks
