#include "ledger/postgres/postgres_store.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/entity_list.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/internal/known_entities.h"
#include "ledger/internal/payloads.h"
#include "pg/conn.h"
#include "rapidjson/document.h"

namespace quell::ledger {
namespace {

using internal::KnownEntities;
using internal::ListChange;
using internal::ParseListChange;
using internal::ParsePolicySetChange;
using internal::PolicySetChange;
using internal::SourcesFromJson;
using internal::SourcesToJson;

using pg::ArrayLiteral;
using pg::Conn;
using pg::ConnOptions;
using pg::P;
using pg::Param;
using pg::PNull;
using pg::PTime;
using pg::Result;

constexpr int kMaxLimit = 10000;
// Serialises migrations of nodes starting together (any constant unique to Quell).
constexpr int64_t kMigrationLockKey = 0x5175656c6c4d6967;  // "QuellMig"

struct Migration {
  int version;
  const char* sql;
};

// Same tables as the SQLite backend (times are bigint microseconds since the epoch),
// plus chain_head: the single row every writer locks first. Sorted text columns use the
// "C" collation so that orders match the SQLite backend's byte order.
constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE changes (
  seq       bigint PRIMARY KEY,
  at        bigint NOT NULL,
  kind      integer NOT NULL,
  actor     text NOT NULL,
  subject   text NOT NULL,
  entity    text COLLATE "C" NOT NULL,
  payload   text NOT NULL,
  prev_hash text NOT NULL,
  hash      text NOT NULL
);
CREATE INDEX changes_entity_seq ON changes (entity, seq);
CREATE TABLE chain_head (
  id   integer PRIMARY KEY CHECK (id = 1),
  seq  bigint NOT NULL,
  hash text NOT NULL
);
INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, '');
CREATE TABLE mitigations (
  id         text COLLATE "C" PRIMARY KEY,
  entity     text COLLATE "C" NOT NULL,
  action     text NOT NULL,
  state      text NOT NULL,
  created_at bigint NOT NULL,
  due_at     bigint,
  source     text NOT NULL,
  policy     text NOT NULL,
  seq        bigint NOT NULL
);
CREATE INDEX mitigations_entity ON mitigations (entity, created_at);
CREATE INDEX mitigations_due ON mitigations (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE idempotency (
  scope        text NOT NULL,
  key          text NOT NULL,
  request_hash text NOT NULL,
  status       integer NOT NULL,
  response     text NOT NULL,
  created_at   bigint NOT NULL,
  PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
CREATE TABLE api_keys (
  id          text COLLATE "C" PRIMARY KEY,
  secret_hash text NOT NULL UNIQUE,
  role        text NOT NULL,
  sources     text NOT NULL,
  name        text NOT NULL,
  created_at  bigint NOT NULL,
  revoked_at  bigint
);
CREATE TABLE meta (
  key   text PRIMARY KEY,
  value bigint NOT NULL
);
INSERT INTO meta (key, value) VALUES ('keys_version', 0);
CREATE TABLE detections (
  ord         bigserial PRIMARY KEY,
  source      text NOT NULL,
  id          text NOT NULL,
  type        text NOT NULL,
  entity      text NOT NULL,
  score       double precision NOT NULL,
  observed_at bigint NOT NULL,
  received_at bigint NOT NULL,
  batch       text NOT NULL,
  json        text NOT NULL,
  reply       text NOT NULL,
  UNIQUE (source, id)
);
CREATE INDEX detections_observed ON detections (observed_at);
CREATE TABLE policy_sets (
  version    bigint PRIMARY KEY,
  seq        bigint NOT NULL,
  created_at bigint NOT NULL,
  actor      text NOT NULL,
  yaml       text NOT NULL
);
CREATE TABLE lists (
  name      text COLLATE "C" PRIMARY KEY,
  protected boolean NOT NULL,
  kind      text NOT NULL
);
CREATE TABLE list_entries (
  list   text COLLATE "C" NOT NULL,
  entity text COLLATE "C" NOT NULL,
  PRIMARY KEY (list, entity)
);
)sql"},
    // Leases for work that runs on one node at a time (lease.h). Expiry is on the
    // server's clock, so nodes' clocks need not agree.
    {2, R"sql(
CREATE TABLE leases (
  name       text PRIMARY KEY,
  holder     text NOT NULL,
  expires_at timestamptz NOT NULL
);
)sql"},
    // A mitigation keeps its entity, as on SQLite (RestoreMitigationBefore and the
    // entity-ordered reads find its versions by it). Mitigation rows are upserted in
    // deferred batches, so the refusal is the server's: the statement that would move one
    // fails with SQLSTATE 22023 (InvalidArgument), at the transaction's next round trip.
    // The WHEN clause is evaluated without entering PL/pgSQL: an update that keeps the
    // entity costs one comparison.
    {3, R"sql(
CREATE FUNCTION quell_mitigation_keeps_entity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'mitigation % belongs to another entity than %', OLD.id, NEW.entity
    USING ERRCODE = '22023';
END
$$;
CREATE TRIGGER mitigations_keep_entity BEFORE UPDATE ON mitigations FOR EACH ROW
  WHEN (OLD.entity IS DISTINCT FROM NEW.entity) EXECUTE FUNCTION quell_mitigation_keeps_entity();
)sql"},
};

#define QUELL_NOTIFY_CHANNEL "quell_changes"
#define QUELL_LIVE_STATES "('pending_approval','scheduled','active')"
#define QUELL_CHANGE_COLUMNS "seq, at, kind, actor, subject, entity, payload, prev_hash, hash"
#define QUELL_SELECT_MITIGATION \
  "SELECT c.payload FROM mitigations m JOIN changes c ON c.seq = m.seq"
#define QUELL_DETECTION_COLUMNS \
  "source, id, type, entity, score, observed_at, received_at, batch, json, reply"

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

Change ReadChangeRow(const Result& r, int i) {
  Change c;
  c.seq = r.Int(i, 0);
  c.at = r.Time(i, 1);
  c.kind = static_cast<ChangeKind>(r.Int(i, 2));
  c.actor = r.Text(i, 3);
  c.subject = r.Text(i, 4);
  c.entity = r.Text(i, 5);
  c.payload = r.Text(i, 6);
  c.prev_hash = r.Text(i, 7);
  c.hash = r.Text(i, 8);
  return c;
}

// Every row of `r` (selecting QUELL_CHANGE_COLUMNS) as a change.
std::vector<Change> CollectChanges(const Result& r) {
  std::vector<Change> out;
  out.reserve(r.rows());
  for (int i = 0; i < r.rows(); ++i) out.push_back(ReadChangeRow(r, i));
  return out;
}

absl::StatusOr<std::vector<core::Mitigation>> CollectMitigations(const Result& r) {
  std::vector<core::Mitigation> out;
  out.reserve(r.rows());
  for (int i = 0; i < r.rows(); ++i) {
    QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(r.Text(i, 0)));
    out.push_back(std::move(m));
  }
  return out;
}

void ReadDetectionRow(const Result& r, int i, StoredDetection* d) {
  d->source.assign(r.Text(i, 0));
  d->id.assign(r.Text(i, 1));
  d->type.assign(r.Text(i, 2));
  d->entity.assign(r.Text(i, 3));
  d->score = r.Double(i, 4);
  d->observed_at = r.Time(i, 5);
  d->received_at = r.Time(i, 6);
  d->batch.assign(r.Text(i, 7));
  d->json.assign(r.Text(i, 8));
  d->reply.assign(r.Text(i, 9));
}

// ---- queries shared by Txn reads (write connection) and Store reads (pool) ----

absl::StatusOr<std::optional<core::Mitigation>> QueryMitigation(Conn& db, std::string_view id) {
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query(QUELL_SELECT_MITIGATION " WHERE m.id = $1", {P(id)}));
  if (r.rows() == 0) return std::optional<core::Mitigation>();
  QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(r.Text(0, 0)));
  return std::optional<core::Mitigation>(std::move(m));
}

absl::StatusOr<std::vector<core::Mitigation>> QueryLive(Conn& db, const core::Entity& entity,
                                                        std::string_view action) {
  QUELL_ASSIGN_OR_RETURN(
      Result r, db.Query(QUELL_SELECT_MITIGATION
                         " WHERE m.entity = $1 AND m.action = $2 AND m.state IN " QUELL_LIVE_STATES
                         " ORDER BY m.id",
                         {P(entity.str()), P(action)}));
  return CollectMitigations(r);
}

absl::StatusOr<std::vector<core::Mitigation>> QueryEntityMitigations(Conn& db,
                                                                     const core::Entity& entity,
                                                                     absl::Time since) {
  QUELL_ASSIGN_OR_RETURN(
      Result r, db.Query(QUELL_SELECT_MITIGATION " WHERE m.entity = $1 AND (m.created_at >= $2 OR "
                                                 "m.state IN " QUELL_LIVE_STATES ")",
                         {P(entity.str()), PTime(since)}));
  return CollectMitigations(r);
}

absl::StatusOr<std::optional<IdempotencyRecord>> QueryIdempotency(Conn& db, std::string_view scope,
                                                                  std::string_view key) {
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query("SELECT request_hash, status, response, created_at "
                                            "FROM idempotency WHERE scope = $1 AND key = $2",
                                            {P(scope), P(key)}));
  if (r.rows() == 0) return std::optional<IdempotencyRecord>();
  IdempotencyRecord rec;
  rec.scope = scope;
  rec.key = key;
  rec.request_hash = r.Text(0, 0);
  rec.status = static_cast<int>(r.Int(0, 1));
  rec.response = r.Text(0, 2);
  rec.created_at = r.Time(0, 3);
  return std::optional<IdempotencyRecord>(std::move(rec));
}

// The committed head: chain_head is written once per transaction, at its commit, so this
// never visits the changes a transaction in progress has inserted (MAX(seq) walked back
// through every one of them: a reader near a 30,000-change transaction paid for each).
absl::StatusOr<int64_t> QueryLastSeq(Conn& db) {
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query("SELECT seq FROM chain_head WHERE id = 1"));
  if (r.rows() != 1) return absl::DataLossError("chain_head row is missing");
  return r.Int(0, 0);
}

absl::StatusOr<std::optional<StoredDetection>> QueryDetection(Conn& db, std::string_view source,
                                                              std::string_view id) {
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query("SELECT " QUELL_DETECTION_COLUMNS
                                            " FROM detections WHERE source = $1 AND id = $2",
                                            {P(source), P(id)}));
  if (r.rows() == 0) return std::optional<StoredDetection>();
  StoredDetection d;
  ReadDetectionRow(r, 0, &d);
  return std::optional<StoredDetection>(std::move(d));
}

absl::StatusOr<int64_t> QueryCountMitigations(Conn& db, const core::Entity& entity,
                                              std::string_view policy, std::string_view action,
                                              absl::Time since, bool exclude_shadow) {
  QUELL_ASSIGN_OR_RETURN(
      Result r,
      db.Query("SELECT COUNT(*) FROM mitigations WHERE entity = $1 AND "
               "created_at >= $2 AND ($3::text = '' OR policy = $3::text) AND "
               "($4::text = '' OR action = $4::text) AND "
               "($5::integer = 0 OR state <> 'shadow') AND "
               "state NOT IN ('revoked', 'rejected', 'suppressed') AND "
               "(state <> 'expired' OR NOT EXISTS (SELECT 1 FROM changes c "
               "WHERE c.seq = mitigations.seq AND "
               // The scheduler's two reasons hold no LIKE wildcard: matched as they are.
               "c.payload::jsonb ->> 'state_reason' LIKE ANY "
               "(ARRAY[$6::text, $7::text, $8::text])))",
               {P(entity.str()), PTime(since), P(policy), P(action),
                P(int64_t{exclude_shadow ? 1 : 0}), P(internal::ExpiredUnapprovedPattern()),
                P(core::kStartAfterExpiryReason), P(core::kStartAfterExpiryReasonBefore)}));
  return r.rows() ? r.Int(0, 0) : 0;
}

absl::StatusOr<int64_t> QueryNextPolicyVersion(Conn& db) {
  QUELL_ASSIGN_OR_RETURN(Result r,
                         db.Query("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_sets"));
  return r.rows() ? r.Int(0, 0) : 1;
}

// Lists are rows keyed by (list, entity). An ip: or cidr: is looked up as itself and as
// each network that could contain it (one key per prefix length: 33 for IPv4, 129 for IPv6)
// in one statement: one round trip, one index probe per key.
absl::StatusOr<bool> QueryListHas(Conn& db, std::string_view list, const core::Entity& entity) {
  if (!entity.is_ip() && !entity.is_cidr()) {
    QUELL_ASSIGN_OR_RETURN(Result r, db.Query("SELECT 1 FROM list_entries WHERE list = $1 AND "
                                              "entity = $2",
                                              {P(list), P(entity.str())}));
    return r.rows() > 0;
  }
  std::vector<std::string> keys = core::CoveringCidrEntries(entity);
  keys.push_back(entity.str());
  const std::vector<std::string_view> views(keys.begin(), keys.end());
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query("SELECT 1 FROM list_entries WHERE list = $1 AND "
                                            "entity = ANY($2::text[]) LIMIT 1",
                                            {P(list), P(ArrayLiteral(views))}));
  return r.rows() > 0;
}

absl::StatusOr<std::optional<PolicySetVersion>> QueryPolicySet(Conn& db, const std::string& sql,
                                                               int64_t version) {
  QUELL_ASSIGN_OR_RETURN(Result r, db.Query(sql, {P(version)}));
  if (r.rows() == 0) return std::optional<PolicySetVersion>();
  PolicySetVersion p;
  p.version = r.Int(0, 0);
  p.seq = r.Int(0, 1);
  p.yaml = r.Text(0, 2);
  p.created_at = r.Time(0, 3);
  p.actor = r.Text(0, 4);
  return std::optional<PolicySetVersion>(std::move(p));
}

// A bounded set of read connections, opened on demand; a lost connection is dropped when
// returned. Thread-safe.
class ReadPool {
 public:
  ReadPool(ConnOptions opts, int size) : opts_(std::move(opts)), size_(std::max(1, size)) {}

  class Lease {
   public:
    Lease(ReadPool* pool, std::unique_ptr<Conn> c) : pool_(pool), c_(std::move(c)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (c_) pool_->Return(std::move(c_));
    }
    Conn& operator*() const { return *c_; }
    Conn* operator->() const { return c_.get(); }

   private:
    ReadPool* pool_;
    std::unique_ptr<Conn> c_;
  };

  absl::StatusOr<Lease> Acquire() {
    {
      absl::MutexLock lock(&mu_);
      absl::Time deadline = absl::Now() + absl::Seconds(std::max(1, opts_.connect_timeout_s));
      while (idle_.empty() && open_ >= size_) {
        if (returned_.WaitWithDeadline(&mu_, deadline)) {
          return absl::UnavailableError("postgres: no read connection free in time");
        }
      }
      if (!idle_.empty()) {
        std::unique_ptr<Conn> c = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(c));
      }
      ++open_;
    }
    auto c = Conn::Open(opts_);
    if (c.ok()) return Lease(this, *std::move(c));
    absl::MutexLock lock(&mu_);
    --open_;
    returned_.Signal();
    return c.status();
  }

  //! Closes every idle connection: one was found closed by the server (a restart), and
  //! so, most likely, are the others, which a retry must not take next.
  void DropIdle() {
    absl::MutexLock lock(&mu_);
    open_ -= static_cast<int>(idle_.size());
    idle_.clear();
    returned_.SignalAll();
  }

 private:
  void Return(std::unique_ptr<Conn> c) {
    absl::MutexLock lock(&mu_);
    if (c->ok() && !c->InTransaction()) {
      idle_.push_back(std::move(c));
    } else {
      --open_;  // lost or stuck: closed here, re-opened on demand
    }
    returned_.Signal();
  }

  const ConnOptions opts_;
  const int size_;
  absl::Mutex mu_;
  absl::CondVar returned_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

// The rows every Append writes. Deferred, and sent merged: the rows of a group commit
// reach the server as two INSERT statements, not two per mutation.
const pg::RowTemplate kChangeRow{
    .single = "INSERT INTO changes (" QUELL_CHANGE_COLUMNS
              ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    .multi = "INSERT INTO changes (" QUELL_CHANGE_COLUMNS
             ") SELECT * FROM unnest($1::int8[], $2::int8[], $3::int4[], $4::text[], "
             "$5::text[], $6::text[], $7::text[], $8::text[], $9::text[])",
};
#define QUELL_UPSERT_MITIGATION                                                          \
  " ON CONFLICT (id) DO UPDATE SET entity = EXCLUDED.entity, action = EXCLUDED.action, " \
  "state = EXCLUDED.state, created_at = EXCLUDED.created_at, due_at = EXCLUDED.due_at, " \
  "source = EXCLUDED.source, policy = EXCLUDED.policy, seq = EXCLUDED.seq"
const pg::RowTemplate kMitigationRow{
    .single =
        "INSERT INTO mitigations (id, entity, action, state, created_at, due_at, source, "
        "policy, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)" QUELL_UPSERT_MITIGATION,
    .multi =
        "INSERT INTO mitigations (id, entity, action, state, created_at, due_at, source, "
        "policy, seq) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
        "$5::int8[], $6::int8[], $7::text[], $8::text[], $9::int8[])" QUELL_UPSERT_MITIGATION,
    .key =
        0,  // an id twice in one statement: "ON CONFLICT DO UPDATE cannot affect row a second time"
};

class PgStore;

// The one write transaction. Confined to the commit thread. It holds the chain head row
// lock from Begin to Commit/Rollback. A failed statement aborts a PostgreSQL transaction:
// the Txn then refuses everything but RollbackToSavepoint (which recovers, if a savepoint
// is open), Rollback, and Commit (which rolls back and fails).
class PgTxn final : public Txn {
 public:
  PgTxn(PgStore* store, Conn* db, KnownEntities* known, absl::Time now, int64_t head_seq,
        std::string head_hash)
      : store_(store),
        db_(db),
        known_(known),
        now_(now),
        start_seq_(head_seq),
        head_seq_(head_seq),
        head_hash_(std::move(head_hash)) {}
  ~PgTxn() override { Rollback(); }

  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    return Track(QueryMitigation(*db_, id));
  }
  absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                         std::string_view action) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    if (!known_->MayHave(entity.str())) return std::vector<core::Mitigation>();
    return Track(QueryLive(*db_, entity, action));
  }
  absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                  std::string_view key) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    return Track(QueryIdempotency(*db_, scope, key));
  }
  absl::Status PutIdempotency(const IdempotencyRecord& r) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    QUELL_RETURN_IF_ERROR(Materialize());
    QUELL_ASSIGN_OR_RETURN(
        Result res,
        Track(db_->Query("INSERT INTO idempotency (scope, key, request_hash, status, response, "
                         "created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                         {P(r.scope), P(r.key), P(r.request_hash), P(int64_t{r.status}),
                          P(r.response), PTime(r.created_at)})));
    if (res.Affected() == 0) {
      return absl::AlreadyExistsError(absl::StrCat("idempotency key ", r.key, " is stored"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                              std::string_view id) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    return Track(QueryDetection(*db_, source, id));
  }
  absl::Status PutDetection(const StoredDetection& d) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    if (d.source.empty() || d.id.empty()) {
      return absl::InvalidArgumentError("a detection needs source and id");
    }
    QUELL_RETURN_IF_ERROR(Materialize());
    QUELL_ASSIGN_OR_RETURN(
        Result res, Track(db_->Query("INSERT INTO detections (" QUELL_DETECTION_COLUMNS
                                     ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
                                     "ON CONFLICT DO NOTHING",
                                     {P(d.source), P(d.id), P(d.type), P(d.entity), P(d.score),
                                      PTime(d.observed_at), PTime(d.received_at), P(d.batch),
                                      P(d.json), P(d.reply)})));
    if (res.Affected() == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("detection ", d.id, " of source ", d.source, " is already stored"));
    }
    return absl::OkStatus();
  }
  // A batch of detections in one statement each way (unnest of array parameters).
  absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
      const std::vector<DetectionKey>& keys) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    std::vector<std::optional<std::string>> out(keys.size());
    if (keys.empty()) return out;
    std::vector<std::string_view> sources, ids;
    for (const DetectionKey& k : keys) {
      sources.push_back(k.source);
      ids.push_back(k.id);
    }
    QUELL_ASSIGN_OR_RETURN(
        Result r, Track(db_->Query("SELECT k.i, d.reply FROM unnest($1::text[], $2::text[]) "
                                   "WITH ORDINALITY AS k(source, id, i) JOIN detections d "
                                   "ON d.source = k.source AND d.id = k.id",
                                   {P(ArrayLiteral(sources)), P(ArrayLiteral(ids))})));
    for (int row = 0; row < r.rows(); ++row) {
      const int64_t i = r.Int(row, 0) - 1;
      if (i >= 0 && i < static_cast<int64_t>(out.size())) out[i] = std::string(r.Text(row, 1));
    }
    return out;
  }
  absl::Status PutDetections(const std::vector<StoredDetection>& ds) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    if (ds.empty()) return absl::OkStatus();
    QUELL_ASSIGN_OR_RETURN(Result res, InsertDetections(ds, /*returning=*/false));
    if (res.Affected() != static_cast<int64_t>(ds.size())) {
      return absl::AlreadyExistsError(absl::StrCat(
          ds.size() - res.Affected(), " detection(s) of this batch are already stored"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<bool>> PutNewDetections(
      const std::vector<StoredDetection>& ds) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    std::vector<bool> out(ds.size(), false);
    if (ds.empty()) return out;
    QUELL_ASSIGN_OR_RETURN(Result res, InsertDetections(ds, /*returning=*/true));
    absl::flat_hash_map<std::pair<std::string_view, std::string_view>, size_t> index;
    index.reserve(ds.size());
    for (size_t i = 0; i < ds.size(); ++i) index.try_emplace({ds[i].source, ds[i].id}, i);
    for (int row = 0; row < res.rows(); ++row) {
      auto it = index.find({res.Text(row, 0), res.Text(row, 1)});
      if (it != index.end()) out[it->second] = true;
    }
    return out;
  }
  // One INSERT of every row of `ds` (unnest of array parameters), skipping stored keys;
  // `returning`: the written rows' keys.
  absl::StatusOr<Result> InsertDetections(const std::vector<StoredDetection>& ds, bool returning) {
    std::vector<std::string_view> source, id, type, entity, score, observed, received, batch, json,
        reply;
    std::vector<std::string> numbers;  // the text of the numeric columns
    numbers.reserve(3 * ds.size());
    for (const StoredDetection& d : ds) {
      if (d.source.empty() || d.id.empty()) {
        return absl::InvalidArgumentError("a detection needs source and id");
      }
      source.push_back(d.source);
      id.push_back(d.id);
      type.push_back(d.type);
      entity.push_back(d.entity);
      numbers.push_back(P(d.score).value);
      numbers.push_back(PTime(d.observed_at).value);
      numbers.push_back(PTime(d.received_at).value);
      batch.push_back(d.batch);
      json.push_back(d.json);
      reply.push_back(d.reply);
    }
    for (size_t i = 0; i < ds.size(); ++i) {
      score.push_back(numbers[3 * i]);
      observed.push_back(numbers[3 * i + 1]);
      received.push_back(numbers[3 * i + 2]);
    }
    QUELL_RETURN_IF_ERROR(Materialize());
    return Track(db_->Query(
        "INSERT INTO detections (" QUELL_DETECTION_COLUMNS
        ") SELECT source, id, type, entity, score, observed_at, received_at, batch, json, "
        "reply FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
        "$5::float8[], $6::int8[], $7::int8[], $8::text[], $9::text[], $10::text[]) "
        "WITH ORDINALITY AS t(source, id, type, entity, score, observed_at, received_at, "
        "batch, json, reply, i) ORDER BY i ON CONFLICT DO NOTHING" +
            std::string(returning ? " RETURNING source, id" : ""),
        {P(ArrayLiteral(source)), P(ArrayLiteral(id)), P(ArrayLiteral(type)),
         P(ArrayLiteral(entity)), P(ArrayLiteral(score)), P(ArrayLiteral(observed)),
         P(ArrayLiteral(received)), P(ArrayLiteral(batch)), P(ArrayLiteral(json)),
         P(ArrayLiteral(reply))}));
  }

  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    if (!known_->MayHave(entity.str())) return int64_t{0};
    return Track(QueryCountMitigations(*db_, entity, policy, action, since, exclude_shadow));
  }
  absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(const core::Entity& entity,
                                                                  absl::Time since) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    if (!known_->MayHave(entity.str())) return std::vector<core::Mitigation>();
    return Track(QueryEntityMitigations(*db_, entity, since));
  }
  absl::StatusOr<int64_t> NextPolicyVersion() override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    return Track(QueryNextPolicyVersion(*db_));
  }
  absl::StatusOr<bool> ListHas(std::string_view name, const core::Entity& entity) override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    return Track(QueryListHas(*db_, name, entity));
  }
  absl::StatusOr<Change> Append(Change change, const core::Mitigation* mitigation) override;
  int64_t NextSeq() const override { return head_seq_ + 1; }
  // Round trips: a SAVEPOINT is only sent once a write follows it (reads need none), and
  // savepoints, releases and Append's inserts are deferred (Conn::Defer): they travel
  // with the transaction's next query. A savepoint released while its SAVEPOINT is still
  // queued is simply dropped from the queue. So a mutation that reads then appends costs
  // one round trip (its read) and its rows. The price: a statement that fails after a
  // savepoint whose SAVEPOINT was never sent cannot be undone by it (the whole
  // transaction then fails); only reads run there, and they fail only with the server.
  absl::Status Savepoint() override {
    QUELL_RETURN_IF_ERROR(CheckUsable());
    savepoints_.push_back({head_seq_, head_hash_, /*materialized=*/false, 0, 0});
    return absl::OkStatus();
  }
  absl::Status RollbackToSavepoint() override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
    std::string name = absl::StrCat("sp", savepoints_.size());
    Mark mark = std::move(savepoints_.back());
    savepoints_.pop_back();
    if (!mark.materialized) {
      // Nothing was written since it (a write would have materialized it).
      if (aborted_) {
        return absl::AbortedError("a statement failed after a savepoint that was never sent");
      }
    } else if (mark.sends == db_->sends()) {
      // Not sent yet: forget it and everything queued after it; nothing reached the server.
      db_->DropDeferred(mark.deferred_at);
    } else {
      db_->DropDeferred(0);  // all of it was queued after the (sent) savepoint
      absl::Status st =
          db_->Exec(absl::StrCat("ROLLBACK TO SAVEPOINT ", name, "; RELEASE SAVEPOINT ", name));
      if (!st.ok()) {
        aborted_ = true;
        return st;
      }
      aborted_ = false;  // PostgreSQL recovers an aborted transaction at the savepoint
    }
    head_seq_ = mark.seq;
    head_hash_ = std::move(mark.hash);
    return absl::OkStatus();
  }
  absl::Status ReleaseSavepoint() override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
    QUELL_RETURN_IF_ERROR(CheckUsable());
    const Mark& mark = savepoints_.back();
    if (mark.materialized && mark.sends == db_->sends()) {
      db_->EraseDeferred(mark.deferred_at);  // its writes stay queued, in the outer scope
    } else if (mark.materialized) {
      QUELL_RETURN_IF_ERROR(
          Track(db_->Defer(absl::StrCat("RELEASE SAVEPOINT sp", savepoints_.size()))));
    }
    savepoints_.pop_back();
    return absl::OkStatus();
  }
  absl::Status Commit() override;
  void Rollback() override;

 private:
  struct Mark {
    int64_t seq;
    std::string hash;
    bool materialized;   // its SAVEPOINT was queued (a write followed it)
    size_t deferred_at;  // then: its SAVEPOINT's index in the connection's deferred queue
    uint64_t sends;      // and db_->sends() then: equal while the SAVEPOINT is unsent
  };
  // Queues the SAVEPOINT of every savepoint no write has followed yet, outermost first.
  // Called before every write.
  absl::Status Materialize() {
    for (size_t i = 0; i < savepoints_.size(); ++i) {
      Mark& m = savepoints_[i];
      if (m.materialized) continue;
      m.materialized = true;
      m.deferred_at = db_->deferred();
      m.sends = db_->sends();
      QUELL_RETURN_IF_ERROR(Track(db_->Defer(absl::StrCat("SAVEPOINT sp", i + 1))));
    }
    return absl::OkStatus();
  }
  absl::Status CheckOpen() const {
    if (done_) return absl::FailedPreconditionError("transaction already finished");
    return absl::OkStatus();
  }
  absl::Status CheckUsable() const {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (aborted_) {
      return absl::AbortedError("transaction is aborted by a failed statement; roll back");
    }
    return absl::OkStatus();
  }
  // Any failed statement leaves the PostgreSQL transaction aborted: remember that.
  template <typename T>
  T Track(T result) {
    if (!result.ok()) aborted_ = true;
    return result;
  }
  absl::Status ApplyListChange(const ListChange& lc);
  void Finish();

  PgStore* store_;
  Conn* db_;
  KnownEntities* known_;  // the store's
  const absl::Time now_;
  const int64_t start_seq_;
  int64_t head_seq_;
  std::string head_hash_;
  std::vector<Mark> savepoints_;
  bool aborted_ = false;
  bool done_ = false;
};

class PgStore final : public Store {
 public:
  static absl::StatusOr<std::unique_ptr<PgStore>> Open(const PostgresOptions& options);

  absl::StatusOr<std::unique_ptr<Txn>> Begin(absl::Time now) override;

  absl::StatusOr<int64_t> LastSeq() override {
    return WithOneRead([](Conn& db) { return QueryLastSeq(db); });
  }
  absl::StatusOr<std::vector<Change>> ReadChanges(int64_t after, int limit) override {
    QUELL_RETURN_IF_ERROR(CheckLimit(limit));
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<Change>> {
      QUELL_ASSIGN_OR_RETURN(Result r,
                             db.Query("SELECT " QUELL_CHANGE_COLUMNS
                                      " FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                                      {P(after), P(int64_t{limit})}));
      return CollectChanges(r);
    });
  }
  absl::StatusOr<std::vector<Change>> ReadChangesOfKind(ChangeKind kind, int64_t after,
                                                        int limit) override {
    QUELL_RETURN_IF_ERROR(CheckLimit(limit));
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<Change>> {
      QUELL_ASSIGN_OR_RETURN(
          Result r, db.Query("SELECT " QUELL_CHANGE_COLUMNS
                             " FROM changes WHERE seq > $1 AND kind = $2 ORDER BY seq LIMIT $3",
                             {P(after), P(int64_t{static_cast<int>(kind)}), P(int64_t{limit})}));
      return CollectChanges(r);
    });
  }
  absl::StatusOr<std::vector<Change>> ReadEntityChanges(const core::Entity& entity, int limit,
                                                        int64_t after) override {
    QUELL_RETURN_IF_ERROR(CheckLimit(limit));
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<Change>> {
      QUELL_ASSIGN_OR_RETURN(
          Result r, db.Query("SELECT " QUELL_CHANGE_COLUMNS
                             " FROM changes WHERE entity = $1 AND seq > $3 ORDER BY seq LIMIT $2",
                             {P(entity.str()), P(int64_t{limit}), P(after)}));
      return CollectChanges(r);
    });
  }
  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return WithOneRead([&](Conn& db) { return QueryMitigation(db, id); });
  }
  absl::StatusOr<MitigationPage> ListMitigations(const MitigationQuery& q) override;
  absl::StatusOr<int64_t> ScanLive(
      const std::function<absl::Status(const core::Mitigation&)>& fn) override {
    return WithRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));  // same snapshot
      QUELL_RETURN_IF_ERROR(db.Stream(
          QUELL_SELECT_MITIGATION " WHERE m.state IN " QUELL_LIVE_STATES, {},
          [&](const Result& r) -> absl::Status {
            QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(r.Text(0, 0)));
            return fn(m);
          }));
      return seq;
    });
  }
  absl::StatusOr<int64_t> ScanActiveJson(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(std::string_view json)>& fn) override {
    return WithRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
      start(seq);
      QUELL_RETURN_IF_ERROR(db.Stream(QUELL_SELECT_MITIGATION " WHERE m.state = 'active'", {},
                                      [&](const Result& r) { return fn(r.Text(0, 0)); }));
      return seq;
    });
  }
  absl::StatusOr<int64_t> ScanMitigationRows(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const MitigationRow&)>& fn) override {
    return WithRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));  // same snapshot
      start(seq);
      QUELL_RETURN_IF_ERROR(db.Stream(
          "SELECT m.id, m.entity, m.action, m.state, m.created_at, m.source, m.policy, m.seq, "
          "c.payload FROM mitigations m LEFT JOIN changes c ON c.seq = m.seq",
          {}, [&](const Result& r) {
            return fn(MitigationRow{.id = r.Text(0, 0),
                                    .entity = r.Text(0, 1),
                                    .action = r.Text(0, 2),
                                    .state = r.Text(0, 3),
                                    .source = r.Text(0, 5),
                                    .policy = r.Text(0, 6),
                                    .created_at = r.Time(0, 4),
                                    .seq = r.Int(0, 7),
                                    .payload = r.IsNull(0, 8) ? std::string_view() : r.Text(0, 8)});
          }));
      return seq;
    });
  }
  absl::StatusOr<int64_t> ScanDue(const std::function<void(int64_t seq)>& start,
                                  const std::function<absl::Status(const DueEntry&)>& fn) override {
    return WithRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));  // same snapshot
      start(seq);
      QUELL_RETURN_IF_ERROR(db.Stream("SELECT id, due_at FROM mitigations WHERE due_at IS NOT NULL",
                                      {}, [&](const Result& r) {
                                        return fn(DueEntry{r.Text(0, 0), r.Time(0, 1)});
                                      }));
      return seq;
    });
  }
  absl::StatusOr<std::vector<core::Mitigation>> ListDue(absl::Time now, int limit) override {
    QUELL_RETURN_IF_ERROR(CheckLimit(limit));
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<core::Mitigation>> {
      QUELL_ASSIGN_OR_RETURN(
          Result r,
          db.Query(QUELL_SELECT_MITIGATION " WHERE m.due_at <= $1 ORDER BY m.due_at, m.id LIMIT $2",
                   {PTime(now), P(int64_t{limit})}));
      return CollectMitigations(r);
    });
  }
  absl::StatusOr<std::optional<absl::Time>> NextDue() override {
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::optional<absl::Time>> {
      QUELL_ASSIGN_OR_RETURN(
          Result r, db.Query("SELECT MIN(due_at) FROM mitigations WHERE due_at IS NOT NULL"));
      if (r.rows() == 0 || r.IsNull(0, 0)) return std::optional<absl::Time>();
      return std::optional<absl::Time>(r.Time(0, 0));
    });
  }
  absl::StatusOr<int64_t> PurgeIdempotency(absl::Time before) override {
    return WithSideWrite([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(
          Result r, db.Query("DELETE FROM idempotency WHERE created_at < $1", {PTime(before)}));
      return r.Affected();
    });
  }
  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                              std::string_view id) override {
    return WithOneRead([&](Conn& db) { return QueryDetection(db, source, id); });
  }
  absl::Status ScanDetections(
      absl::Time from, absl::Time to,
      const std::function<absl::Status(const StoredDetection&)>& fn) override {
    absl::StatusOr<bool> r = WithRead([&](Conn& db) -> absl::StatusOr<bool> {
      StoredDetection d;  // one object, its buffers reused row after row
      QUELL_RETURN_IF_ERROR(db.Stream("SELECT " QUELL_DETECTION_COLUMNS
                                      " FROM detections WHERE observed_at >= $1 AND "
                                      "observed_at < $2 ORDER BY observed_at, ord",
                                      {PTime(from), PTime(to)}, [&](const Result& res) {
                                        ReadDetectionRow(res, 0, &d);
                                        return fn(d);
                                      }));
      return true;
    });
    return r.status();
  }
  absl::StatusOr<int64_t> PurgeDetections(absl::Time received_before) override;
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    return WithOneRead([&](Conn& db) {
      return QueryCountMitigations(db, entity, policy, action, since, exclude_shadow);
    });
  }
  absl::StatusOr<std::optional<PolicySetVersion>> GetPolicySet(int64_t version) override {
    return WithOneRead([&](Conn& db) {
      return QueryPolicySet(db,
                            "SELECT version, seq, yaml, created_at, actor FROM policy_sets "
                            "WHERE version = $1",
                            version);
    });
  }
  absl::StatusOr<std::optional<PolicySetVersion>> LatestPolicySet() override {
    return WithOneRead([&](Conn& db) {
      return QueryPolicySet(db,
                            "SELECT version, seq, yaml, created_at, actor FROM policy_sets "
                            "WHERE version >= $1 ORDER BY version DESC LIMIT 1",
                            0);
    });
  }
  absl::StatusOr<std::vector<ListInfo>> Lists() override {
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<ListInfo>> {
      QUELL_ASSIGN_OR_RETURN(Result r,
                             db.Query("SELECT name, protected, kind FROM lists ORDER BY name"));
      std::vector<ListInfo> out;
      for (int i = 0; i < r.rows(); ++i) {
        out.push_back({.name = std::string(r.Text(i, 0)),
                       .is_protected = r.Text(i, 1) == "t",
                       .kind = std::string(r.Text(i, 2))});
      }
      return out;
    });
  }
  absl::StatusOr<std::vector<std::string>> ListEntries(std::string_view name) override {
    return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<std::string>> {
      QUELL_ASSIGN_OR_RETURN(
          Result r,
          db.Query("SELECT entity FROM list_entries WHERE list = $1 ORDER BY entity", {P(name)}));
      std::vector<std::string> out;
      for (int i = 0; i < r.rows(); ++i) out.emplace_back(r.Text(i, 0));
      return out;
    });
  }
  absl::StatusOr<int64_t> ScanListEntries(
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) override {
    return WithRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
      QUELL_RETURN_IF_ERROR(
          db.Stream("SELECT list, entity FROM list_entries ORDER BY list, entity", {},
                    [&](const Result& r) { return fn(r.Text(0, 0), r.Text(0, 1)); }));
      return seq;
    });
  }

  absl::Status CreateKey(const ApiKey& key) override;
  absl::StatusOr<std::vector<ApiKey>> ListKeys() override;
  absl::Status RevokeKey(std::string_view id, absl::Time at, bool keep_last_admin) override;
  absl::StatusOr<int64_t> KeysVersion() override {
    return WithOneRead([&](Conn& db) -> absl::StatusOr<int64_t> {
      QUELL_ASSIGN_OR_RETURN(Result r,
                             db.Query("SELECT value FROM meta WHERE key = 'keys_version'"));
      if (r.rows() == 0) return absl::DataLossError("meta row keys_version is missing");
      return r.Int(0, 0);
    });
  }

  void TxnFinished() { txn_open_.store(false); }

 private:
  PgStore(ConnOptions opts, int pool_size, std::unique_ptr<Conn> writer)
      : opts_(opts), writer_(std::move(writer)), pool_(opts, pool_size) {}

  template <typename F>
  auto WithRead(F&& f) -> decltype(f(std::declval<Conn&>()));
  // For a read of one statement: its own snapshot is consistent, no transaction needed
  // (one round trip instead of BEGIN, the query and ROLLBACK). Changes become visible
  // in seq order: each writer holds the chain head lock until its commit is visible.
  template <typename F>
  auto WithOneRead(F&& f) -> decltype(f(std::declval<Conn&>()));
  template <typename F>
  auto WithSideWrite(F&& f) -> decltype(f(std::declval<Conn&>()));
  // Loads known_ on the writer connection, in a read-only transaction of its own (outside
  // the chain head lock). On error known_ stays unloaded (every entity may have some).
  void LoadKnown();

  const ConnOptions opts_;
  std::unique_ptr<Conn> writer_;  // used only by the open Txn (and Open)
  KnownEntities known_;           // used only by Begin and the open Txn
  std::atomic<bool> txn_open_{false};
  ReadPool pool_;
  absl::Mutex side_mu_;
  std::unique_ptr<Conn> side_ ABSL_GUARDED_BY(side_mu_);  // keys and purges
};

// A pooled connection the server closed while it was idle (a PostgreSQL restart) fails
// its first statement, and only then knows it is closed: that first statement is tried
// once more on a fresh connection (the bad one is dropped when returned). Only a first
// statement, which changed nothing and handed nothing to a caller's callback.
template <typename F>
auto PgStore::WithRead(F&& f) -> decltype(f(std::declval<Conn&>())) {
  for (int attempt = 0;; ++attempt) {
    QUELL_ASSIGN_OR_RETURN(ReadPool::Lease lease, pool_.Acquire());
    if (absl::Status begin = lease->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        !begin.ok()) {
      if (attempt == 0 && !lease->ok()) {
        pool_.DropIdle();
        continue;
      }
      return begin;
    }
    auto result = f(*lease);
    absl::Status end = lease->Exec("ROLLBACK");  // nothing to keep
    if (!end.ok() && result.ok()) return end;
    return result;
  }
}

template <typename F>
auto PgStore::WithOneRead(F&& f) -> decltype(f(std::declval<Conn&>())) {
  for (int attempt = 0;; ++attempt) {
    QUELL_ASSIGN_OR_RETURN(ReadPool::Lease lease, pool_.Acquire());
    auto result = f(*lease);  // one statement, a read: safe to repeat (see WithRead)
    if (result.ok() || attempt > 0 || lease->ok()) return result;
    pool_.DropIdle();
  }
}

template <typename F>
auto PgStore::WithSideWrite(F&& f) -> decltype(f(std::declval<Conn&>())) {
  absl::MutexLock lock(&side_mu_);
  QUELL_RETURN_IF_ERROR(pg::Reconnect(side_, opts_));
  QUELL_RETURN_IF_ERROR(side_->Exec("BEGIN"));
  auto result = f(*side_);
  absl::Status end = result.ok() ? side_->Exec("COMMIT") : absl::OkStatus();
  if (!result.ok() || !end.ok()) {
    if (side_->InTransaction() && !side_->Exec("ROLLBACK").ok()) side_.reset();
  }
  if (!end.ok()) return end;
  return result;
}

// ---- PgTxn ----

absl::Status PgTxn::ApplyListChange(const ListChange& lc) {
  QUELL_ASSIGN_OR_RETURN(
      Result cur, db_->Query("SELECT protected, kind FROM lists WHERE name = $1", {P(lc.list)}));
  const bool exists = cur.rows() > 0;
  const bool was_protected = exists && cur.Text(0, 0) == "t";
  const std::string old_kind = exists ? std::string(cur.Text(0, 1)) : std::string();
  const bool now_protected = lc.is_protected.value_or(was_protected);
  const std::string& now_kind = lc.kind ? *lc.kind : old_kind;
  if (!exists || now_protected != was_protected || now_kind != old_kind) {
    QUELL_RETURN_IF_ERROR(db_->Query("INSERT INTO lists (name, protected, kind) "
                                     "VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET "
                                     "protected = EXCLUDED.protected, kind = EXCLUDED.kind",
                                     {P(lc.list), P(now_protected ? "t" : "f"), P(now_kind)})
                              .status());
  }
  for (const std::string& e : lc.add) {
    QUELL_RETURN_IF_ERROR(db_->Query("INSERT INTO list_entries (list, entity) VALUES ($1, $2) "
                                     "ON CONFLICT DO NOTHING",
                                     {P(lc.list), P(e)})
                              .status());
  }
  for (const std::string& e : lc.remove) {
    QUELL_RETURN_IF_ERROR(
        db_->Query("DELETE FROM list_entries WHERE list = $1 AND entity = $2", {P(lc.list), P(e)})
            .status());
  }
  return absl::OkStatus();
}

absl::StatusOr<Change> PgTxn::Append(Change change, const core::Mitigation* mitigation) {
  QUELL_RETURN_IF_ERROR(CheckUsable());
  const int64_t seq = head_seq_ + 1;
  if (change.kind == ChangeKind::kMitigation) {
    if (mitigation == nullptr) {
      return absl::InvalidArgumentError("a mitigation change needs its mitigation");
    }
    if (mitigation->seq != seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("mitigation.seq is ", mitigation->seq, " but this change gets seq ", seq));
    }
    if (change.payload.empty()) {
      core::AppendMitigationJson(*mitigation, &change.payload);
    } else if (change.payload != core::MitigationToJson(*mitigation)) {
      return absl::InvalidArgumentError("change payload differs from the mitigation's JSON");
    }
    if (change.subject.empty()) change.subject = mitigation->id;
    if (change.entity.empty()) change.entity = mitigation->entity.str();
    // The known-entities catch-up (and FindLive's readers elsewhere) rely on it.
    if (change.subject != mitigation->id || change.entity != mitigation->entity.str()) {
      return absl::InvalidArgumentError(
          "a mitigation change's subject and entity are its mitigation's id and entity");
    }
  } else if (mitigation != nullptr) {
    return absl::InvalidArgumentError("only mitigation changes carry a mitigation");
  }
  std::optional<ListChange> list;
  std::optional<PolicySetChange> policy_set;
  if (change.kind == ChangeKind::kList) {
    QUELL_ASSIGN_OR_RETURN(list, ParseListChange(change.payload));
    if (change.subject.empty()) change.subject = list->list;
  } else if (change.kind == ChangeKind::kPolicySet) {
    QUELL_ASSIGN_OR_RETURN(policy_set, ParsePolicySetChange(change.payload));
    QUELL_ASSIGN_OR_RETURN(int64_t next, Track(QueryNextPolicyVersion(*db_)));
    if (policy_set->version != next) {
      return absl::InvalidArgumentError(absl::StrCat("policy set version is ", policy_set->version,
                                                     " but the next version is ", next));
    }
    if (change.subject.empty()) change.subject = absl::StrCat(policy_set->version);
  }
  change.seq = seq;
  change.at = now_;
  change.prev_hash = head_hash_;
  change.hash = ChainHash(change);

  // Validation is done: from here only a database failure can stop us, and it leaves the
  // transaction aborted (recoverable by RollbackToSavepoint), so nothing half-written
  // can ever commit.
  QUELL_RETURN_IF_ERROR(Materialize());
  if (mitigation != nullptr) known_->Add(change.entity);  // before it can be read back
  auto write = [&]() -> absl::Status {
    QUELL_RETURN_IF_ERROR(db_->DeferRow(
        kChangeRow, {P(change.seq), PTime(change.at), P(int64_t{static_cast<int>(change.kind)}),
                     P(change.actor), P(change.subject), P(change.entity), P(change.payload),
                     P(change.prev_hash), P(change.hash)}));
    if (mitigation != nullptr) {
      const core::Mitigation& m = *mitigation;
      Param due = PNull();
      if (m.state == core::MitigationState::kActive) {
        due = PTime(m.expires_at);
      } else if (m.state == core::MitigationState::kScheduled) {
        due = PTime(m.starts_at);
      }
      QUELL_RETURN_IF_ERROR(db_->DeferRow(
          kMitigationRow, {P(m.id), P(m.entity.str()), P(m.action), P(core::StateName(m.state)),
                           PTime(m.created_at), due, P(m.source), P(m.policy), P(seq)}));
    } else if (list) {
      QUELL_RETURN_IF_ERROR(ApplyListChange(*list));
    } else if (policy_set) {
      QUELL_RETURN_IF_ERROR(db_->Query("INSERT INTO policy_sets (version, seq, created_at, "
                                       "actor, yaml) VALUES ($1, $2, $3, $4, $5)",
                                       {P(policy_set->version), P(seq), PTime(now_),
                                        P(change.actor), P(policy_set->yaml)})
                                .status());
    }
    return absl::OkStatus();
  };
  QUELL_RETURN_IF_ERROR(Track(write()));
  head_seq_ = seq;
  head_hash_ = change.hash;
  return change;
}

absl::Status PgTxn::Commit() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (aborted_) {
    Rollback();
    return absl::AbortedError("transaction rolled back: a statement in it failed");
  }
  absl::Status st;
  if (head_seq_ != start_seq_) {
    // The new head, and a wake-up for tailers on every node: NOTIFY is delivered at
    // commit, in commit order; its payload (the new last seq) is only a hint. The row
    // exists: Begin locked it. Sent with the writes and the COMMIT: one round trip.
    st = Track(db_->Defer(
        "WITH u AS (UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1 RETURNING seq) "
        "SELECT pg_notify('" QUELL_NOTIFY_CHANNEL "', seq::text) FROM u",
        {P(head_seq_), P(head_hash_)}));
  }
  if (st.ok()) {
    auto r = db_->Query("COMMIT");
    st = r.status();
    // COMMIT of a transaction that failed answers ROLLBACK, not an error.
    if (st.ok() && r->CommandTag() != "COMMIT") {
      st = absl::AbortedError("postgres: the transaction was rolled back at COMMIT");
    }
  }
  if (!st.ok()) {
    Rollback();
    return st;
  }
  if (known_->loaded()) known_->set_seq(head_seq_);  // its own writes were added by Append
  Finish();
  return absl::OkStatus();
}

void PgTxn::Rollback() {
  if (done_) return;
  db_->DropDeferred(0);
  if (db_->ok() && db_->InTransaction()) (void)db_->Exec("ROLLBACK");
  Finish();
}

void PgTxn::Finish() {
  done_ = true;
  store_->TxnFinished();
}

// ---- PgStore ----

absl::StatusOr<int> CurrentVersion(Conn& db) {
  QUELL_ASSIGN_OR_RETURN(Result r,
                         db.Query("SELECT COALESCE(MAX(version), 0) FROM schema_version"));
  return r.rows() ? static_cast<int>(r.Int(0, 0)) : 0;
}

absl::Status ApplyMigrations(Conn& db, bool apply, bool create) {
  const int latest = kMigrations[std::size(kMigrations) - 1].version;
  auto steps = [&]() -> absl::Status {
    if (!create) {
      QUELL_ASSIGN_OR_RETURN(Result r,
                             db.Query("SELECT to_regclass('schema_version') IS NOT NULL"));
      // And a version in it: a generic name (other tools use it), and a first start that
      // failed leaves it empty.
      bool versioned = r.rows() == 1 && r.Text(0, 0) == "t";
      if (versioned) {
        auto v = db.Query("SELECT count(*) FROM schema_version WHERE version >= 1");
        if (absl::IsUnavailable(v.status())) return v.status();  // the server, not the table
        versioned = v.ok() && v->rows() == 1 && v->Int(0, 0) > 0;
      }
      if (!versioned) {
        return absl::NotFoundError(
            "no Quell ledger in this database (no schema_version table with a version): "
            "check --postgres (`quell migrate` or a first `quell serve` creates one)");
      }
    }
    QUELL_RETURN_IF_ERROR(
        db.Exec("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "applied_at bigint NOT NULL)"));
    QUELL_ASSIGN_OR_RETURN(int current, CurrentVersion(db));
    if (current > latest) {
      return absl::FailedPreconditionError(
          absl::StrCat("ledger database has schema version ", current,
                       " but this binary knows only up to ", latest, ": upgrade quell"));
    }
    if (current < latest && !apply) {
      return absl::FailedPreconditionError(absl::StrCat("ledger database has schema version ",
                                                        current, ", this binary needs ", latest,
                                                        ": run `quell migrate`"));
    }
    for (const Migration& m : kMigrations) {
      if (m.version <= current) continue;
      QUELL_RETURN_IF_ERROR(db.Exec("BEGIN"));
      absl::Status st = db.Exec(m.sql);
      if (st.ok()) {
        st = db.Query("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                      {P(int64_t{m.version}), PTime(absl::Now())})
                 .status();
      }
      if (st.ok()) st = db.Exec("COMMIT");
      if (!st.ok()) {
        (void)db.Exec("ROLLBACK");
        return absl::Status(st.code(),
                            absl::StrCat("schema migration ", m.version, ": ", st.message()));
      }
      current = m.version;
    }
    return absl::OkStatus();
  };
  // Session advisory lock: nodes starting together migrate one after the other.
  QUELL_RETURN_IF_ERROR(db.Exec(absl::StrCat("SELECT pg_advisory_lock(", kMigrationLockKey, ")")));
  absl::Status st = steps();
  absl::Status unlock = db.Exec(absl::StrCat("SELECT pg_advisory_unlock(", kMigrationLockKey, ")"));
  if (st.ok()) st = unlock;
  return st;
}

absl::StatusOr<std::unique_ptr<PgStore>> PgStore::Open(const PostgresOptions& options) {
  if (options.url.empty()) return absl::InvalidArgumentError("postgres store: empty URL");
  ConnOptions opts{.url = options.url,
                   .connect_timeout_s = options.connect_timeout_s,
                   .statement_timeout_ms = options.statement_timeout_ms,
                   .lock_timeout_ms = options.lock_timeout_ms};
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Conn> writer, Conn::Open(opts));
  QUELL_RETURN_IF_ERROR(ApplyMigrations(*writer, options.apply_migrations, options.create_schema));
  return std::unique_ptr<PgStore>(new PgStore(opts, options.read_pool_size, std::move(writer)));
}

absl::StatusOr<std::unique_ptr<Txn>> PgStore::Begin(absl::Time now) {
  if (txn_open_.exchange(true)) {
    return absl::FailedPreconditionError("a write transaction is already open");
  }
  auto start = [&]() -> absl::StatusOr<std::unique_ptr<Txn>> {
    QUELL_RETURN_IF_ERROR(pg::Reconnect(writer_, opts_));
    // Writes a failed batch left queued are dropped, not sent only to be rolled back.
    writer_->DropDeferred(0);
    if (writer_->InTransaction()) QUELL_RETURN_IF_ERROR(writer_->Exec("ROLLBACK"));
    if (!known_.loaded() && !known_.disabled()) LoadKnown();
    QUELL_RETURN_IF_ERROR(writer_->Defer("BEGIN"));  // sent with the head's SELECT
    // The head row lock serialises writers of every node; it is held until COMMIT, so the
    // next writer reads the head this one committed (READ COMMITTED re-reads the locked
    // row's newest version), and seqs become visible in order. The catch-up of known_
    // runs after the lock is granted (its own snapshot): every change up to the head is
    // committed and visible to it.
    std::vector<Conn::Statement> stmts;
    stmts.push_back({"SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE", {}});
    const bool catch_up = known_.loaded();
    if (catch_up) {
      // Bounded on both sides: a prepared statement's generic plan for an open range
      // (planned while the table was small) is a sequential scan of every change.
      stmts.push_back(
          {"SELECT entity FROM changes WHERE seq > $1 AND kind = $2 AND "
           "seq <= LEAST((SELECT seq FROM chain_head WHERE id = 1), $1 + $3)",
           {P(known_.seq()), P(int64_t{static_cast<int>(ChangeKind::kMitigation)}),
            P(KnownEntities::kMaxCatchUp)}});
    }
    auto r = writer_->QueryAll(stmts);
    if (!r.ok() && !writer_->ok()) {
      // Closed by the server while idle (a restart): only this first exchange knows.
      // It wrote nothing; once more on a fresh connection.
      writer_->DropDeferred(0);
      QUELL_RETURN_IF_ERROR(pg::Reconnect(writer_, opts_));
      QUELL_RETURN_IF_ERROR(writer_->Defer("BEGIN"));
      r = writer_->QueryAll(std::move(stmts));
    }
    absl::Status st = r.status();
    if (st.ok() && (*r)[0].rows() != 1) st = absl::DataLossError("chain_head row is missing");
    if (!st.ok()) {
      writer_->DropDeferred(0);
      if (writer_->ok() && writer_->InTransaction()) (void)writer_->Exec("ROLLBACK");
      return st;
    }
    const Result& head = (*r)[0];
    int64_t seq = head.Int(0, 0);
    std::string hash(head.Text(0, 1));
    if (seq == 0) hash = std::string(kGenesisHash);
    if (catch_up) {
      const Result& added = (*r)[1];
      if (seq < known_.seq() || seq - known_.seq() > KnownEntities::kMaxCatchUp) {
        known_.Reset();  // another database, or far behind: reload outside the lock
      } else {
        for (int i = 0; i < added.rows(); ++i) known_.Add(added.Text(i, 0));
        if (known_.loaded()) known_.set_seq(seq);
      }
    }
    absl::Time at = core::ToStoredPrecision(now);
    return std::unique_ptr<Txn>(new PgTxn(this, writer_.get(), &known_, at, seq, std::move(hash)));
  };
  auto txn = start();
  if (!txn.ok()) txn_open_.store(false);
  return txn;
}

void PgStore::LoadKnown() {
  Conn& db = *writer_;
  if (!db.Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").ok()) return;
  auto load = [&]() -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(Result head, db.Query("SELECT seq FROM chain_head WHERE id = 1"));
    if (head.rows() != 1) return absl::DataLossError("chain_head row is missing");
    QUELL_RETURN_IF_ERROR(
        db.Stream("SELECT entity FROM mitigations", {}, [&](const Result& row) -> absl::Status {
          known_.Add(row.Text(0, 0));
          if (known_.disabled()) {
            return absl::ResourceExhaustedError("too many");
          }
          return absl::OkStatus();
        }));
    known_.set_seq(head.Int(0, 0));  // same snapshot as the rows
    return absl::OkStatus();
  };
  if (!load().ok()) known_.Reset();
  if (db.ok() && db.InTransaction()) (void)db.Exec("ROLLBACK");
}

absl::StatusOr<MitigationPage> PgStore::ListMitigations(const MitigationQuery& q) {
  QUELL_RETURN_IF_ERROR(CheckLimit(q.limit));
  std::string sql = QUELL_SELECT_MITIGATION " WHERE TRUE";
  std::vector<Param> params;
  auto add = [&](std::string_view cond, Param p) {
    params.push_back(std::move(p));
    absl::StrAppend(&sql, " AND ", AV(cond), " $", params.size());
  };
  if (q.entity) add("m.entity =", P(q.entity->str()));
  if (q.state) add("m.state =", P(core::StateName(*q.state)));
  if (!q.action.empty()) add("m.action =", P(q.action));
  if (!q.policy.empty()) add("m.policy =", P(q.policy));
  if (!q.source.empty()) add("m.source =", P(q.source));
  if (!q.cursor.empty()) add("m.id <", P(q.cursor));
  params.push_back(P(int64_t{q.limit + 1}));
  absl::StrAppend(&sql, " ORDER BY m.id DESC LIMIT $", params.size());
  return WithOneRead([&](Conn& db) -> absl::StatusOr<MitigationPage> {
    QUELL_ASSIGN_OR_RETURN(Result r, db.Query(sql, params));
    QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> rows, CollectMitigations(r));
    MitigationPage page;
    if (static_cast<int>(rows.size()) > q.limit) {
      rows.resize(q.limit);
      page.next_cursor = rows.back().id;
    }
    page.mitigations = std::move(rows);
    return page;
  });
}

absl::StatusOr<int64_t> PgStore::PurgeDetections(absl::Time received_before) {
  // Detections are stored in commit order (ord; writers hold the chain head lock), so the
  // ones to delete are a prefix in ord order; delete it in small transactions. With no
  // recent row the prefix ends after the last row of that read, not at "every ord": rows
  // committed while the chunks run are not in it (as in the SQLite store).
  QUELL_ASSIGN_OR_RETURN(
      int64_t end, WithOneRead([&](Conn& db) -> absl::StatusOr<int64_t> {
        QUELL_ASSIGN_OR_RETURN(
            Result r, db.Query("SELECT COALESCE((SELECT ord FROM detections WHERE received_at >= "
                               "$1 ORDER BY ord LIMIT 1), (SELECT COALESCE(MAX(ord), 0) + 1 FROM "
                               "detections))",
                               {PTime(received_before)}));
        if (!r.rows()) return absl::InternalError("no purge bound row");
        return r.Int(0, 0);
      }));
  constexpr int64_t kChunk = 10000;
  int64_t total = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(int64_t n, WithSideWrite([&](Conn& db) -> absl::StatusOr<int64_t> {
                             QUELL_ASSIGN_OR_RETURN(
                                 Result r,
                                 db.Query("DELETE FROM detections WHERE ord IN (SELECT ord FROM "
                                          "detections WHERE ord < $1 AND received_at < $3 "
                                          "ORDER BY ord LIMIT $2)",
                                          {P(end), P(kChunk), PTime(received_before)}));
                             return r.Affected();
                           }));
    total += n;
    if (n < kChunk) return total;
  }
}

absl::Status BumpKeysVersion(Conn& db) {
  QUELL_ASSIGN_OR_RETURN(Result r,
                         db.Query("UPDATE meta SET value = value + 1 WHERE key = 'keys_version'"));
  if (r.Affected() != 1) return absl::DataLossError("meta row keys_version is missing");
  return absl::OkStatus();
}

absl::Status PgStore::CreateKey(const ApiKey& key) {
  if (key.id.empty() || key.secret_hash.empty() || key.role.empty()) {
    return absl::InvalidArgumentError("api key needs id, secret_hash and role");
  }
  absl::StatusOr<bool> r = WithSideWrite([&](Conn& db) -> absl::StatusOr<bool> {
    QUELL_ASSIGN_OR_RETURN(
        Result res,
        db.Query(
            "INSERT INTO api_keys (id, secret_hash, role, sources, name, created_at, "
            "revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            {P(key.id), P(key.secret_hash), P(key.role), P(SourcesToJson(key.sources)), P(key.name),
             PTime(key.created_at), key.revoked_at ? PTime(*key.revoked_at) : PNull()}));
    if (res.Affected() == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("api key ", key.id, " or its secret is already stored"));
    }
    QUELL_RETURN_IF_ERROR(BumpKeysVersion(db));
    return true;
  });
  return r.status();
}

absl::StatusOr<std::vector<ApiKey>> PgStore::ListKeys() {
  return WithOneRead([&](Conn& db) -> absl::StatusOr<std::vector<ApiKey>> {
    QUELL_ASSIGN_OR_RETURN(Result r,
                           db.Query("SELECT id, secret_hash, role, sources, name, created_at, "
                                    "revoked_at FROM api_keys ORDER BY created_at, id"));
    std::vector<ApiKey> out;
    for (int i = 0; i < r.rows(); ++i) {
      ApiKey k;
      k.id = r.Text(i, 0);
      k.secret_hash = r.Text(i, 1);
      k.role = r.Text(i, 2);
      QUELL_ASSIGN_OR_RETURN(k.sources, SourcesFromJson(r.Text(i, 3)));
      k.name = r.Text(i, 4);
      k.created_at = r.Time(i, 5);
      if (!r.IsNull(i, 6)) k.revoked_at = r.Time(i, 6);
      out.push_back(std::move(k));
    }
    return out;
  });
}

absl::Status PgStore::RevokeKey(std::string_view id, absl::Time at, bool keep_last_admin) {
  absl::StatusOr<bool> r = WithSideWrite([&](Conn& db) -> absl::StatusOr<bool> {
    if (keep_last_admin) {
      // Lock every active admin row first: two revokes at once (two nodes) queue here,
      // and the second, re-reading after the first commits, counts one admin fewer.
      QUELL_RETURN_IF_ERROR(db.Query("SELECT id FROM api_keys WHERE role = 'admin' AND "
                                     "revoked_at IS NULL ORDER BY id FOR UPDATE")
                                .status());
    }
    QUELL_ASSIGN_OR_RETURN(Result cur,
                           db.Query("SELECT revoked_at IS NOT NULL, role = 'admin' FROM api_keys "
                                    "WHERE id = $1 FOR UPDATE",
                                    {P(id)}));
    if (cur.rows() == 0) return absl::NotFoundError(absl::StrCat("no api key ", AV(id)));
    if (cur.Text(0, 0) == "t") return true;  // revoking twice is fine and changes nothing
    if (keep_last_admin && cur.Text(0, 1) == "t") {
      QUELL_ASSIGN_OR_RETURN(Result n, db.Query("SELECT COUNT(*) FROM api_keys WHERE role = "
                                                "'admin' AND revoked_at IS NULL"));
      if (n.Int(0, 0) <= 1) {
        return absl::FailedPreconditionError(
            "this is the last active admin key: create another admin key before revoking it");
      }
    }
    QUELL_RETURN_IF_ERROR(
        db.Query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1", {P(id), PTime(at)}).status());
    QUELL_RETURN_IF_ERROR(BumpKeysVersion(db));
    return true;
  });
  return r.status();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const PostgresOptions& options) {
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<PgStore> store, PgStore::Open(options));
  return std::unique_ptr<Store>(std::move(store));
}

int PostgresSchemaVersion() { return kMigrations[std::size(kMigrations) - 1].version; }

}  // namespace quell::ledger
