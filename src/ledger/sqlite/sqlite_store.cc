#include "ledger/sqlite/sqlite_store.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "core/strings.h"
#include "ledger/sqlite/internal/db.h"
#include "ledger/sqlite/internal/schema.h"
#include "rapidjson/document.h"

namespace quell::ledger {
namespace {

using sqlite_internal::Db;
using sqlite_internal::DbOptions;
using sqlite_internal::Stmt;
using sqlite_internal::StmtUse;

constexpr int kMaxLimit = 10000;

#define QUELL_LIVE_STATES "('pending_approval','scheduled','active')"
#define QUELL_CHANGE_COLUMNS "seq, at, kind, actor, subject, entity, payload, prev_hash, hash"

absl::Status CheckLimit(int limit) {
  if (limit <= 0 || limit > kMaxLimit) {
    return absl::InvalidArgumentError(absl::StrCat("limit must be in [1, ", kMaxLimit, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<core::Mitigation> ParseStoredMitigation(std::string_view json) {
  auto m = core::MitigationFromJson(json);
  if (!m.ok()) {
    return absl::DataLossError(
        absl::StrCat("stored mitigation does not parse: ", m.status().message()));
  }
  return m;
}

Change ReadChangeRow(const Stmt& s) {
  Change c;
  c.seq = s.ColumnInt(0);
  c.at = s.ColumnTime(1);
  c.kind = static_cast<ChangeKind>(s.ColumnInt(2));
  c.actor = s.ColumnText(3);
  c.subject = s.ColumnText(4);
  c.entity = s.ColumnText(5);
  c.payload = s.ColumnText(6);
  c.prev_hash = s.ColumnText(7);
  c.hash = s.ColumnText(8);
  return c;
}

// Runs `stmt` (already bound) and parses column 0 of every row as a mitigation.
absl::StatusOr<std::vector<core::Mitigation>> CollectMitigations(Stmt& s) {
  std::vector<core::Mitigation> out;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(s.ColumnText(0)));
    out.push_back(std::move(m));
  }
  return out;
}

// ---- queries shared by Txn reads (write connection) and Store reads (pool) ----

absl::StatusOr<std::optional<core::Mitigation>> QueryMitigation(Db& db, std::string_view id) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT json FROM mitigations WHERE id = ?1"));
  StmtUse use(s);
  use->BindTextStatic(1, id);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::optional<core::Mitigation>();
  QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(use->ColumnText(0)));
  return std::optional<core::Mitigation>(std::move(m));
}

absl::StatusOr<std::vector<core::Mitigation>> QueryLive(Db& db, const core::Entity& entity,
                                                        std::string_view action) {
  QUELL_ASSIGN_OR_RETURN(
      Stmt * s, db.Prepare("SELECT json FROM mitigations WHERE entity = ?1 "
                           "AND action = ?2 AND state IN " QUELL_LIVE_STATES " ORDER BY id"));
  StmtUse use(s);
  use->BindTextStatic(1, entity.str());
  use->BindTextStatic(2, action);
  return CollectMitigations(*use);
}

absl::StatusOr<std::optional<IdempotencyRecord>> QueryIdempotency(Db& db, std::string_view scope,
                                                                  std::string_view key) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT request_hash, status, response, created_at "
                                              "FROM idempotency WHERE scope = ?1 AND key = ?2"));
  StmtUse use(s);
  use->BindTextStatic(1, scope);
  use->BindTextStatic(2, key);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::optional<IdempotencyRecord>();
  IdempotencyRecord r;
  r.scope = scope;
  r.key = key;
  r.request_hash = use->ColumnText(0);
  r.status = static_cast<int>(use->ColumnInt(1));
  r.response = use->ColumnText(2);
  r.created_at = use->ColumnTime(3);
  return std::optional<IdempotencyRecord>(std::move(r));
}

absl::StatusOr<int64_t> QueryLastSeq(Db& db) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT COALESCE(MAX(seq), 0) FROM changes"));
  StmtUse use(s);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  return row ? use->ColumnInt(0) : 0;
}

std::string SourcesToJson(const std::vector<std::string>& sources) {
  std::string out = "[";
  for (size_t i = 0; i < sources.size(); ++i) {
    if (i) out.push_back(',');
    core::AppendJsonString(sources[i], &out);
  }
  out.push_back(']');
  return out;
}

absl::StatusOr<std::vector<std::string>> SourcesFromJson(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsArray()) {
    return absl::DataLossError("stored api key sources are not a JSON array");
  }
  std::vector<std::string> out;
  for (const auto& v : doc.GetArray()) {
    if (!v.IsString()) return absl::DataLossError("stored api key source is not a string");
    out.emplace_back(v.GetString(), v.GetStringLength());
  }
  return out;
}

// A bounded set of read connections, opened on demand. Thread-safe.
class ReadPool {
 public:
  ReadPool(std::string file, DbOptions opts, int size)
      : file_(std::move(file)), opts_(opts), size_(std::max(1, size)) {}

  // A borrowed connection, returned to the pool on destruction.
  class Lease {
   public:
    Lease(ReadPool* pool, std::unique_ptr<Db> db) : pool_(pool), db_(std::move(db)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (db_) pool_->Return(std::move(db_));
    }
    Db& operator*() const { return *db_; }
    Db* operator->() const { return db_.get(); }

   private:
    ReadPool* pool_;
    std::unique_ptr<Db> db_;
  };

  absl::StatusOr<Lease> Acquire() {
    {
      absl::MutexLock lock(&mu_);
      while (idle_.empty() && open_ >= size_) returned_.Wait(&mu_);
      if (!idle_.empty()) {
        std::unique_ptr<Db> db = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(db));
      }
      ++open_;  // reserve a slot; open outside the lock
    }
    auto db = Db::Open(file_, opts_);
    if (db.ok()) {
      absl::Status st = (*db)->Exec("PRAGMA query_only=1");
      if (st.ok()) return Lease(this, *std::move(db));
      db = st;
    }
    absl::MutexLock lock(&mu_);
    --open_;
    returned_.Signal();
    return db.status();
  }

 private:
  void Return(std::unique_ptr<Db> db) {
    absl::MutexLock lock(&mu_);
    idle_.push_back(std::move(db));
    returned_.Signal();
  }

  const std::string file_;
  const DbOptions opts_;
  const int size_;
  absl::Mutex mu_;
  absl::CondVar returned_;
  std::vector<std::unique_ptr<Db>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

class SqliteStore;

// The one write transaction. Confined to the commit thread.
class SqliteTxn final : public Txn {
 public:
  SqliteTxn(SqliteStore* store, Db* db, absl::Time now, int64_t head_seq, std::string head_hash)
      : store_(store), db_(db), now_(now), head_seq_(head_seq), head_hash_(std::move(head_hash)) {}
  ~SqliteTxn() override { Rollback(); }

  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryMitigation(*db_, id);
  }
  absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                         std::string_view action) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryLive(*db_, entity, action);
  }
  absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                  std::string_view key) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryIdempotency(*db_, scope, key);
  }
  absl::Status PutIdempotency(const IdempotencyRecord& r) override;
  absl::StatusOr<Change> Append(Change change, const core::Mitigation* mitigation) override;
  int64_t NextSeq() const override { return head_seq_ + 1; }
  absl::Status Savepoint() override;
  absl::Status RollbackToSavepoint() override;
  absl::Status ReleaseSavepoint() override;
  absl::Status Commit() override;
  void Rollback() override;

 private:
  absl::Status CheckOpen() const {
    if (done_) return absl::FailedPreconditionError("transaction already finished");
    return absl::OkStatus();
  }
  absl::Status RunFixed(std::string_view sql) {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare(sql));
    StmtUse use(s);
    return use->Run();
  }
  void Finish();

  SqliteStore* store_;
  Db* db_;
  const absl::Time now_;
  int64_t head_seq_;
  std::string head_hash_;
  struct Mark {
    int64_t seq;
    std::string hash;
  };
  std::vector<Mark> savepoints_;
  // Set when a write could not be undone in part (see Append): the Txn refuses to commit
  // unless a rollback to a savepoint taken before the damage undoes it.
  std::optional<size_t> poisoned_at_depth_;
  bool done_ = false;
};

class SqliteStore final : public Store {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const SqliteOptions& options);

  absl::StatusOr<std::unique_ptr<Txn>> Begin(absl::Time now) override;

  absl::StatusOr<int64_t> LastSeq() override {
    return WithRead([](Db& db) { return QueryLastSeq(db); });
  }
  absl::StatusOr<std::vector<Change>> ReadChanges(int64_t after, int limit) override;
  absl::StatusOr<std::vector<Change>> ReadEntityChanges(const core::Entity& entity,
                                                        int limit) override;
  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return WithRead([&](Db& db) { return QueryMitigation(db, id); });
  }
  absl::StatusOr<MitigationPage> ListMitigations(const MitigationQuery& query) override;
  absl::StatusOr<int64_t> ScanLive(
      const std::function<absl::Status(const core::Mitigation&)>& fn) override;
  absl::StatusOr<std::vector<core::Mitigation>> ListDue(absl::Time now, int limit) override;
  absl::StatusOr<std::optional<absl::Time>> NextDue() override;
  absl::StatusOr<int64_t> PurgeIdempotency(absl::Time before) override;

  absl::Status CreateKey(const ApiKey& key) override;
  absl::StatusOr<std::vector<ApiKey>> ListKeys() override;
  absl::Status RevokeKey(std::string_view id, absl::Time at) override;
  absl::StatusOr<int64_t> KeysVersion() override;

  absl::StatusOr<std::string> WriterPragma(std::string_view name) {
    if (txn_open_.load()) return absl::FailedPreconditionError("a transaction is open");
    return writer_->QueryText(absl::StrCat("PRAGMA ", AV(name)));
  }
  void TxnFinished() { txn_open_.store(false); }

 private:
  SqliteStore(std::string file, DbOptions opts, int pool_size, std::unique_ptr<Db> writer)
      : file_(std::move(file)),
        opts_(opts),
        writer_(std::move(writer)),
        pool_(file_, opts, pool_size) {}

  // Runs `f(db)` inside one read transaction on a pooled connection.
  template <typename F>
  auto WithRead(F&& f) -> decltype(f(std::declval<Db&>()));
  // Runs `f(db)` inside BEGIN IMMEDIATE ... COMMIT on the side connection.
  template <typename F>
  auto WithSideWrite(F&& f) -> decltype(f(std::declval<Db&>()));

  const std::string file_;
  const DbOptions opts_;
  std::unique_ptr<Db> writer_;  // used only by the open Txn (and Open)
  std::atomic<bool> txn_open_{false};
  ReadPool pool_;
  absl::Mutex side_mu_;
  std::unique_ptr<Db> side_ ABSL_GUARDED_BY(side_mu_);  // keys and purges
};

template <typename F>
auto SqliteStore::WithRead(F&& f) -> decltype(f(std::declval<Db&>())) {
  QUELL_ASSIGN_OR_RETURN(ReadPool::Lease lease, pool_.Acquire());
  {
    QUELL_ASSIGN_OR_RETURN(Stmt * begin, lease->Prepare("BEGIN"));
    StmtUse use(begin);
    QUELL_RETURN_IF_ERROR(use->Run());
  }
  auto result = f(*lease);
  // A read transaction has nothing to keep: ROLLBACK ends it whether `f` failed or not.
  absl::Status end;
  {
    auto rollback = lease->Prepare("ROLLBACK");
    if (!rollback.ok()) {
      end = rollback.status();
    } else {
      StmtUse use(*rollback);
      end = use->Run();
    }
  }
  if (!end.ok() && result.ok()) return end;
  return result;
}

template <typename F>
auto SqliteStore::WithSideWrite(F&& f) -> decltype(f(std::declval<Db&>())) {
  absl::MutexLock lock(&side_mu_);
  if (!side_) {
    QUELL_ASSIGN_OR_RETURN(side_, Db::Open(file_, opts_));
  }
  QUELL_RETURN_IF_ERROR(side_->Exec("BEGIN IMMEDIATE"));
  auto result = f(*side_);
  absl::Status end = result.ok() ? side_->Exec("COMMIT") : absl::OkStatus();
  if (!result.ok() || !end.ok()) {
    if (sqlite3_get_autocommit(side_->raw()) == 0) {
      absl::Status rb = side_->Exec("ROLLBACK");
      if (!rb.ok()) side_.reset();  // a connection stuck in a transaction is not reused
    }
  }
  if (!end.ok()) return end;
  return result;
}

// ---- SqliteTxn ----

absl::Status SqliteTxn::PutIdempotency(const IdempotencyRecord& r) {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare("INSERT INTO idempotency (scope, key, "
                                                "request_hash, status, response, created_at) "
                                                "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
  StmtUse use(s);
  use->BindTextStatic(1, r.scope);
  use->BindTextStatic(2, r.key);
  use->BindTextStatic(3, r.request_hash);
  use->BindInt(4, r.status);
  use->BindTextStatic(5, r.response);
  use->BindTime(6, r.created_at);
  return use->Run();
}

absl::StatusOr<Change> SqliteTxn::Append(Change change, const core::Mitigation* mitigation) {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  const int64_t seq = head_seq_ + 1;
  std::string json;
  if (change.kind == ChangeKind::kMitigation) {
    if (mitigation == nullptr) {
      return absl::InvalidArgumentError("a mitigation change needs its mitigation");
    }
    if (mitigation->seq != seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("mitigation.seq is ", mitigation->seq, " but this change gets seq ", seq));
    }
    json = core::MitigationToJson(*mitigation);
    if (change.payload.empty()) {
      change.payload = json;
    } else if (change.payload != json) {
      return absl::InvalidArgumentError("change payload differs from the mitigation's JSON");
    }
    if (change.subject.empty()) change.subject = mitigation->id;
    if (change.entity.empty()) change.entity = mitigation->entity.str();
  } else if (mitigation != nullptr) {
    return absl::InvalidArgumentError("only mitigation changes carry a mitigation");
  }
  change.seq = seq;
  change.at = now_;
  change.prev_hash = head_hash_;
  change.hash = ChainHash(change);

  {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare("INSERT INTO changes (" QUELL_CHANGE_COLUMNS
                                                  ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"));
    StmtUse use(s);
    use->BindInt(1, change.seq);
    use->BindTime(2, change.at);
    use->BindInt(3, static_cast<int64_t>(change.kind));
    use->BindTextStatic(4, change.actor);
    use->BindTextStatic(5, change.subject);
    use->BindTextStatic(6, change.entity);
    use->BindTextStatic(7, change.payload);
    use->BindTextStatic(8, change.prev_hash);
    use->BindTextStatic(9, change.hash);
    QUELL_RETURN_IF_ERROR(use->Run());
  }
  if (mitigation != nullptr) {
    absl::Status st = [&]() -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(
          Stmt * s,
          db_->Prepare("INSERT INTO mitigations (id, entity, action, state, created_at, "
                       "updated_at, starts_at, expires_at, source, policy, batch, seq, json) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "
                       "ON CONFLICT (id) DO UPDATE SET entity = excluded.entity, "
                       "action = excluded.action, state = excluded.state, "
                       "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                       "starts_at = excluded.starts_at, expires_at = excluded.expires_at, "
                       "source = excluded.source, policy = excluded.policy, "
                       "batch = excluded.batch, seq = excluded.seq, json = excluded.json"));
      StmtUse use(s);
      const core::Mitigation& m = *mitigation;
      use->BindTextStatic(1, m.id);
      use->BindTextStatic(2, m.entity.str());
      use->BindTextStatic(3, m.action);
      use->BindTextStatic(4, core::StateName(m.state));
      use->BindTime(5, m.created_at);
      use->BindTime(6, m.updated_at);
      use->BindTime(7, m.starts_at);
      use->BindTime(8, m.expires_at);
      use->BindTextStatic(9, m.source);
      use->BindTextStatic(10, m.policy);
      use->BindTextStatic(11, m.batch);
      use->BindInt(12, m.seq);
      use->BindTextStatic(13, json);
      return use->Run();
    }();
    if (!st.ok()) {
      // Undo the change row so the log and the view stay in step.
      absl::Status undo = [&]() -> absl::Status {
        QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare("DELETE FROM changes WHERE seq = ?1"));
        StmtUse use(s);
        use->BindInt(1, seq);
        return use->Run();
      }();
      if (!undo.ok()) poisoned_at_depth_ = savepoints_.size();
      return st;
    }
  }
  head_seq_ = seq;
  head_hash_ = change.hash;
  return change;
}

absl::Status SqliteTxn::Savepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  QUELL_RETURN_IF_ERROR(RunFixed("SAVEPOINT quell_mutation"));
  savepoints_.push_back({head_seq_, head_hash_});
  return absl::OkStatus();
}

absl::Status SqliteTxn::RollbackToSavepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
  // ROLLBACK TO keeps the savepoint open; RELEASE ends it, as the caller expects.
  QUELL_RETURN_IF_ERROR(RunFixed("ROLLBACK TO quell_mutation"));
  QUELL_RETURN_IF_ERROR(RunFixed("RELEASE quell_mutation"));
  head_seq_ = savepoints_.back().seq;
  head_hash_ = std::move(savepoints_.back().hash);
  savepoints_.pop_back();
  if (poisoned_at_depth_ && *poisoned_at_depth_ > savepoints_.size()) poisoned_at_depth_.reset();
  return absl::OkStatus();
}

absl::Status SqliteTxn::ReleaseSavepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
  QUELL_RETURN_IF_ERROR(RunFixed("RELEASE quell_mutation"));
  savepoints_.pop_back();
  if (poisoned_at_depth_ && *poisoned_at_depth_ > savepoints_.size()) {
    poisoned_at_depth_ = savepoints_.size();
  }
  return absl::OkStatus();
}

absl::Status SqliteTxn::Commit() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (poisoned_at_depth_) {
    Rollback();
    return absl::InternalError("transaction rolled back: a failed append could not be undone");
  }
  absl::Status st = RunFixed("COMMIT");
  if (!st.ok()) {
    Rollback();
    return st;
  }
  Finish();
  return absl::OkStatus();
}

void SqliteTxn::Rollback() {
  if (done_) return;
  // If ROLLBACK itself fails the connection may still be inside a transaction; the next
  // Begin notices (sqlite3_get_autocommit) and retries before starting a new one.
  if (sqlite3_get_autocommit(db_->raw()) == 0) (void)db_->Exec("ROLLBACK");
  Finish();
}

void SqliteTxn::Finish() {
  done_ = true;
  store_->TxnFinished();
}

// ---- SqliteStore ----

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const SqliteOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("sqlite store: empty data path");
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data directory ", options.path, ": ", ec.message()));
  }
  std::string file = (std::filesystem::path(options.path) / kSqliteFileName).string();
  DbOptions opts{.synchronous_full = options.synchronous_full,
                 .busy_timeout_ms = options.busy_timeout_ms};
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Db> writer, Db::Open(file, opts));
  QUELL_ASSIGN_OR_RETURN(std::string mode, writer->QueryText("PRAGMA journal_mode=WAL"));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot enable WAL on ", file, " (journal_mode is ", mode, ")"));
  }
  QUELL_ASSIGN_OR_RETURN(int version, sqlite_internal::ApplyMigrations(
                                          *writer, options.apply_migrations, absl::Now()));
  (void)version;
  return std::unique_ptr<SqliteStore>(
      new SqliteStore(std::move(file), opts, options.read_pool_size, std::move(writer)));
}

absl::StatusOr<std::unique_ptr<Txn>> SqliteStore::Begin(absl::Time now) {
  if (txn_open_.exchange(true)) {
    return absl::FailedPreconditionError("a write transaction is already open");
  }
  auto start = [&]() -> absl::StatusOr<std::unique_ptr<Txn>> {
    if (sqlite3_get_autocommit(writer_->raw()) == 0) {
      QUELL_RETURN_IF_ERROR(writer_->Exec("ROLLBACK"));  // left over from a failed rollback
    }
    {
      QUELL_ASSIGN_OR_RETURN(Stmt * s, writer_->Prepare("BEGIN IMMEDIATE"));
      StmtUse use(s);
      QUELL_RETURN_IF_ERROR(use->Run());
    }
    // The head is read under the write lock, so a change appended by another process
    // since our last transaction is chained onto, never forked.
    int64_t head_seq = 0;
    std::string head_hash(kGenesisHash);
    absl::Status st = [&]() -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(Stmt * s,
                             writer_->Prepare("SELECT seq, hash FROM changes ORDER BY seq DESC "
                                              "LIMIT 1"));
      StmtUse use(s);
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (row) {
        head_seq = use->ColumnInt(0);
        head_hash = use->ColumnText(1);
      }
      return absl::OkStatus();
    }();
    if (!st.ok()) {
      (void)writer_->Exec("ROLLBACK");  // `st` is the error that matters
      return st;
    }
    // Stored times have microsecond precision; truncate so returned changes equal read ones.
    absl::Time at = absl::FromUnixMicros(absl::ToUnixMicros(now));
    return std::unique_ptr<Txn>(
        new SqliteTxn(this, writer_.get(), at, head_seq, std::move(head_hash)));
  };
  auto txn = start();
  if (!txn.ok()) txn_open_.store(false);
  return txn;
}

absl::StatusOr<std::vector<Change>> SqliteStore::ReadChanges(int64_t after, int limit) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<Change>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_CHANGE_COLUMNS
                                                " FROM changes WHERE seq > ?1 ORDER BY seq "
                                                "LIMIT ?2"));
    StmtUse use(s);
    use->BindInt(1, after);
    use->BindInt(2, limit);
    std::vector<Change> out;
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      out.push_back(ReadChangeRow(*use));
    }
    return out;
  });
}

absl::StatusOr<std::vector<Change>> SqliteStore::ReadEntityChanges(const core::Entity& entity,
                                                                   int limit) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<Change>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_CHANGE_COLUMNS
                                                " FROM changes WHERE entity = ?1 ORDER BY seq "
                                                "LIMIT ?2"));
    StmtUse use(s);
    use->BindTextStatic(1, entity.str());
    use->BindInt(2, limit);
    std::vector<Change> out;
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      out.push_back(ReadChangeRow(*use));
    }
    return out;
  });
}

absl::StatusOr<MitigationPage> SqliteStore::ListMitigations(const MitigationQuery& q) {
  QUELL_RETURN_IF_ERROR(CheckLimit(q.limit));
  // Fixed parameter numbers, so each filter combination is one cached statement.
  std::string sql = "SELECT json FROM mitigations WHERE 1 = 1";
  if (q.entity) sql += " AND entity = ?1";
  if (q.state) sql += " AND state = ?2";
  if (!q.action.empty()) sql += " AND action = ?3";
  if (!q.policy.empty()) sql += " AND policy = ?4";
  if (!q.source.empty()) sql += " AND source = ?5";
  if (!q.cursor.empty()) sql += " AND id < ?6";
  sql += " ORDER BY id DESC LIMIT ?7";
  return WithRead([&](Db& db) -> absl::StatusOr<MitigationPage> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(sql));
    StmtUse use(s);
    if (q.entity) use->BindTextStatic(1, q.entity->str());
    if (q.state) use->BindTextStatic(2, core::StateName(*q.state));
    if (!q.action.empty()) use->BindTextStatic(3, q.action);
    if (!q.policy.empty()) use->BindTextStatic(4, q.policy);
    if (!q.source.empty()) use->BindTextStatic(5, q.source);
    if (!q.cursor.empty()) use->BindTextStatic(6, q.cursor);
    use->BindInt(7, q.limit + 1);  // one more tells whether another page follows
    QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> rows, CollectMitigations(*use));
    MitigationPage page;
    if (static_cast<int>(rows.size()) > q.limit) {
      rows.resize(q.limit);
      page.next_cursor = rows.back().id;
    }
    page.mitigations = std::move(rows);
    return page;
  });
}

absl::StatusOr<int64_t> SqliteStore::ScanLive(
    const std::function<absl::Status(const core::Mitigation&)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    // Both statements run in the same read transaction, i.e. the same WAL snapshot.
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT json FROM mitigations WHERE state IN " QUELL_LIVE_STATES));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(use->ColumnText(0)));
      QUELL_RETURN_IF_ERROR(fn(m));
    }
    return seq;
  });
}

absl::StatusOr<std::vector<core::Mitigation>> SqliteStore::ListDue(absl::Time now, int limit) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<core::Mitigation>> {
    std::vector<std::pair<int64_t, core::Mitigation>> due;
    for (std::string_view sql :
         {"SELECT json, expires_at FROM mitigations WHERE state = 'active' AND expires_at <= ?1 "
          "ORDER BY expires_at LIMIT ?2",
          "SELECT json, starts_at FROM mitigations WHERE state = 'scheduled' AND starts_at <= ?1 "
          "ORDER BY starts_at LIMIT ?2"}) {
      QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(sql));
      StmtUse use(s);
      use->BindTime(1, now);
      use->BindInt(2, limit);
      while (true) {
        QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
        if (!row) break;
        QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(use->ColumnText(0)));
        due.emplace_back(use->ColumnInt(1), std::move(m));
      }
    }
    // Earliest due first across both kinds.
    std::stable_sort(due.begin(), due.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<core::Mitigation> out;
    for (auto& [at, m] : due) {
      if (static_cast<int>(out.size()) == limit) break;
      out.push_back(std::move(m));
    }
    return out;
  });
}

absl::StatusOr<std::optional<absl::Time>> SqliteStore::NextDue() {
  return WithRead([&](Db& db) -> absl::StatusOr<std::optional<absl::Time>> {
    std::optional<absl::Time> next;
    for (std::string_view sql :
         {"SELECT MIN(expires_at) FROM mitigations WHERE state = 'active'",
          "SELECT MIN(starts_at) FROM mitigations WHERE state = 'scheduled'"}) {
      QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(sql));
      StmtUse use(s);
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (row && !use->ColumnIsNull(0)) {
        absl::Time t = use->ColumnTime(0);
        if (!next || t < *next) next = t;
      }
    }
    return next;
  });
}

absl::StatusOr<int64_t> SqliteStore::PurgeIdempotency(absl::Time before) {
  return WithSideWrite([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("DELETE FROM idempotency WHERE created_at < ?1"));
    StmtUse use(s);
    use->BindTime(1, before);
    QUELL_RETURN_IF_ERROR(use->Run());
    return db.changes();
  });
}

absl::Status BumpKeysVersion(Db& db) {
  QUELL_ASSIGN_OR_RETURN(
      Stmt * s, db.Prepare("UPDATE meta SET value = value + 1 WHERE key = 'keys_version'"));
  StmtUse use(s);
  QUELL_RETURN_IF_ERROR(use->Run());
  if (db.changes() != 1) return absl::DataLossError("meta row keys_version is missing");
  return absl::OkStatus();
}

absl::Status SqliteStore::CreateKey(const ApiKey& key) {
  if (key.id.empty() || key.secret_hash.empty() || key.role.empty()) {
    return absl::InvalidArgumentError("api key needs id, secret_hash and role");
  }
  absl::StatusOr<bool> r = WithSideWrite([&](Db& db) -> absl::StatusOr<bool> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db.Prepare("INSERT INTO api_keys (id, secret_hash, role, sources, "
                                      "name, created_at, revoked_at) "
                                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
    StmtUse use(s);
    use->BindTextStatic(1, key.id);
    use->BindTextStatic(2, key.secret_hash);
    use->BindTextStatic(3, key.role);
    use->BindText(4, SourcesToJson(key.sources));
    use->BindTextStatic(5, key.name);
    use->BindTime(6, key.created_at);
    if (key.revoked_at) {
      use->BindTime(7, *key.revoked_at);
    } else {
      use->BindNull(7);
    }
    QUELL_RETURN_IF_ERROR(use->Run());
    QUELL_RETURN_IF_ERROR(BumpKeysVersion(db));
    return true;
  });
  return r.status();
}

absl::StatusOr<std::vector<ApiKey>> SqliteStore::ListKeys() {
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<ApiKey>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db.Prepare("SELECT id, secret_hash, role, sources, name, created_at, "
                                      "revoked_at FROM api_keys ORDER BY created_at, id"));
    StmtUse use(s);
    std::vector<ApiKey> out;
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      ApiKey k;
      k.id = use->ColumnText(0);
      k.secret_hash = use->ColumnText(1);
      k.role = use->ColumnText(2);
      QUELL_ASSIGN_OR_RETURN(k.sources, SourcesFromJson(use->ColumnText(3)));
      k.name = use->ColumnText(4);
      k.created_at = use->ColumnTime(5);
      if (!use->ColumnIsNull(6)) k.revoked_at = use->ColumnTime(6);
      out.push_back(std::move(k));
    }
    return out;
  });
}

absl::Status SqliteStore::RevokeKey(std::string_view id, absl::Time at) {
  absl::StatusOr<bool> r = WithSideWrite([&](Db& db) -> absl::StatusOr<bool> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT revoked_at IS NOT NULL FROM api_keys "
                                                "WHERE id = ?1"));
    bool revoked = false;
    {
      StmtUse use(s);
      use->BindTextStatic(1, id);
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) return absl::NotFoundError(absl::StrCat("no api key ", AV(id)));
      revoked = use->ColumnInt(0) != 0;
    }
    if (revoked) return true;  // revoking twice is fine and changes nothing
    QUELL_ASSIGN_OR_RETURN(Stmt * u, db.Prepare("UPDATE api_keys SET revoked_at = ?2 "
                                                "WHERE id = ?1"));
    StmtUse use(u);
    use->BindTextStatic(1, id);
    use->BindTime(2, at);
    QUELL_RETURN_IF_ERROR(use->Run());
    QUELL_RETURN_IF_ERROR(BumpKeysVersion(db));
    return true;
  });
  return r.status();
}

absl::StatusOr<int64_t> SqliteStore::KeysVersion() {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db.Prepare("SELECT value FROM meta WHERE key = 'keys_version'"));
    StmtUse use(s);
    QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
    if (!row) return absl::DataLossError("meta row keys_version is missing");
    return use->ColumnInt(0);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const SqliteOptions& options) {
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<SqliteStore> store, SqliteStore::Open(options));
  return std::unique_ptr<Store>(std::move(store));
}

int SqliteSchemaVersion() { return sqlite_internal::Migrations().back().version; }

absl::StatusOr<std::string> SqlitePragmaForTest(Store& store, std::string_view name) {
  auto* s = dynamic_cast<SqliteStore*>(&store);
  if (s == nullptr) return absl::InvalidArgumentError("not a SQLite store");
  return s->WriterPragma(name);
}

}  // namespace quell::ledger
