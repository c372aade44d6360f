#include "ledger/sqlite/internal/schema.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace quell::ledger::sqlite_internal {
namespace {

// Times are int64 microseconds since the Unix epoch; states and kinds are stored as in the
// API (state names) and as ChangeKind numbers. Keep the column set close to what the
// PostgreSQL backend will use (bigint, text, jsonb).
constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE changes (
  seq       INTEGER PRIMARY KEY,
  at        INTEGER NOT NULL,
  kind      INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  subject   TEXT NOT NULL,
  entity    TEXT NOT NULL,
  payload   TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash      TEXT NOT NULL
);
CREATE INDEX changes_entity_seq ON changes (entity, seq);

CREATE TABLE mitigations (
  id         TEXT PRIMARY KEY,
  entity     TEXT NOT NULL,
  action     TEXT NOT NULL,
  state      TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  starts_at  INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  source     TEXT NOT NULL,
  policy     TEXT NOT NULL,
  batch      TEXT NOT NULL,
  seq        INTEGER NOT NULL,
  json       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX mitigations_entity ON mitigations (entity, id);
CREATE INDEX mitigations_state_expires ON mitigations (state, expires_at);
CREATE INDEX mitigations_state_starts ON mitigations (state, starts_at);
CREATE INDEX mitigations_policy ON mitigations (policy, id);
CREATE INDEX mitigations_source ON mitigations (source, id);

CREATE TABLE idempotency (
  scope        TEXT NOT NULL,
  key          TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  status       INTEGER NOT NULL,
  response     TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency (created_at);

CREATE TABLE api_keys (
  id          TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL UNIQUE,
  role        TEXT NOT NULL,
  sources     TEXT NOT NULL,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  revoked_at  INTEGER
);

CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('keys_version', 0);
)sql"},
    // The mitigations view keeps only the columns its queries filter on; the record itself
    // is the payload of its latest change (joined by seq), so it is written once, not
    // twice. due_at is the next transition time of a live mitigation (starts_at when
    // scheduled, expires_at when active, NULL otherwise), one partial index instead of
    // two per-state ones. Five secondary indexes become two: fewer B-trees per write.
    {2, R"sql(
CREATE TABLE mitigations_v2 (
  id         TEXT PRIMARY KEY,
  entity     TEXT NOT NULL,
  action     TEXT NOT NULL,
  state      TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  due_at     INTEGER,
  source     TEXT NOT NULL,
  policy     TEXT NOT NULL,
  seq        INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO mitigations_v2 (id, entity, action, state, created_at, due_at, source, policy, seq)
  SELECT id, entity, action, state, created_at,
         CASE state WHEN 'active' THEN expires_at WHEN 'scheduled' THEN starts_at END,
         source, policy, seq
  FROM mitigations;
DROP TABLE mitigations;
ALTER TABLE mitigations_v2 RENAME TO mitigations;
CREATE INDEX mitigations_entity ON mitigations (entity, created_at);
CREATE INDEX mitigations_due ON mitigations (due_at) WHERE due_at IS NOT NULL;
)sql"},
    // Issue 3: detections (inputs, not changes), policy set versions and lists (both
    // materialised from their changes). Detections are stored in commit order; the
    // (source, id) key makes them idempotent and observed_at serves backtests.
    {3, R"sql(
CREATE TABLE detections (
  source      TEXT NOT NULL,
  id          TEXT NOT NULL,
  type        TEXT NOT NULL,
  entity      TEXT NOT NULL,
  score       REAL NOT NULL,
  observed_at INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  batch       TEXT NOT NULL,
  json        TEXT NOT NULL,
  reply       TEXT NOT NULL
);
CREATE UNIQUE INDEX detections_key ON detections (source, id);
CREATE INDEX detections_observed ON detections (observed_at);

CREATE TABLE policy_sets (
  version    INTEGER PRIMARY KEY,
  seq        INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  actor      TEXT NOT NULL,
  yaml       TEXT NOT NULL
);

CREATE TABLE lists (
  name      TEXT PRIMARY KEY,
  protected INTEGER NOT NULL,
  kind      TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE list_entries (
  list   TEXT NOT NULL,
  entity TEXT NOT NULL,
  PRIMARY KEY (list, entity)
) WITHOUT ROWID;
)sql"},
    // Mitigations are found by entity through the changes' (entity, seq) index (every
    // mitigation change carries its mitigation's id and entity), so the mitigations view
    // drops its own entity index: each write touches one random B-tree page less, and
    // group commits write and fsync fewer WAL pages.
    {4, R"sql(
DROP INDEX mitigations_entity;
)sql"},
    // Detections are written compactly from here on: a reply without decisions as '', a
    // JSON that starts with the head of its own columns without that head, as a BLOB
    // (sqlite_store.cc, "Most detections earn no decision"). Rows written before are read
    // as they are. No table changes: the version only stops an older binary, which
    // would read those rows as they are stored, from opening the file.
    {5, R"sql(
SELECT 1;
)sql"},
};

}  // namespace

std::span<const Migration> Migrations() { return kMigrations; }

absl::StatusOr<int> CurrentVersion(Db& db) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s,
                         db.Prepare("SELECT COALESCE(MAX(version), 0) FROM schema_version"));
  StmtUse use(s);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  return row ? static_cast<int>(use->ColumnInt(0)) : 0;
}

absl::StatusOr<int> ApplyMigrations(Db& db, bool apply, absl::Time now) {
  QUELL_RETURN_IF_ERROR(
      db.Exec("CREATE TABLE IF NOT EXISTS schema_version ("
              "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"));
  const int latest = Migrations().back().version;
  QUELL_ASSIGN_OR_RETURN(int current, CurrentVersion(db));
  if (current > latest) {
    return absl::FailedPreconditionError(absl::StrCat("ledger database has schema version ",
                                                      current, " but this binary knows only up to ",
                                                      latest, ": upgrade quell"));
  }
  if (current < latest && !apply) {
    return absl::FailedPreconditionError(absl::StrCat("ledger database has schema version ",
                                                      current, ", this binary needs ", latest,
                                                      ": run `quell migrate`"));
  }
  for (const Migration& m : Migrations()) {
    if (m.version <= current) continue;
    QUELL_RETURN_IF_ERROR(db.Exec("BEGIN IMMEDIATE"));
    // Another process may have migrated between our read and our lock: re-read inside it.
    auto step = [&]() -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(int now_version, CurrentVersion(db));
      if (now_version >= m.version) return absl::OkStatus();
      QUELL_RETURN_IF_ERROR(db.Exec(m.sql));
      QUELL_ASSIGN_OR_RETURN(Stmt * s,
                             db.Prepare("INSERT INTO schema_version (version, applied_at) "
                                        "VALUES (?1, ?2)"));
      StmtUse use(s);
      use->BindInt(1, m.version);
      use->BindTime(2, now);
      return use->Run();
    };
    absl::Status st = step();
    if (st.ok()) st = db.Exec("COMMIT");
    if (!st.ok()) {
      (void)db.Exec("ROLLBACK");  // the step's error is what the caller needs to see
      return absl::Status(st.code(),
                          absl::StrCat("schema migration ", m.version, ": ", st.message()));
    }
    current = m.version;
  }
  return current;
}

}  // namespace quell::ledger::sqlite_internal
