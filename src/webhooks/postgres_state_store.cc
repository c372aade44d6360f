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
// Every method is one statement (autocommit), so each is atomic by itself: AddDeadLetter
// advances the cursor and inserts the letter in one statement (a data-modifying WITH).
//
// One connection behind a mutex (the state is written a few times per delivery); a lost
// connection is dropped and opened again by the next call (kUnavailable meanwhile).
#include <libpq-fe.h>

#include <memory>
#include <mutex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "core/strings.h"
#include "webhooks/state_store.h"

namespace quell::webhooks {
namespace {

constexpr int64_t kSchemaLockKey = 0x5175656c6c576831;  // "QuellWh1"

constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS webhook_subscriptions ("
    " id text PRIMARY KEY, url text NOT NULL, secret text NOT NULL,"
    " actions text NOT NULL, entity_types text NOT NULL, created_at bigint NOT NULL,"
    " enabled boolean NOT NULL, cursor_seq bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS webhook_dead_letters ("
    " subscription_id text NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,"
    " seq bigint NOT NULL, attempts integer NOT NULL, last_error text NOT NULL,"
    " failed_at bigint NOT NULL, body text NOT NULL, PRIMARY KEY (subscription_id, seq));";

using ResultPtr = std::unique_ptr<PGresult, void (*)(PGresult*)>;

std::string JoinList(const std::vector<std::string>& v) { return absl::StrJoin(v, "\n"); }
std::vector<std::string> SplitList(std::string_view s) {
  if (s.empty()) return {};
  return absl::StrSplit(AV(s), '\n');
}

std::string_view Text(const PGresult* r, int row, int col) {
  return std::string_view(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}
int64_t Int(const PGresult* r, int row, int col) {
  int64_t v = 0;
  (void)absl::SimpleAtoi(AV(Text(r, row, col)), &v);
  return v;
}
int64_t Affected(const PGresult* r) {
  int64_t v = 0;
  (void)absl::SimpleAtoi(PQcmdTuples(const_cast<PGresult*>(r)), &v);
  return v;
}

class PostgresStateStore final : public StateStore {
 public:
  explicit PostgresStateStore(PostgresStateOptions o) : options_(std::move(o)) {}
  ~PostgresStateStore() override {
    if (conn_ != nullptr) PQfinish(conn_);
  }

  absl::Status Init() {
    std::lock_guard lock(mu_);
    QUELL_RETURN_IF_ERROR(
        QueryLocked(absl::StrCat("SELECT pg_advisory_lock(", kSchemaLockKey, ")"), {}).status());
    auto made = QueryLocked(kSchema, {});
    auto unlocked =
        QueryLocked(absl::StrCat("SELECT pg_advisory_unlock(", kSchemaLockKey, ")"), {});
    QUELL_RETURN_IF_ERROR(made.status());
    return unlocked.status();
  }

  absl::Status CreateSubscription(const Subscription& s) override {
    std::lock_guard lock(mu_);
    return QueryLocked(
               "INSERT INTO webhook_subscriptions (id, url, secret, actions, entity_types,"
               " created_at, enabled, cursor_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
               {s.id, s.url, s.secret, JoinList(s.actions), JoinList(s.entity_types),
                absl::StrCat(absl::ToUnixMicros(s.created_at)), s.enabled ? "true" : "false",
                absl::StrCat(s.cursor)})
        .status();
  }

  absl::StatusOr<std::vector<Subscription>> ListSubscriptions() override {
    std::lock_guard lock(mu_);
    QUELL_ASSIGN_OR_RETURN(
        auto r, QueryLocked("SELECT id, url, secret, actions, entity_types, created_at, enabled,"
                            " cursor_seq FROM webhook_subscriptions ORDER BY created_at, id",
                            {}));
    std::vector<Subscription> out;
    const PGresult* p = r.get();
    for (int i = 0; i < PQntuples(p); ++i) {
      Subscription s;
      s.id = std::string(Text(p, i, 0));
      s.url = std::string(Text(p, i, 1));
      s.secret = std::string(Text(p, i, 2));
      s.actions = SplitList(Text(p, i, 3));
      s.entity_types = SplitList(Text(p, i, 4));
      s.created_at = absl::FromUnixMicros(Int(p, i, 5));
      s.enabled = Text(p, i, 6) == "t";
      s.cursor = Int(p, i, 7);
      out.push_back(std::move(s));
    }
    return out;
  }

  absl::Status DeleteSubscription(std::string_view id) override {
    std::lock_guard lock(mu_);
    // Its dead letters go with it (ON DELETE CASCADE).
    QUELL_ASSIGN_OR_RETURN(
        auto r, QueryLocked("DELETE FROM webhook_subscriptions WHERE id = $1", {std::string(id)}));
    if (Affected(r.get()) == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status AdvanceCursor(std::string_view id, int64_t seq) override {
    std::lock_guard lock(mu_);
    QUELL_ASSIGN_OR_RETURN(
        auto r, QueryLocked("UPDATE webhook_subscriptions SET cursor_seq = GREATEST(cursor_seq, $2)"
                            " WHERE id = $1",
                            {std::string(id), absl::StrCat(seq)}));
    if (Affected(r.get()) == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::Status AddDeadLetter(const DeadLetter& d) override {
    std::lock_guard lock(mu_);
    QUELL_ASSIGN_OR_RETURN(
        auto r,
        QueryLocked(
            "WITH s AS (UPDATE webhook_subscriptions SET cursor_seq = GREATEST(cursor_seq, $2)"
            " WHERE id = $1 RETURNING id) "
            "INSERT INTO webhook_dead_letters (subscription_id, seq, attempts, last_error,"
            " failed_at, body) SELECT s.id, $2, $3, $4, $5, $6 FROM s "
            "ON CONFLICT (subscription_id, seq) DO UPDATE SET attempts = EXCLUDED.attempts,"
            " last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at,"
            " body = EXCLUDED.body",
            {d.subscription_id, absl::StrCat(d.seq), absl::StrCat(d.attempts), d.last_error,
             absl::StrCat(absl::ToUnixMicros(d.failed_at)), d.body}));
    if (Affected(r.get()) == 0) return absl::NotFoundError("no such webhook subscription");
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(std::string_view id, int64_t after,
                                                      int limit) override {
    std::lock_guard lock(mu_);
    QUELL_ASSIGN_OR_RETURN(
        auto r, QueryLocked("SELECT subscription_id, seq, attempts, last_error, failed_at, body"
                            " FROM webhook_dead_letters WHERE subscription_id = $1 AND seq > $2"
                            " ORDER BY seq LIMIT $3",
                            {std::string(id), absl::StrCat(after), absl::StrCat(limit)}));
    std::vector<DeadLetter> out;
    const PGresult* p = r.get();
    for (int i = 0; i < PQntuples(p); ++i) {
      DeadLetter d;
      d.subscription_id = std::string(Text(p, i, 0));
      d.seq = Int(p, i, 1);
      d.attempts = static_cast<int>(Int(p, i, 2));
      d.last_error = std::string(Text(p, i, 3));
      d.failed_at = absl::FromUnixMicros(Int(p, i, 4));
      d.body = std::string(Text(p, i, 5));
      out.push_back(std::move(d));
    }
    return out;
  }

 private:
  absl::Status ConnectLocked() {
    if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return absl::OkStatus();
    if (conn_ != nullptr) PQfinish(conn_);
    const std::string timeout = absl::StrCat(options_.connect_timeout_s);
    const std::string pg_options = absl::StrCat(
        "-c statement_timeout=", options_.statement_timeout_ms,
        " -c lock_timeout=", options_.statement_timeout_ms, " -c client_min_messages=warning");
    const char* keys[] = {"dbname", "connect_timeout", "options", "application_name", nullptr};
    const char* values[] = {options_.url.c_str(), timeout.c_str(), pg_options.c_str(),
                            "quell-webhooks", nullptr};
    conn_ = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
    if (conn_ == nullptr) return absl::ResourceExhaustedError("postgres: out of memory");
    if (PQstatus(conn_) != CONNECTION_OK) {
      std::string msg = PQerrorMessage(conn_);
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      PQfinish(conn_);
      conn_ = nullptr;
      return absl::UnavailableError(absl::StrCat("webhooks state: postgres connect: ", msg));
    }
    return absl::OkStatus();
  }

  // Runs `sql` with text parameters; kAlreadyExists on a unique violation, kUnavailable
  // when the server cannot be reached (the connection is then dropped).
  absl::StatusOr<ResultPtr> QueryLocked(const std::string& sql,
                                        const std::vector<std::string>& params) {
    QUELL_RETURN_IF_ERROR(ConnectLocked());
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const std::string& p : params) values.push_back(p.c_str());
    ResultPtr r(params.empty() ? PQexec(conn_, sql.c_str())
                               : PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()),
                                              nullptr, values.data(), nullptr, nullptr, 0),
                &PQclear);
    const ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
    const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
    const std::string sqlstate = state ? state : "";
    std::string msg = r ? PQresultErrorMessage(r.get()) : PQerrorMessage(conn_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    const std::string text = absl::StrCat("webhooks state: postgres: ", msg,
                                          sqlstate.empty() ? "" : " (SQLSTATE " + sqlstate + ")");
    if (PQstatus(conn_) != CONNECTION_OK || sqlstate.empty() || sqlstate.rfind("08", 0) == 0 ||
        sqlstate == "57P01") {
      PQfinish(conn_);
      conn_ = nullptr;
      return absl::UnavailableError(text);
    }
    if (sqlstate == "23505") return absl::AlreadyExistsError(text);
    if (sqlstate == "57014" || sqlstate == "55P03") return absl::UnavailableError(text);
    return absl::InternalError(text);
  }

  const PostgresStateOptions options_;
  std::mutex mu_;
  PGconn* conn_ = nullptr;  // guarded by mu_
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> OpenPostgresStateStore(PostgresStateOptions options) {
  if (options.url.empty()) return absl::InvalidArgumentError("webhooks state: empty URL");
  auto store = std::make_unique<PostgresStateStore>(std::move(options));
  QUELL_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace quell::webhooks
