#include "ledger/sqlite/sqlite_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/entity_list.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "core/time.h"
#include "ledger/internal/entity_prefetch.h"
#include "ledger/internal/known_entities.h"
#include "ledger/internal/payloads.h"
#include "ledger/sqlite/internal/db.h"
#include "ledger/sqlite/internal/entity_cache.h"
#include "ledger/sqlite/internal/schema.h"
#include "rapidjson/document.h"

namespace quell::ledger {
namespace {

using internal::EntityPrefetch;
using internal::KnownEntities;
using internal::ListChange;
using internal::ParseListChange;
using internal::ParsePolicySetChange;
using internal::PolicySetChange;
using internal::SourcesFromJson;
using internal::SourcesToJson;
using sqlite_internal::Db;
using sqlite_internal::DbOptions;
using sqlite_internal::EntityCache;
using sqlite_internal::Stmt;
using sqlite_internal::StmtUse;

constexpr int kMaxLimit = 10000;

#define QUELL_LIVE_STATES "('pending_approval','scheduled','active')"
#define QUELL_CHANGE_COLUMNS "seq, at, kind, actor, subject, entity, payload, prev_hash, hash"
// A mitigation row holds the columns queries filter on; the record is the payload of the
// change that last wrote it. CROSS JOIN keeps mitigations as the outer loop.
#define QUELL_SELECT_MITIGATION \
  "SELECT c.payload FROM mitigations m CROSS JOIN changes c ON c.seq = m.seq"
// The mitigations of entity ?1, through the changes' (entity, seq) index: the mitigations
// table has no entity index (schema v4), one random B-tree page less per write. Each
// mitigation's latest change (m.seq) carries its entity, so joining on it yields every
// mitigation of the entity once, and that change's payload is the record. A plain join,
// not `id IN (subquery)`: the subquery's ephemeral table cost more than the query.
#define QUELL_SELECT_MITIGATION_OF_ENTITY                                         \
  "SELECT e.payload FROM changes e CROSS JOIN mitigations m ON m.id = e.subject " \
  "WHERE e.entity = ?1 AND e.kind = 1 AND m.seq = e.seq"

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

// Fills and checks a kMitigation change for `m` before it gets `seq`: the payload is what
// mitigation reads return, so it must be m's JSON; subject and entity default to m's and
// must be m's (entity reads of mitigations go through the changes' entity index).
absl::Status CompleteMitigationChange(Change& change, const core::Mitigation& m, int64_t seq) {
  if (m.seq != seq) {
    return absl::InvalidArgumentError(
        absl::StrCat("mitigation.seq is ", m.seq, " but this change gets seq ", seq));
  }
  if (change.payload.empty()) {
    core::AppendMitigationJson(m, &change.payload);
  } else if (change.payload != core::MitigationToJson(m)) {
    return absl::InvalidArgumentError("change payload differs from the mitigation's JSON");
  }
  if (change.subject.empty()) change.subject = m.id;
  if (change.entity.empty()) change.entity = m.entity.str();
  if (change.subject != m.id || change.entity != m.entity.str()) {
    return absl::InvalidArgumentError(
        "a mitigation change's subject and entity are its mitigation's id and entity");
  }
  return absl::OkStatus();
}

// The mitigations view's due_at: the next transition of a live mitigation (starts_at when
// scheduled, expires_at when active), NULL otherwise.
void BindDueAt(Stmt& s, int index, const core::Mitigation& m) {
  if (m.state == core::MitigationState::kActive) {
    s.BindTime(index, m.expires_at);
  } else if (m.state == core::MitigationState::kScheduled) {
    s.BindTime(index, m.starts_at);
  } else {
    s.BindNull(index);
  }
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

// Runs `stmt` (already bound, selecting QUELL_CHANGE_COLUMNS) and reads every row.
absl::StatusOr<std::vector<Change>> CollectChanges(Stmt& s) {
  std::vector<Change> out;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back(ReadChangeRow(s));
  }
  return out;
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
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(QUELL_SELECT_MITIGATION " WHERE m.id = ?1"));
  StmtUse use(s);
  use->BindTextStatic(1, id);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::optional<core::Mitigation>();
  QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(use->ColumnText(0)));
  return std::optional<core::Mitigation>(std::move(m));
}

absl::StatusOr<std::vector<core::Mitigation>> QueryLive(Db& db, const core::Entity& entity,
                                                        std::string_view action) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(QUELL_SELECT_MITIGATION_OF_ENTITY
                                              " AND m.action = ?2 AND m.state IN " QUELL_LIVE_STATES
                                              " ORDER BY m.id"));
  StmtUse use(s);
  use->BindTextStatic(1, entity.str());
  use->BindTextStatic(2, action);
  return CollectMitigations(*use);
}

absl::StatusOr<std::vector<core::Mitigation>> QueryEntityMitigations(Db& db,
                                                                     const core::Entity& entity,
                                                                     absl::Time since) {
  QUELL_ASSIGN_OR_RETURN(
      Stmt * s, db.Prepare(QUELL_SELECT_MITIGATION_OF_ENTITY
                           " AND (m.created_at >= ?2 OR m.state IN " QUELL_LIVE_STATES ")"));
  StmtUse use(s);
  use->BindTextStatic(1, entity.str());
  use->BindTime(2, since);
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

#define QUELL_DETECTION_COLUMNS \
  "source, id, type, entity, score, observed_at, received_at, batch, json, reply"

// Most detections earn no decision, and their reply is NoDecisionReply(source, id): the
// reply column holds '' for it (a reply is never empty) and readers rebuild it, ~75 bytes
// less in every such row, its page and its WAL frame.
std::string_view ReplyToStore(const StoredDetection& d) {
  constexpr std::string_view kNoDecisions = "\"decisions\":[]}";
  if (!std::string_view(d.reply).ends_with(kNoDecisions)) return d.reply;  // the quick no
  thread_local std::string no_decision;
  no_decision.clear();
  AppendNoDecisionReply(d.source, d.id, &no_decision);
  return d.reply == no_decision ? std::string_view() : std::string_view(d.reply);
}
std::string StoredReply(std::string_view column, std::string_view source, std::string_view id) {
  return column.empty() ? NoDecisionReply(source, id) : std::string(column);
}

// Likewise a detection's JSON almost always starts with the head of its own columns
// (AppendDetectionJsonHead): the json column then holds only the rest, as a BLOB, and
// readers put the head back; a JSON without that head is stored whole, as TEXT. The
// storage class tells them apart whatever the text. ~100-150 bytes less per row.
void BindJson(Stmt& s, int i, const StoredDetection& d) {
  thread_local std::string head;
  if (d.json_head_bytes > 0 && d.json_head_bytes < d.json.size()) {  // the writer knows
#ifndef NDEBUG
    head.clear();
    AppendDetectionJsonHead(d.id, d.source, d.type, d.entity, d.score, d.observed_at, &head);
    QUELL_CHECK(std::string_view(d.json).substr(0, d.json_head_bytes) == head);
#endif
    s.BindBlobStatic(i, std::string_view(d.json).substr(d.json_head_bytes));
    return;
  }
  head.clear();
  AppendDetectionJsonHead(d.id, d.source, d.type, d.entity, d.score, d.observed_at, &head);
  const std::string_view json = d.json;
  if (json.size() > head.size() && json.substr(0, head.size()) == head) {
    s.BindBlobStatic(i, json.substr(head.size()));
  } else {
    s.BindTextStatic(i, json);
  }
}

// Binds the ten columns of `d` (QUELL_DETECTION_COLUMNS order) from parameter base + 1.
void BindDetection(Stmt& s, int base, const StoredDetection& d) {
  s.BindTextStatic(base + 1, d.source);
  s.BindTextStatic(base + 2, d.id);
  s.BindTextStatic(base + 3, d.type);
  s.BindTextStatic(base + 4, d.entity);
  s.BindDouble(base + 5, d.score);
  s.BindTime(base + 6, d.observed_at);
  s.BindTime(base + 7, d.received_at);
  s.BindTextStatic(base + 8, d.batch);
  BindJson(s, base + 9, d);
  s.BindTextStatic(base + 10, ReplyToStore(d));
}

// Assigns into `d`, reusing its strings' capacity (ScanDetections streams into one).
void ReadDetectionRow(const Stmt& s, StoredDetection* d) {
  d->source.assign(s.ColumnText(0));
  d->id.assign(s.ColumnText(1));
  d->type.assign(s.ColumnText(2));
  d->entity.assign(s.ColumnText(3));
  d->score = s.ColumnDouble(4);
  d->observed_at = s.ColumnTime(5);
  d->received_at = s.ColumnTime(6);
  d->batch.assign(s.ColumnText(7));
  if (s.ColumnIsBlob(8)) {
    d->json.clear();
    AppendDetectionJsonHead(d->id, d->source, d->type, d->entity, d->score, d->observed_at,
                            &d->json);
    d->json.append(s.ColumnText(8));
  } else {
    d->json.assign(s.ColumnText(8));
  }
  if (const std::string_view reply = s.ColumnText(9); reply.empty()) {
    d->reply.clear();
    AppendNoDecisionReply(d->source, d->id, &d->reply);
  } else {
    d->reply.assign(reply);
  }
}

absl::StatusOr<std::optional<StoredDetection>> QueryDetection(Db& db, std::string_view source,
                                                              std::string_view id) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_DETECTION_COLUMNS
                                              " FROM detections WHERE source = ?1 AND id = ?2"));
  StmtUse use(s);
  use->BindTextStatic(1, source);
  use->BindTextStatic(2, id);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::optional<StoredDetection>();
  StoredDetection d;
  ReadDetectionRow(*use, &d);
  return std::optional<StoredDetection>(std::move(d));
}

absl::StatusOr<int64_t> QueryCountMitigations(Db& db, const core::Entity& entity,
                                              std::string_view policy, std::string_view action,
                                              absl::Time since, bool exclude_shadow) {
  // The entity's mitigation changes bound the rows; the rest filters them.
  QUELL_ASSIGN_OR_RETURN(Stmt * s,
                         db.Prepare("SELECT COUNT(*) FROM changes e CROSS JOIN mitigations m "
                                    "ON m.id = e.subject WHERE e.entity = ?1 AND e.kind = 1 AND "
                                    "m.seq = e.seq AND m.created_at >= ?2 AND "
                                    "(?3 = '' OR m.policy = ?3) AND (?4 = '' OR m.action = ?4) AND "
                                    "(?5 = 0 OR m.state <> 'shadow') AND "
                                    "m.state NOT IN ('revoked', 'rejected', 'suppressed') AND "
                                    "(m.state <> 'expired' OR "
                                    "(json_extract(e.payload, '$.state_reason') NOT LIKE ?6 "
                                    "AND json_extract(e.payload, '$.state_reason') "
                                    "NOT IN (?7, ?8)))"));
  StmtUse use(s);
  use->BindTextStatic(1, entity.str());
  use->BindTime(2, since);
  use->BindTextStatic(3, policy);
  use->BindTextStatic(4, action);
  use->BindInt(5, exclude_shadow ? 1 : 0);
  use->BindTextStatic(6, internal::ExpiredUnapprovedPattern());  // core::ExpiredUnenforced
  use->BindTextStatic(7, core::kStartAfterExpiryReason);
  use->BindTextStatic(8, core::kStartAfterExpiryReasonBefore);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  return row ? use->ColumnInt(0) : 0;
}

absl::StatusOr<int64_t> QueryNextPolicyVersion(Db& db) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s,
                         db.Prepare("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_sets"));
  StmtUse use(s);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  return row ? use->ColumnInt(0) : 1;
}

// Lists are rows keyed by (list, entity): an entity is looked up as itself and, for an ip:
// or cidr: on a list that holds any network (one probe of the "cidr:" key range), as each
// network that could contain it — a point query per prefix length (33 for IPv4, 129 for
// IPv6) on one cached statement, in process (about a microsecond each). A table of the
// prefix lengths each list uses would cut the probes to the lengths in use, for a schema
// change and a second write per network entry; not worth it at these costs.
absl::StatusOr<bool> QueryListHas(Db& db, std::string_view list, const core::Entity& entity) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s,
                         db.Prepare("SELECT 1 FROM list_entries WHERE list = ?1 AND entity = ?2"));
  auto holds = [&](std::string_view key) -> absl::StatusOr<bool> {
    StmtUse use(s);
    use->BindTextStatic(1, list);
    use->BindTextStatic(2, key);
    return use->Step();
  };
  QUELL_ASSIGN_OR_RETURN(bool held, holds(entity.str()));
  if (held || (!entity.is_ip() && !entity.is_cidr())) return held;
  {
    QUELL_ASSIGN_OR_RETURN(Stmt * any,
                           db.Prepare("SELECT 1 FROM list_entries WHERE list = ?1 AND "
                                      "entity >= 'cidr:' AND entity < 'cidr;' LIMIT 1"));
    StmtUse use(any);
    use->BindTextStatic(1, list);
    QUELL_ASSIGN_OR_RETURN(bool networks, use->Step());
    if (!networks) return false;
  }
  for (const std::string& key : core::CoveringCidrEntries(entity)) {
    QUELL_ASSIGN_OR_RETURN(held, holds(key));
    if (held) return true;
  }
  return false;
}

absl::StatusOr<std::optional<PolicySetVersion>> QueryPolicySet(Db& db, std::string_view sql,
                                                               int64_t version) {
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare(sql));
  StmtUse use(s);
  use->BindInt(1, version);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return std::optional<PolicySetVersion>();
  PolicySetVersion p;
  p.version = use->ColumnInt(0);
  p.seq = use->ColumnInt(1);
  p.yaml = use->ColumnText(2);
  p.created_at = use->ColumnTime(3);
  p.actor = use->ColumnText(4);
  return std::optional<PolicySetVersion>(std::move(p));
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

// The WAL's fsync for synchronous FULL, done by the store instead of inside SQLite's
// COMMIT: the write connection runs at synchronous=NORMAL (a commit writes its WAL frames
// and returns; SQLite still syncs the WAL header when it starts the WAL over, and
// checkpoints sync the WAL before and the database after copying) and Sync() fdatasyncs
// the WAL file, covering every frame written before it was called. So the ledger can run
// the next transaction while this fsync is in flight (Txn::CommitVisible,
// Store::SyncCommitted). The WAL is opened once, when the store opens: it is the same
// file for as long as the write connection is open (SQLite deletes it only when the last
// connection closes). A failed fsync is final: Linux reports a writeback error once and
// may drop the pages, so every later Sync() fails too (and the store refuses new
// transactions) until the process restarts and SQLite recovers the WAL.
// Thread-safety: thread-safe (one mutex).
class WalSyncer {
 public:
  static absl::StatusOr<std::unique_ptr<WalSyncer>> Open(std::string path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
    }
    return std::unique_ptr<WalSyncer>(new WalSyncer(std::move(path), fd));
  }
  ~WalSyncer() { ::close(fd_); }
  WalSyncer(const WalSyncer&) = delete;
  WalSyncer& operator=(const WalSyncer&) = delete;

  // The fdatasync runs outside the mutex: Begin (failed()) must not wait for it.
  absl::Status Sync() {
    if (failing_.load(std::memory_order_acquire)) return failed();
    const int rc = ::fdatasync(fd_);
    const int err = errno;
    absl::MutexLock lock(&mu_);
    if (rc != 0 && failed_.ok()) {
      failed_ = absl::DataLossError(absl::StrCat("fdatasync ", path_, ": ", std::strerror(err),
                                                 " (commits since the last sync may not be "
                                                 "durable; restart quell once the disk is fixed)"));
      failing_.store(true, std::memory_order_release);
    }
    // A concurrent sync's failure may have taken the error this one would have seen.
    if (!failed_.ok()) return failed_;
    ++syncs_;
    return absl::OkStatus();
  }
  //! OK, or the failure that ended syncing. Does not wait for a sync in flight.
  absl::Status failed() {
    if (!failing_.load(std::memory_order_acquire)) return absl::OkStatus();
    absl::MutexLock lock(&mu_);
    return failed_;
  }
  //! Successful fdatasyncs so far. For tests.
  int64_t syncs() {
    absl::MutexLock lock(&mu_);
    return syncs_;
  }

 private:
  WalSyncer(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  const std::string path_;
  const int fd_;
  std::atomic<bool> failing_{false};  // failed_ is set: read without the mutex
  absl::Mutex mu_;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  int64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
};

// Copies the WAL back into the database file on a thread and connection of its own, so
// that the commit thread never does: SQLite's autocheckpoint would run it inside the
// COMMIT that crosses the threshold, on the ledger's one writer (a sixth of its time
// under load). The writer's WAL hook wakes it once the WAL holds `pages` pages; a PASSIVE
// checkpoint never blocks the writer, and once it has copied everything the writer's next
// transaction starts the WAL over. Durability is the WAL's (synced before acknowledging), so a
// checkpoint that fails or falls behind costs disk, not data. A busy writer rarely finds
// the WAL wholly copied, though, and a WAL that only grows makes every page lookup
// slower (one more hash table per 4,096 frames): at kBackstop times `pages` the writer
// checkpoints itself, copying only what the thread has not, and so starts the WAL over.
//
// Thread-safety: OnWal is called on the writer's thread (inside its commits); the rest
// is internal. Ownership: owns its connection and thread; the destructor joins it.
class Checkpointer {
 public:
  static constexpr int kBackstop = 4;

  Checkpointer(std::string file, DbOptions opts, int pages)
      : file_(std::move(file)), opts_(opts), pages_(pages) {
    thread_ = std::thread([this] {
      core::NameThisThread("quell-ckpt");
      Run();
    });
  }
  ~Checkpointer() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.Signal();
    }
    thread_.join();
  }
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // The WAL hook of the writer connection (sqlite3_wal_hook).
  static int OnWal(void* self, sqlite3* db, const char* name, int pages) {
    auto* c = static_cast<Checkpointer*>(self);
    if (int64_t{pages} >= int64_t{c->pages_} * kBackstop) {
      (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    } else if (pages >= c->pages_) {
      absl::MutexLock lock(&c->mu_);
      c->due_ = true;
      c->cv_.Signal();
    }
    return SQLITE_OK;
  }

  //! Checkpoints run so far (attempts, whatever their outcome). For tests.
  int64_t runs() const { return runs_.load(); }

 private:
  void Run() {
    std::unique_ptr<Db> db;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        while (!due_ && !stop_) cv_.Wait(&mu_);
        if (stop_) return;
        due_ = false;
      }
      if (!db) {
        auto opened = Db::Open(file_, opts_);
        if (!opened.ok()) continue;  // the backstop covers a checkpointer that cannot open
        db = *std::move(opened);
      }
      // SQLITE_BUSY (another checkpoint is running) and I/O errors leave the WAL as it is:
      // the next wake-up or the backstop retries; no committed data depends on this.
      (void)sqlite3_wal_checkpoint_v2(db->raw(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                      nullptr);
      runs_.fetch_add(1);
    }
  }

  const std::string file_;
  const DbOptions opts_;
  const int pages_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  bool due_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> runs_{0};
  std::thread thread_;  // last: starts after everything above is constructed
};

class SqliteStore;

// The one write transaction. Confined to the commit thread.
//
// Savepoints are logical: each write records how to undo itself (an undo log), and
// RollbackToSavepoint replays the log backwards to the savepoint's mark. A SQLite
// SAVEPOINT would instead copy every page a mutation touches into a sub-journal, on
// every mutation, although almost all of them succeed; the undo log costs a few small
// strings and only a failing mutation pays for its undo statements. Every write goes
// through this class, so the log is complete. If an undo statement itself fails the
// Txn is poisoned: it refuses to commit (the batch fails, nothing is written).
class SqliteTxn final : public Txn {
 public:
  SqliteTxn(SqliteStore* store, Db* db, KnownEntities* known, EntityCache* cache, absl::Time now,
            int64_t head_seq, std::string head_hash)
      : store_(store),
        db_(db),
        known_(known),
        cache_(cache),
        now_(now),
        head_seq_(head_seq),
        head_hash_(std::move(head_hash)) {}
  ~SqliteTxn() override { Rollback(); }

  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryMitigation(*db_, id);
  }
  absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                         std::string_view action) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (!known_->MayHave(entity.str())) return std::vector<core::Mitigation>();
    return QueryLive(*db_, entity, action);
  }
  absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                  std::string_view key) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryIdempotency(*db_, scope, key);
  }
  absl::Status PutIdempotency(const IdempotencyRecord& r) override;
  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                              std::string_view id) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryDetection(*db_, source, id);
  }
  absl::Status PutDetection(const StoredDetection& d) override;
  absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
      const std::vector<DetectionKey>& keys) override;
  absl::Status PutDetections(const std::vector<StoredDetection>& ds) override;
  absl::StatusOr<std::vector<bool>> PutNewDetections(
      const std::vector<StoredDetection>& ds) override;
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (!known_->MayHave(entity.str())) return int64_t{0};
    return QueryCountMitigations(*db_, entity, policy, action, since, exclude_shadow);
  }
  absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(const core::Entity& entity,
                                                                  absl::Time since) override;
  absl::StatusOr<int64_t> NextPolicyVersion() override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryNextPolicyVersion(*db_);
  }
  absl::StatusOr<bool> ListHas(std::string_view name, const core::Entity& entity) override {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    return QueryListHas(*db_, name, entity);
  }
  absl::StatusOr<Change> Append(Change change, const core::Mitigation* mitigation) override;
  int64_t NextSeq() const override { return head_seq_ + 1; }
  absl::StatusOr<std::optional<Change>> AppendMitigationIfAt(Change change,
                                                             const core::Mitigation& mitigation,
                                                             int64_t expected_seq) override;
  absl::Status Savepoint() override;
  absl::Status RollbackToSavepoint() override;
  absl::Status ReleaseSavepoint() override;
  absl::Status Commit() override;
  absl::Status CommitVisible() override;
  void Rollback() override;

 private:
  // How to undo one write. Strings are the row's key.
  struct Undo {
    enum class Kind : uint8_t {
      kChange,             // DELETE the change with seq `n`
      kMitigationWritten,  // mitigation `a` of entity `b` as before change `n`: rewritten
                           // from its latest earlier change, or DELETEd if it has none
      kIdempotency,        // DELETE idempotency (a, b)
      kDetectionsAfter,    // DELETE the detections with rowid > `n` (rowids only grow)
      kPolicySet,          // DELETE policy set version `n`
      kListCreated,        // DELETE list `a`
      kListUpdated,        // restore list `a` to protected `n`, kind `b`
      kListEntryAdded,     // DELETE entry (a, b)
      kListEntryRemoved,   // INSERT entry (a, b)
    };
    Kind kind;
    int64_t n = 0;
    std::string a, b;
  };

  absl::Status CheckOpen() const {
    if (done_) return absl::FailedPreconditionError("transaction already finished");
    return absl::OkStatus();
  }
  // Writes refuse once the Txn is poisoned: its outcome is decided (rolled back).
  absl::Status CheckWritable() const {
    QUELL_RETURN_IF_ERROR(CheckOpen());
    if (poisoned_) return absl::AbortedError("transaction is poisoned by a failed undo");
    return absl::OkStatus();
  }
  // Gives `change` the next seq, this Txn's time and its link in the hash chain.
  void Seal(Change& change) const {
    change.seq = head_seq_ + 1;
    change.at = now_;
    change.prev_hash = head_hash_;
    change.hash = ChainHash(change);
  }
  // The change row of `change` (sealed).
  absl::Status InsertChangeRow(const Change& change);
  // Ends an append whose writes were logged after undo mark `mark`: if `st` failed they
  // are undone (poisoning the Txn if that fails) and `st` is returned; else the chain's
  // head moves to `change`.
  absl::Status EndAppend(absl::Status st, size_t mark, const Change& change) {
    if (!st.ok()) (void)UndoTo(mark);  // `st` is the error to report
    TrimUndo();
    if (!st.ok()) return st;
    head_seq_ = change.seq;
    head_hash_ = change.hash;
    return absl::OkStatus();
  }
  // Runs the statement for `sql` with `bind` applied, expecting no rows.
  template <typename Bind>
  absl::Status Run(std::string_view sql, Bind&& bind) {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare(sql));
    StmtUse use(s);
    bind(*use);
    absl::Status st = use->Run();
    // Some errors (I/O, full disk, out of memory) make SQLite roll the whole transaction
    // back; later statements would then autocommit one by one. Never let that happen.
    if (!st.ok() && sqlite3_get_autocommit(db_->raw()) != 0) poisoned_ = true;
    return st;
  }
  // Writes (inserts or replaces) the mitigations row of `m` as of change `seq`.
  absl::Status UpsertMitigationRow(const core::Mitigation& m, int64_t seq);
  // Logs one undo record for the detection rows the caller is about to write: a new
  // row's rowid is above every stored one (SQLite gives max + 1), so they are the rows
  // above today's maximum. A record per row cost two key copies per detection.
  absl::Status MarkDetectionsUndo();
  // Checks, marks the undo and inserts `ds` in statements of kDetectionChunk rows, the
  // tail one row each. `if_new`: a stored key's row is skipped, and `written` (when
  // given, sized like `ds`) says which were written; otherwise a stored key fails the
  // call with kAlreadyExists.
  absl::Status InsertDetections(std::span<const StoredDetection> ds, bool if_new,
                                std::vector<bool>* written);
  // Puts mitigation `id` of `entity` back as it was before change `seq`.
  absl::Status RestoreMitigationBefore(std::string_view id, std::string_view entity, int64_t seq);
  absl::Status ApplyUndo(const Undo& u);
  absl::Status ApplyListChange(const ListChange& lc);
  // Undoes every write logged after `mark`; poisons the Txn if that fails.
  absl::Status UndoTo(size_t mark);
  // Drops undo records nobody can roll back to any more.
  void TrimUndo() {
    if (savepoints_.empty()) undo_.clear();
  }
  // The entity cache forgets every entity this Txn wrote: (some of) its writes are being
  // undone. They stay listed: a later read may cache what this Txn wrote before the undo
  // mark, which a rollback must forget too.
  void ForgetWritten() {
    for (const std::string& e : written_) cache_->Erase(e);
  }
  void Finish();

  SqliteStore* store_;
  Db* db_;
  KnownEntities* known_;              // the store's, for the write connection
  EntityCache* cache_;                // the store's, for the write connection
  std::vector<std::string> written_;  // entities whose mitigations this Txn wrote
  const absl::Time now_;
  int64_t head_seq_;
  std::string head_hash_;
  struct Mark {
    int64_t seq;
    std::string hash;
    size_t undo;  // undo_.size() when the savepoint was taken
  };
  std::vector<Mark> savepoints_;
  std::vector<Undo> undo_;
  // A write could not be undone: the transaction must not commit.
  bool poisoned_ = false;
  bool done_ = false;
};

class SqliteStore final : public Store {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const SqliteOptions& options);

  absl::StatusOr<std::unique_ptr<Txn>> Begin(absl::Time now) override;
  absl::Status SyncCommitted() override {
    return wal_syncer_ ? wal_syncer_->Sync() : absl::OkStatus();
  }
  bool DefersSync() const override { return wal_syncer_ != nullptr; }

  void PrefetchEntities(const std::vector<EntityRead>& reads) override;
  absl::StatusOr<int64_t> LastSeq() override {
    return WithRead([](Db& db) { return QueryLastSeq(db); });
  }
  absl::StatusOr<std::vector<Change>> ReadChanges(int64_t after, int limit) override;
  absl::StatusOr<std::vector<Change>> ReadChangesOfKind(ChangeKind kind, int64_t after,
                                                        int limit) override;
  absl::StatusOr<std::vector<Change>> ReadEntityChanges(const core::Entity& entity, int limit,
                                                        int64_t after) override;
  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return WithRead([&](Db& db) { return QueryMitigation(db, id); });
  }
  absl::StatusOr<MitigationPage> ListMitigations(const MitigationQuery& query) override;
  absl::StatusOr<int64_t> ScanLive(
      const std::function<absl::Status(const core::Mitigation&)>& fn) override;
  absl::StatusOr<int64_t> ScanActiveJson(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(std::string_view json)>& fn) override;
  absl::StatusOr<int64_t> ScanActiveEntries(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const ActiveEntry&)>& fn) override;
  absl::StatusOr<int64_t> ScanDue(const std::function<void(int64_t seq)>& start,
                                  const std::function<absl::Status(const DueEntry&)>& fn) override;
  absl::StatusOr<int64_t> ScanMitigationRows(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const MitigationRow&)>& fn) override;
  absl::StatusOr<std::vector<core::Mitigation>> ListDue(absl::Time now, int limit) override;
  absl::StatusOr<std::optional<absl::Time>> NextDue() override;
  absl::StatusOr<int64_t> PurgeIdempotency(absl::Time before) override;

  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                              std::string_view id) override {
    return WithRead([&](Db& db) { return QueryDetection(db, source, id); });
  }
  absl::Status ScanDetections(
      absl::Time from, absl::Time to,
      const std::function<absl::Status(const StoredDetection&)>& fn) override;
  absl::StatusOr<int64_t> PurgeDetections(absl::Time received_before) override;
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity, std::string_view policy,
                                           std::string_view action, absl::Time since,
                                           bool exclude_shadow) override {
    return WithRead([&](Db& db) {
      return QueryCountMitigations(db, entity, policy, action, since, exclude_shadow);
    });
  }
  absl::StatusOr<std::optional<PolicySetVersion>> GetPolicySet(int64_t version) override {
    return WithRead([&](Db& db) {
      return QueryPolicySet(db,
                            "SELECT version, seq, yaml, created_at, actor FROM policy_sets "
                            "WHERE version = ?1",
                            version);
    });
  }
  absl::StatusOr<std::optional<PolicySetVersion>> LatestPolicySet() override {
    return WithRead([&](Db& db) {
      return QueryPolicySet(db,
                            "SELECT version, seq, yaml, created_at, actor FROM policy_sets "
                            "WHERE version >= ?1 ORDER BY version DESC LIMIT 1",
                            0);
    });
  }
  absl::StatusOr<std::vector<ListInfo>> Lists() override;
  absl::StatusOr<std::vector<std::string>> ListEntries(std::string_view name) override;
  absl::StatusOr<int64_t> ScanListEntries(
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) override;

  absl::Status CreateKey(const ApiKey& key) override;
  absl::StatusOr<std::vector<ApiKey>> ListKeys() override;
  absl::Status RevokeKey(std::string_view id, absl::Time at, bool keep_last_admin) override;
  absl::StatusOr<int64_t> KeysVersion() override;

  absl::StatusOr<std::string> WriterPragma(std::string_view name) {
    if (txn_open_.load()) return absl::FailedPreconditionError("a transaction is open");
    return writer_->QueryText(absl::StrCat("PRAGMA ", AV(name)));
  }
  void TxnFinished() { txn_open_.store(false); }
  EntityPrefetch& prefetch() { return prefetch_; }
  // The open Txn committed up to `head_seq`: the entity cache and the known entities are
  // the store as of then.
  void Committed(int64_t head_seq) {
    cache_head_seq_ = head_seq;
    if (known_.loaded()) known_.set_seq(head_seq);
  }
  int64_t CheckpointRuns() const { return checkpointer_ ? checkpointer_->runs() : 0; }
  int64_t WalSyncs() const { return wal_syncer_ ? wal_syncer_->syncs() : 0; }

  ~SqliteStore() override {
    // Unhook before the checkpointer goes: the writer outlives it (members die in reverse).
    if (checkpointer_) sqlite3_wal_hook(writer_->raw(), nullptr, nullptr);
    checkpointer_.reset();
  }

 private:
  SqliteStore(std::string file, DbOptions opts, int pool_size, std::unique_ptr<Db> writer,
              int checkpoint_pages, std::unique_ptr<WalSyncer> wal_syncer, size_t entity_cache)
      : file_(std::move(file)),
        opts_(opts),
        writer_(std::move(writer)),
        entity_cache_(entity_cache),
        pool_(file_, opts, pool_size),
        wal_syncer_(std::move(wal_syncer)) {
    if (checkpoint_pages > 0) {
      checkpointer_ = std::make_unique<Checkpointer>(file_, opts_, checkpoint_pages);
      sqlite3_wal_hook(writer_->raw(), &Checkpointer::OnWal, checkpointer_.get());
    }
  }

  // Loads known_ (once) in one read transaction on a pooled connection, outside the write
  // lock: a first Begin on a large store does not hold other writers for the scan. A
  // failure leaves it unloaded (every entity may have mitigations) until a retry a
  // minute later (by `now`, the Begin's time).
  void LoadKnown(absl::Time now);
  // Brings a loaded known_ to `head_seq` under the write lock, from the kMitigation
  // changes appended since (by another process, or since the load); far behind, it is
  // reset to be reloaded. An error resets it and is returned.
  absl::Status CatchUpKnown(int64_t head_seq);
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
  // The write connection's entity cache (used by Begin and the open Txn) and the chain
  // head it is true of: a Begin that finds another head (another process appended)
  // clears it.
  EntityCache entity_cache_;
  int64_t cache_head_seq_ = -1;
  KnownEntities known_;                            // used only by Begin and the open Txn
  EntityPrefetch prefetch_;                        // Put by any thread; the rest as known_
  absl::Time known_retry_ = absl::InfinitePast();  // no load before this, after a failure
  ReadPool pool_;
  absl::Mutex side_mu_;
  std::unique_ptr<Db> side_ ABSL_GUARDED_BY(side_mu_);  // keys and purges
  std::unique_ptr<WalSyncer> wal_syncer_;               // synchronous FULL only
  std::unique_ptr<Checkpointer> checkpointer_;          // null: SQLite's autocheckpoint
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
  QUELL_RETURN_IF_ERROR(CheckWritable());
  QUELL_RETURN_IF_ERROR(
      Run("INSERT INTO idempotency (scope, key, request_hash, status, response, created_at) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
          [&](Stmt& s) {
            s.BindTextStatic(1, r.scope);
            s.BindTextStatic(2, r.key);
            s.BindTextStatic(3, r.request_hash);
            s.BindInt(4, r.status);
            s.BindTextStatic(5, r.response);
            s.BindTime(6, r.created_at);
          }));
  if (!savepoints_.empty()) {
    undo_.push_back({.kind = Undo::Kind::kIdempotency, .a = r.scope, .b = r.key});
  }
  return absl::OkStatus();
}

// One statement whether the mitigation is new or not: an update used to read the row's
// seq first (for its undo) and then write it, three B-tree descents instead of one. The
// undo, which almost never runs, finds the prior version itself.
absl::Status SqliteTxn::UpsertMitigationRow(const core::Mitigation& m, int64_t seq) {
  // Every write of a mitigation row is noted before it is made (here, in
  // RestoreMitigationBefore and in AppendMitigationIfAt): a read done ahead of it must not
  // answer for the entity (internal/entity_prefetch.h).
  store_->prefetch().NoteWrite(m.entity.str(), seq);
  // A mitigation keeps its entity (RestoreMitigationBefore finds its versions by it): an
  // update that would change it writes nothing and is refused.
  QUELL_RETURN_IF_ERROR(
      Run("INSERT INTO mitigations (id, entity, action, state, created_at, due_at, source, policy, "
          "seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
          "ON CONFLICT (id) DO UPDATE SET action = ?3, state = ?4, created_at = ?5, due_at = ?6, "
          "source = ?7, policy = ?8, seq = ?9 WHERE entity = ?2",
          [&](Stmt& s) {
            s.BindTextStatic(1, m.id);
            s.BindTextStatic(2, m.entity.str());
            s.BindTextStatic(3, m.action);
            s.BindTextStatic(4, core::StateName(m.state));
            s.BindTime(5, m.created_at);
            BindDueAt(s, 6, m);
            s.BindTextStatic(7, m.source);
            s.BindTextStatic(8, m.policy);
            s.BindInt(9, seq);
          }));
  if (db_->changes() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("mitigation ", m.id, " belongs to another entity than ", m.entity.str()));
  }
  return absl::OkStatus();
}

// The mitigation's latest change before `seq`, through the changes' (entity, seq) index
// (walking back the entity's changes: slow for an entity with a long history, but an
// undo runs only when a mutation fails).
absl::Status SqliteTxn::RestoreMitigationBefore(std::string_view id, std::string_view entity,
                                                int64_t seq) {
  store_->prefetch().NoteWrite(entity, seq);  // the undone write's: as UpsertMitigationRow
  std::optional<std::pair<int64_t, std::string>> prior;
  {
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db_->Prepare("SELECT seq, payload FROM changes WHERE entity = ?1 AND seq < ?2 "
                               "AND kind = 1 AND subject = ?3 ORDER BY seq DESC LIMIT 1"));
    StmtUse use(s);
    use->BindTextStatic(1, entity);
    use->BindInt(2, seq);
    use->BindTextStatic(3, id);
    QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
    if (row) prior.emplace(use->ColumnInt(0), use->ColumnText(1));
  }
  if (!prior) {
    return Run("DELETE FROM mitigations WHERE id = ?1", [&](Stmt& s) { s.BindTextStatic(1, id); });
  }
  QUELL_ASSIGN_OR_RETURN(core::Mitigation m, ParseStoredMitigation(prior->second));
  return UpsertMitigationRow(m, prior->first);
}

absl::Status SqliteTxn::ApplyUndo(const Undo& u) {
  switch (u.kind) {
    case Undo::Kind::kChange:
      return Run("DELETE FROM changes WHERE seq = ?1", [&](Stmt& s) { s.BindInt(1, u.n); });
    case Undo::Kind::kMitigationWritten:
      return RestoreMitigationBefore(u.a, u.b, u.n);
    case Undo::Kind::kIdempotency:
      return Run("DELETE FROM idempotency WHERE scope = ?1 AND key = ?2", [&](Stmt& s) {
        s.BindTextStatic(1, u.a);
        s.BindTextStatic(2, u.b);
      });
    case Undo::Kind::kDetectionsAfter:
      return Run("DELETE FROM detections WHERE rowid > ?1", [&](Stmt& s) { s.BindInt(1, u.n); });
    case Undo::Kind::kPolicySet:
      return Run("DELETE FROM policy_sets WHERE version = ?1", [&](Stmt& s) { s.BindInt(1, u.n); });
    case Undo::Kind::kListCreated:
      return Run("DELETE FROM lists WHERE name = ?1", [&](Stmt& s) { s.BindTextStatic(1, u.a); });
    case Undo::Kind::kListUpdated:
      return Run("UPDATE lists SET protected = ?2, kind = ?3 WHERE name = ?1", [&](Stmt& s) {
        s.BindTextStatic(1, u.a);
        s.BindInt(2, u.n);
        s.BindTextStatic(3, u.b);
      });
    case Undo::Kind::kListEntryAdded:
      return Run("DELETE FROM list_entries WHERE list = ?1 AND entity = ?2", [&](Stmt& s) {
        s.BindTextStatic(1, u.a);
        s.BindTextStatic(2, u.b);
      });
    case Undo::Kind::kListEntryRemoved:
      return Run("INSERT INTO list_entries (list, entity) VALUES (?1, ?2)", [&](Stmt& s) {
        s.BindTextStatic(1, u.a);
        s.BindTextStatic(2, u.b);
      });
  }
  return absl::InternalError("unknown undo record");
}

absl::Status SqliteTxn::UndoTo(size_t mark) {
  ForgetWritten();
  while (undo_.size() > mark) {
    absl::Status st = ApplyUndo(undo_.back());
    undo_.pop_back();
    if (!st.ok()) {
      poisoned_ = true;
      return st;
    }
  }
  return absl::OkStatus();
}

// Every detection written needs its key: checked before anything of a batch is written.
absl::Status CheckDetectionKeys(std::span<const StoredDetection> ds) {
  for (const StoredDetection& d : ds) {
    if (d.source.empty() || d.id.empty()) {
      return absl::InvalidArgumentError("a detection needs source and id");
    }
  }
  return absl::OkStatus();
}

// Batches of detections: one statement per kDetectionChunk keys or rows instead of one per
// detection (SQLite's per-statement cost is a good part of a small insert's). The SQL
// for a full chunk is built once; a short tail uses the one-row statements.
constexpr int kDetectionChunk = 32;

const std::string& ReplyChunkSql() {
  static const std::string* sql = [] {
    auto* s = new std::string("SELECT id, reply FROM detections WHERE source = ?1 AND id IN (");
    for (int i = 0; i < kDetectionChunk; ++i) absl::StrAppend(s, i ? ", ?" : "?", i + 2);
    s->append(")");
    return s;
  }();
  return *sql;
}

// The INSERT of `rows` detections; `if_new`: skipping the stored keys.
std::string InsertRowsSql(int rows, bool if_new) {
  std::string s("INSERT INTO detections (" QUELL_DETECTION_COLUMNS ") VALUES ");
  for (int r = 0; r < rows; ++r) {
    s.append(r ? ", (" : "(");
    for (int c = 0; c < 10; ++c) absl::StrAppend(&s, c ? ", ?" : "?", r * 10 + c + 1);
    s.append(")");
  }
  if (if_new) s.append(" ON CONFLICT (source, id) DO NOTHING");
  return s;
}
// The four INSERTs: a chunk or one row, of new rows only or not. Built once.
const std::string& InsertSql(bool chunk, bool if_new) {
  static const std::string* const kSql[2][2] = {
      {new std::string(InsertRowsSql(1, false)), new std::string(InsertRowsSql(1, true))},
      {new std::string(InsertRowsSql(kDetectionChunk, false)),
       new std::string(InsertRowsSql(kDetectionChunk, true))}};
  return *kSql[chunk][if_new];
}

absl::StatusOr<std::vector<std::optional<std::string>>> SqliteTxn::GetDetectionReplies(
    const std::vector<DetectionKey>& keys) {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  std::vector<std::optional<std::string>> out(keys.size());
  size_t i = 0;
  while (i < keys.size()) {
    // A run of up to kDetectionChunk keys of one source; a short one asks key by key.
    size_t end = i + 1;
    while (end < keys.size() && end - i < kDetectionChunk && keys[end].source == keys[i].source) {
      ++end;
    }
    if (end - i < kDetectionChunk) {
      for (; i < end; ++i) {
        QUELL_ASSIGN_OR_RETURN(std::optional<StoredDetection> d,
                               QueryDetection(*db_, keys[i].source, keys[i].id));
        if (d) out[i] = std::move(d->reply);
      }
      continue;
    }
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare(ReplyChunkSql()));
    StmtUse use(s);
    use->BindTextStatic(1, keys[i].source);
    for (size_t k = i; k < end; ++k) use->BindTextStatic(static_cast<int>(k - i + 2), keys[k].id);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      // Rare (a resubmitted detection): find every key of the chunk with this id.
      const std::string_view id = use->ColumnText(0);
      for (size_t k = i; k < end; ++k) {
        if (keys[k].id == id) out[k] = StoredReply(use->ColumnText(1), keys[k].source, id);
      }
    }
    i = end;
  }
  return out;
}

absl::Status SqliteTxn::MarkDetectionsUndo() {
  if (savepoints_.empty()) return absl::OkStatus();
  // One record per savepoint is enough: undoing the first deletes every row after it,
  // those of later batches too (a decision mutation writes quiet rows, then the others).
  for (size_t i = savepoints_.back().undo; i < undo_.size(); ++i) {
    if (undo_[i].kind == Undo::Kind::kDetectionsAfter) return absl::OkStatus();
  }
  QUELL_ASSIGN_OR_RETURN(Stmt * s, db_->Prepare("SELECT COALESCE(MAX(rowid), 0) FROM detections"));
  StmtUse use(s);
  QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
  if (!row) return absl::InternalError("no MAX(rowid) row");
  undo_.push_back({.kind = Undo::Kind::kDetectionsAfter, .n = use->ColumnInt(0)});
  return absl::OkStatus();
}

// Undone like a batch (MarkDetectionsUndo), by the rowids above today's maximum.
absl::Status SqliteTxn::PutDetection(const StoredDetection& d) {
  return InsertDetections({&d, 1}, /*if_new=*/false, nullptr);
}

absl::Status SqliteTxn::PutDetections(const std::vector<StoredDetection>& ds) {
  return InsertDetections(ds, /*if_new=*/false, nullptr);
}

absl::StatusOr<std::vector<bool>> SqliteTxn::PutNewDetections(
    const std::vector<StoredDetection>& ds) {
  std::vector<bool> written(ds.size(), false);
  QUELL_RETURN_IF_ERROR(InsertDetections(ds, /*if_new=*/true, &written));
  return written;
}

// When a statement that skips stored keys writes only some of its rows (almost always it
// writes all), they are the last `changes` rowids: one statement's rows get consecutive
// ones. A RETURNING clause would name them every time, but costs more than the duplicate
// check it replaces.
absl::Status SqliteTxn::InsertDetections(std::span<const StoredDetection> ds, bool if_new,
                                         std::vector<bool>* written) {
  QUELL_RETURN_IF_ERROR(CheckWritable());
  QUELL_RETURN_IF_ERROR(CheckDetectionKeys(ds));
  if (ds.empty()) return absl::OkStatus();
  QUELL_RETURN_IF_ERROR(MarkDetectionsUndo());
  for (size_t i = 0; i < ds.size();) {
    const size_t n = ds.size() - i >= kDetectionChunk ? kDetectionChunk : 1;
    absl::Status st = Run(InsertSql(/*chunk=*/n > 1, if_new), [&](Stmt& s) {
      for (size_t k = 0; k < n; ++k) BindDetection(s, static_cast<int>(k) * 10, ds[i + k]);
    });
    if (st.code() == absl::StatusCode::kAlreadyExists) {
      return absl::AlreadyExistsError(n == 1 ? absl::StrCat("detection ", ds[i].id, " of source ",
                                                            ds[i].source, " is already stored")
                                             : absl::StrCat("a detection of source ", ds[i].source,
                                                            " among ", ds[i].id,
                                                            "... is already stored"));
    }
    QUELL_RETURN_IF_ERROR(st);
    if (written != nullptr) {
      const auto changes = static_cast<size_t>(db_->changes());
      if (changes == n) {
        std::fill(written->begin() + static_cast<std::ptrdiff_t>(i),
                  written->begin() + static_cast<std::ptrdiff_t>(i + n), true);
      } else if (changes > 0) {
        QUELL_ASSIGN_OR_RETURN(Stmt * s,
                               db_->Prepare("SELECT source, id FROM detections WHERE rowid > ?1"));
        StmtUse use(s);
        use->BindInt(1, sqlite3_last_insert_rowid(db_->raw()) - static_cast<int64_t>(changes));
        while (true) {
          QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
          if (!row) break;
          for (size_t k = i; k < i + n; ++k) {
            if (ds[k].source == use->ColumnText(0) && ds[k].id == use->ColumnText(1)) {
              (*written)[k] = true;
            }
          }
        }
      }
    }
    i += n;
  }
  return absl::OkStatus();
}

absl::Status SqliteTxn::ApplyListChange(const ListChange& lc) {
  bool exists = false;
  bool was_protected = false;
  std::string old_kind;
  {
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db_->Prepare("SELECT protected, kind FROM lists WHERE name = ?1"));
    StmtUse use(s);
    use->BindTextStatic(1, lc.list);
    QUELL_ASSIGN_OR_RETURN(exists, use->Step());
    if (exists) {
      was_protected = use->ColumnInt(0) != 0;
      old_kind = use->ColumnText(1);
    }
  }
  const bool now_protected = lc.is_protected.value_or(was_protected);
  const std::string& now_kind = lc.kind ? *lc.kind : old_kind;
  if (!exists) {
    QUELL_RETURN_IF_ERROR(
        Run("INSERT INTO lists (name, protected, kind) VALUES (?1, ?2, ?3)", [&](Stmt& s) {
          s.BindTextStatic(1, lc.list);
          s.BindInt(2, now_protected ? 1 : 0);
          s.BindTextStatic(3, now_kind);
        }));
    undo_.push_back({.kind = Undo::Kind::kListCreated, .a = lc.list});
  } else if (now_protected != was_protected || now_kind != old_kind) {
    QUELL_RETURN_IF_ERROR(
        Run("UPDATE lists SET protected = ?2, kind = ?3 WHERE name = ?1", [&](Stmt& s) {
          s.BindTextStatic(1, lc.list);
          s.BindInt(2, now_protected ? 1 : 0);
          s.BindTextStatic(3, now_kind);
        }));
    undo_.push_back({.kind = Undo::Kind::kListUpdated,
                     .n = was_protected ? 1 : 0,
                     .a = lc.list,
                     .b = std::move(old_kind)});
  }
  for (const std::string& e : lc.add) {
    QUELL_RETURN_IF_ERROR(
        Run("INSERT INTO list_entries (list, entity) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            [&](Stmt& s) {
              s.BindTextStatic(1, lc.list);
              s.BindTextStatic(2, e);
            }));
    if (db_->changes() == 1) {
      undo_.push_back({.kind = Undo::Kind::kListEntryAdded, .a = lc.list, .b = e});
    }
  }
  for (const std::string& e : lc.remove) {
    QUELL_RETURN_IF_ERROR(
        Run("DELETE FROM list_entries WHERE list = ?1 AND entity = ?2", [&](Stmt& s) {
          s.BindTextStatic(1, lc.list);
          s.BindTextStatic(2, e);
        }));
    if (db_->changes() == 1) {
      undo_.push_back({.kind = Undo::Kind::kListEntryRemoved, .a = lc.list, .b = e});
    }
  }
  return absl::OkStatus();
}

// One guarded UPDATE of the view's changing columns (state, due_at, seq) instead of
// Append's read-modify upsert, then the change row: two statements, no read, no parse.
absl::StatusOr<std::optional<Change>> SqliteTxn::AppendMitigationIfAt(Change change,
                                                                      const core::Mitigation& m,
                                                                      int64_t expected_seq) {
  QUELL_RETURN_IF_ERROR(CheckWritable());
  const int64_t seq = head_seq_ + 1;
  if (change.kind != ChangeKind::kMitigation) {
    return absl::InvalidArgumentError("AppendMitigationIfAt takes mitigation changes only");
  }
  QUELL_RETURN_IF_ERROR(CompleteMitigationChange(change, m, seq));
  const std::string& entity = m.entity.str();
  store_->prefetch().NoteWrite(entity, seq);  // as UpsertMitigationRow
  QUELL_RETURN_IF_ERROR(
      Run("UPDATE mitigations SET state = ?2, due_at = ?3, seq = ?4 "
          "WHERE id = ?1 AND seq = ?5 AND entity = ?6 AND action = ?7 AND created_at = ?8 "
          "AND source = ?9 AND policy = ?10",
          [&](Stmt& s) {
            s.BindTextStatic(1, m.id);
            s.BindTextStatic(2, core::StateName(m.state));
            BindDueAt(s, 3, m);
            s.BindInt(4, seq);
            s.BindInt(5, expected_seq);
            s.BindTextStatic(6, entity);
            s.BindTextStatic(7, m.action);
            s.BindTime(8, m.created_at);
            s.BindTextStatic(9, m.source);
            s.BindTextStatic(10, m.policy);
          }));
  if (db_->changes() == 0) return std::nullopt;  // moved on since it was read: nothing written
  const size_t mark = undo_.size();
  undo_.push_back({.kind = Undo::Kind::kMitigationWritten, .n = seq, .a = m.id, .b = entity});
  Seal(change);
  written_.push_back(entity);
  QUELL_RETURN_IF_ERROR(EndAppend(InsertChangeRow(change), mark, change));
  cache_->Written(m);
  return std::optional<Change>(std::move(change));
}

absl::Status SqliteTxn::InsertChangeRow(const Change& change) {
  return Run("INSERT INTO changes (" QUELL_CHANGE_COLUMNS
             ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
             [&](Stmt& s) {
               s.BindInt(1, change.seq);
               s.BindTime(2, change.at);
               s.BindInt(3, static_cast<int64_t>(change.kind));
               s.BindTextStatic(4, change.actor);
               s.BindTextStatic(5, change.subject);
               s.BindTextStatic(6, change.entity);
               s.BindTextStatic(7, change.payload);
               s.BindTextStatic(8, change.prev_hash);
               s.BindTextStatic(9, change.hash);
             });
}

absl::StatusOr<Change> SqliteTxn::Append(Change change, const core::Mitigation* mitigation) {
  QUELL_RETURN_IF_ERROR(CheckWritable());
  const int64_t seq = head_seq_ + 1;
  if (change.kind == ChangeKind::kMitigation) {
    if (mitigation == nullptr) {
      return absl::InvalidArgumentError("a mitigation change needs its mitigation");
    }
    QUELL_RETURN_IF_ERROR(CompleteMitigationChange(change, *mitigation, seq));
  } else if (mitigation != nullptr) {
    return absl::InvalidArgumentError("only mitigation changes carry a mitigation");
  }
  // Materialised kinds are validated before anything is written.
  std::optional<ListChange> list;
  std::optional<PolicySetChange> policy_set;
  if (change.kind == ChangeKind::kList) {
    QUELL_ASSIGN_OR_RETURN(list, ParseListChange(change.payload));
    if (change.subject.empty()) change.subject = list->list;
  } else if (change.kind == ChangeKind::kPolicySet) {
    QUELL_ASSIGN_OR_RETURN(policy_set, ParsePolicySetChange(change.payload));
    QUELL_ASSIGN_OR_RETURN(int64_t next, QueryNextPolicyVersion(*db_));
    if (policy_set->version != next) {
      return absl::InvalidArgumentError(absl::StrCat("policy set version is ", policy_set->version,
                                                     " but the next version is ", next));
    }
    if (change.subject.empty()) change.subject = absl::StrCat(policy_set->version);
  }
  Seal(change);

  // This Append's own writes are undone if a later step of it fails, savepoint or not.
  const size_t mark = undo_.size();
  absl::Status st = InsertChangeRow(change);
  if (!st.ok()) return st;
  undo_.push_back({.kind = Undo::Kind::kChange, .n = seq});
  absl::Status view = absl::OkStatus();
  // A first mitigation of an entity is all it has: the cache can hold it as complete.
  bool first_of_entity = false;
  if (mitigation != nullptr) {
    first_of_entity = known_->loaded() && !known_->MayHave(mitigation->entity.str());
    known_->Add(mitigation->entity.str());  // before it can be read back
    written_.push_back(mitigation->entity.str());
    view = UpsertMitigationRow(*mitigation, seq);
    if (view.ok()) {
      undo_.push_back({.kind = Undo::Kind::kMitigationWritten,
                       .n = seq,
                       .a = mitigation->id,
                       .b = mitigation->entity.str()});
    }
  } else if (list) {
    view = ApplyListChange(*list);
  } else if (policy_set) {
    view =
        Run("INSERT INTO policy_sets (version, seq, created_at, actor, yaml) "
            "VALUES (?1, ?2, ?3, ?4, ?5)",
            [&](Stmt& s) {
              s.BindInt(1, policy_set->version);
              s.BindInt(2, seq);
              s.BindTime(3, now_);
              s.BindTextStatic(4, change.actor);
              s.BindTextStatic(5, policy_set->yaml);
            });
    if (view.ok()) undo_.push_back({.kind = Undo::Kind::kPolicySet, .n = policy_set->version});
  }
  QUELL_RETURN_IF_ERROR(EndAppend(std::move(view), mark, change));
  if (first_of_entity) {
    cache_->Put(mitigation->entity.str(), absl::InfinitePast(), {*mitigation});
  } else if (mitigation != nullptr) {
    cache_->Written(*mitigation);
  }
  return change;
}

absl::StatusOr<std::vector<core::Mitigation>> SqliteTxn::EntityMitigations(
    const core::Entity& entity, absl::Time since) {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (!known_->MayHave(entity.str())) return std::vector<core::Mitigation>();
  since = core::ToStoredPrecision(since);  // as the query compares it
  std::vector<core::Mitigation> out;
  if (!cache_->Find(entity.str(), since, &out)) {
    if (auto ahead = store_->prefetch().Take(entity.str(), since)) {
      cache_->Put(entity.str(), ahead->since, ahead->mitigations);
      out = std::move(ahead->mitigations);
    } else {
      QUELL_ASSIGN_OR_RETURN(out, QueryEntityMitigations(*db_, entity, since));
      cache_->Put(entity.str(), since, out);
      return out;
    }
  }
  // Kept, or read ahead, for an earlier `since`: as the query would answer this one.
  std::erase_if(out, [&](const core::Mitigation& m) {
    return m.created_at < since && !core::IsLive(m.state);
  });
  return out;
}

absl::Status SqliteTxn::Savepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  savepoints_.push_back({head_seq_, head_hash_, undo_.size()});
  return absl::OkStatus();
}

absl::Status SqliteTxn::RollbackToSavepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
  Mark& mark = savepoints_.back();
  absl::Status st = UndoTo(mark.undo);
  head_seq_ = mark.seq;
  head_hash_ = std::move(mark.hash);
  savepoints_.pop_back();
  TrimUndo();
  return st;
}

absl::Status SqliteTxn::ReleaseSavepoint() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (savepoints_.empty()) return absl::FailedPreconditionError("no savepoint");
  savepoints_.pop_back();  // its undo records now belong to the enclosing savepoint
  TrimUndo();
  return absl::OkStatus();
}

absl::Status SqliteTxn::Commit() {
  QUELL_RETURN_IF_ERROR(CommitVisible());
  return store_->SyncCommitted();
}

absl::Status SqliteTxn::CommitVisible() {
  QUELL_RETURN_IF_ERROR(CheckOpen());
  if (poisoned_) {
    Rollback();
    return absl::InternalError("transaction rolled back: a failed write could not be undone");
  }
  absl::Status st = Run("COMMIT", [](Stmt&) {});
  if (!st.ok()) {
    Rollback();
    return st;
  }
  store_->Committed(head_seq_);  // this Txn's own entities were added by Append
  Finish();
  return absl::OkStatus();
}

void SqliteTxn::Rollback() {
  if (done_) return;
  ForgetWritten();
  // If ROLLBACK itself fails the connection may still be inside a transaction; the next
  // Begin notices (sqlite3_get_autocommit) and retries before starting a new one.
  if (sqlite3_get_autocommit(db_->raw()) == 0) (void)db_->Exec("ROLLBACK");
  Finish();
}

void SqliteTxn::Finish() {
  done_ = true;
  written_.clear();
  store_->TxnFinished();
}

// ---- SqliteStore ----

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const SqliteOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("sqlite store: empty data path");
  if (!options.create) QUELL_RETURN_IF_ERROR(CheckSqliteLedger(options.path));
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data directory ", options.path, ": ", ec.message()));
  }
  std::string file = (std::filesystem::path(options.path) / kSqliteFileName).string();
  DbOptions opts{.synchronous_full = options.synchronous_full,
                 .busy_timeout_ms = options.busy_timeout_ms,
                 .mmap_bytes = options.mmap_bytes};
  // The writer's commits fsync through the store's WalSyncer (synchronous FULL), not
  // inside SQLite: see WalSyncer. The other connections keep the configured mode.
  DbOptions writer_opts = opts;
  writer_opts.synchronous_full = false;
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Db> writer, Db::Open(file, writer_opts));
  QUELL_ASSIGN_OR_RETURN(std::string mode, writer->QueryText("PRAGMA journal_mode=WAL"));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot enable WAL on ", file, " (journal_mode is ", mode, ")"));
  }
  QUELL_ASSIGN_OR_RETURN(int version, sqlite_internal::ApplyMigrations(
                                          *writer, options.apply_migrations, absl::Now()));
  (void)version;
  std::unique_ptr<WalSyncer> wal_syncer;
  if (opts.synchronous_full) {  // the migrations' first read opened (created) the WAL
    QUELL_ASSIGN_OR_RETURN(wal_syncer, WalSyncer::Open(file + "-wal"));
  }
  return std::unique_ptr<SqliteStore>(
      new SqliteStore(std::move(file), opts, options.read_pool_size, std::move(writer),
                      options.checkpoint_pages, std::move(wal_syncer), options.entity_cache_bytes));
}

// Adds the entity in column 0 of every row `s` (bound) returns; stops early if the set
// turns itself off (past its maximum).
absl::Status AddEntities(Stmt& s, KnownEntities& known) {
  while (!known.disabled()) {
    QUELL_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    known.Add(s.ColumnText(0));
  }
  return absl::OkStatus();
}

void SqliteStore::LoadKnown(absl::Time now) {
  if (known_.loaded() || known_.disabled() || now < known_retry_) return;
  absl::Status st = WithRead([&](Db& db) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(int64_t head, QueryLastSeq(db));  // the rows' snapshot
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT entity FROM mitigations"));
    StmtUse use(s);
    QUELL_RETURN_IF_ERROR(AddEntities(*use, known_));
    if (!known_.disabled()) known_.set_seq(head);
    return absl::OkStatus();
  });
  if (!st.ok()) {
    known_.Reset();
    known_retry_ = now + absl::Minutes(1);
  }
}

absl::Status SqliteStore::CatchUpKnown(int64_t head_seq) {
  if (!known_.loaded() || known_.seq() == head_seq) return absl::OkStatus();
  if (head_seq < known_.seq() || head_seq - known_.seq() > KnownEntities::kMaxCatchUp) {
    known_.Reset();  // another file, or far behind: reloaded before the next Begin
    return absl::OkStatus();
  }
  absl::Status st = [&]() -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, writer_->Prepare("SELECT entity FROM changes WHERE seq > ?1 AND kind = 1"));
    StmtUse use(s);
    use->BindInt(1, known_.seq());
    return AddEntities(*use, known_);
  }();
  if (!st.ok()) {
    known_.Reset();
    return st;
  }
  if (known_.loaded()) known_.set_seq(head_seq);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Txn>> SqliteStore::Begin(absl::Time now) {
  if (wal_syncer_) QUELL_RETURN_IF_ERROR(wal_syncer_->failed());
  if (txn_open_.exchange(true)) {
    return absl::FailedPreconditionError("a write transaction is already open");
  }
  auto start = [&]() -> absl::StatusOr<std::unique_ptr<Txn>> {
    LoadKnown(now);  // the first time, in a read transaction of its own: not under the lock
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
    if (head_seq != cache_head_seq_) {
      entity_cache_.Clear();
      prefetch_.Distrust(head_seq);
      cache_head_seq_ = head_seq;
    }
    st = CatchUpKnown(head_seq);
    // A failed read can make SQLite roll the transaction back: then nothing may be written
    // outside it. Otherwise the known entities are only reset (every entity may have some).
    if (sqlite3_get_autocommit(writer_->raw()) != 0) {
      return st.ok() ? absl::InternalError("the write transaction ended at its start") : st;
    }
    // Stored times have microsecond precision; truncate so returned changes equal read ones.
    absl::Time at = core::ToStoredPrecision(now);
    return std::unique_ptr<Txn>(new SqliteTxn(this, writer_.get(), &known_, &entity_cache_, at,
                                              head_seq, std::move(head_hash)));
  };
  auto txn = start();
  if (!txn.ok()) txn_open_.store(false);
  return txn;
}

void SqliteStore::PrefetchEntities(const std::vector<EntityRead>& reads) {
  if (reads.empty()) return;
  (void)WithRead([&](Db& db) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(int64_t head, QueryLastSeq(db));  // the snapshot's
    for (const EntityRead& r : reads) {
      const absl::Time since = core::ToStoredPrecision(r.since);
      QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> read,
                             QueryEntityMitigations(db, r.entity, since));
      prefetch_.Put(r.entity.str(),
                    {.snapshot_seq = head, .since = since, .mitigations = std::move(read)});
    }
    return absl::OkStatus();
  });
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
    return CollectChanges(*use);
  });
}

absl::StatusOr<std::vector<Change>> SqliteStore::ReadChangesOfKind(ChangeKind kind, int64_t after,
                                                                   int limit) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<Change>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_CHANGE_COLUMNS
                                                " FROM changes WHERE seq > ?1 AND kind = ?2 "
                                                "ORDER BY seq LIMIT ?3"));
    StmtUse use(s);
    use->BindInt(1, after);
    use->BindInt(2, static_cast<int64_t>(kind));
    use->BindInt(3, limit);
    return CollectChanges(*use);
  });
}

absl::StatusOr<std::vector<Change>> SqliteStore::ReadEntityChanges(const core::Entity& entity,
                                                                   int limit, int64_t after) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<Change>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_CHANGE_COLUMNS
                                                " FROM changes WHERE entity = ?1 AND seq > ?3 "
                                                "ORDER BY seq LIMIT ?2"));
    StmtUse use(s);
    use->BindTextStatic(1, entity.str());
    use->BindInt(2, limit);
    use->BindInt(3, after);
    return CollectChanges(*use);
  });
}

absl::StatusOr<MitigationPage> SqliteStore::ListMitigations(const MitigationQuery& q) {
  QUELL_RETURN_IF_ERROR(CheckLimit(q.limit));
  // Fixed parameter numbers, so each filter combination is one cached statement.
  std::string sql =
      q.entity ? QUELL_SELECT_MITIGATION_OF_ENTITY : QUELL_SELECT_MITIGATION " WHERE 1 = 1";
  if (q.state) sql += " AND m.state = ?2";
  if (!q.action.empty()) sql += " AND m.action = ?3";
  if (!q.policy.empty()) sql += " AND m.policy = ?4";
  if (!q.source.empty()) sql += " AND m.source = ?5";
  if (!q.cursor.empty()) sql += " AND m.id < ?6";
  sql += " ORDER BY m.id DESC LIMIT ?7";
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
        Stmt * s, db.Prepare(QUELL_SELECT_MITIGATION " WHERE m.state IN " QUELL_LIVE_STATES));
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

absl::StatusOr<int64_t> SqliteStore::ScanActiveJson(
    const std::function<void(int64_t seq)>& start,
    const std::function<absl::Status(std::string_view json)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
    start(seq);
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db.Prepare(QUELL_SELECT_MITIGATION " WHERE m.state = 'active'"));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_RETURN_IF_ERROR(fn(use->ColumnText(0)));
    }
    return seq;
  });
}

absl::StatusOr<int64_t> SqliteStore::ScanMitigationRows(
    const std::function<void(int64_t seq)>& start,
    const std::function<absl::Status(const MitigationRow&)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
    start(seq);
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT m.id, m.entity, m.action, m.state, m.created_at, m.source, "
                             "m.policy, m.seq, c.payload FROM mitigations m "
                             "LEFT JOIN changes c ON c.seq = m.seq"));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_RETURN_IF_ERROR(fn(MitigationRow{
          .id = use->ColumnText(0),
          .entity = use->ColumnText(1),
          .action = use->ColumnText(2),
          .state = use->ColumnText(3),
          .source = use->ColumnText(5),
          .policy = use->ColumnText(6),
          .created_at = use->ColumnTime(4),
          .seq = use->ColumnInt(7),
          .payload = use->ColumnIsNull(8) ? std::string_view() : use->ColumnText(8)}));
    }
    return seq;
  });
}

absl::StatusOr<int64_t> SqliteStore::ScanDue(
    const std::function<void(int64_t seq)>& start,
    const std::function<absl::Status(const DueEntry&)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
    start(seq);
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT id, due_at FROM mitigations WHERE due_at IS NOT NULL"));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_RETURN_IF_ERROR(fn(DueEntry{use->ColumnText(0), use->ColumnTime(1)}));
    }
    return seq;
  });
}

// The view's columns only (due_at is expires_at for an active mitigation): no join with
// the changes table, no JSON.
absl::StatusOr<int64_t> SqliteStore::ScanActiveEntries(
    const std::function<void(int64_t seq)>& start,
    const std::function<absl::Status(const ActiveEntry&)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));
    start(seq);
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s,
        db.Prepare("SELECT id, entity, action, due_at FROM mitigations WHERE state = 'active'"));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_RETURN_IF_ERROR(
          fn(ActiveEntry{use->ColumnText(0), use->ColumnText(1), use->ColumnText(2),
                         use->ColumnIsNull(3) ? absl::InfiniteFuture() : use->ColumnTime(3)}));
    }
    return seq;
  });
}

absl::StatusOr<std::vector<core::Mitigation>> SqliteStore::ListDue(absl::Time now, int limit) {
  QUELL_RETURN_IF_ERROR(CheckLimit(limit));
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<core::Mitigation>> {
    // due_at is starts_at for scheduled and expires_at for active mitigations.
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s,
        db.Prepare(QUELL_SELECT_MITIGATION " WHERE m.due_at <= ?1 ORDER BY m.due_at LIMIT ?2"));
    StmtUse use(s);
    use->BindTime(1, now);
    use->BindInt(2, limit);
    return CollectMitigations(*use);
  });
}

absl::StatusOr<std::optional<absl::Time>> SqliteStore::NextDue() {
  return WithRead([&](Db& db) -> absl::StatusOr<std::optional<absl::Time>> {
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT MIN(due_at) FROM mitigations WHERE due_at IS NOT NULL"));
    StmtUse use(s);
    QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
    if (!row || use->ColumnIsNull(0)) return std::optional<absl::Time>();
    return std::optional<absl::Time>(use->ColumnTime(0));
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

absl::Status SqliteStore::ScanDetections(
    absl::Time from, absl::Time to, const std::function<absl::Status(const StoredDetection&)>& fn) {
  absl::StatusOr<bool> r = WithRead([&](Db& db) -> absl::StatusOr<bool> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT " QUELL_DETECTION_COLUMNS
                                                " FROM detections WHERE observed_at >= ?1 AND "
                                                "observed_at < ?2 ORDER BY observed_at"));
    StmtUse use(s);
    use->BindTime(1, from);
    use->BindTime(2, to);
    StoredDetection d;  // one object, its buffers reused row after row
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      ReadDetectionRow(*use, &d);
      QUELL_RETURN_IF_ERROR(fn(d));
    }
    return true;
  });
  return r.status();
}

absl::StatusOr<int64_t> SqliteStore::PurgeDetections(absl::Time received_before) {
  // Rows are stored in commit order, so the ones to delete are a prefix in rowid order:
  // find where it ends without an index on received_at (one index fewer per insert),
  // then delete it in chunks, each its own short write transaction. With no recent row
  // the prefix ends after the last row of that read: rows committed while the chunks run
  // are not in it (a bound of "every rowid" deleted detections acknowledged meanwhile, and
  // their replays were decided again). Each chunk also keeps to rows received before the
  // cut: a rowid freed by the purge can be given to a new row.
  QUELL_ASSIGN_OR_RETURN(int64_t end, WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
                           QUELL_ASSIGN_OR_RETURN(
                               Stmt * s,
                               db.Prepare("SELECT COALESCE((SELECT rowid FROM detections WHERE "
                                          "received_at >= ?1 ORDER BY rowid LIMIT 1), "
                                          "(SELECT COALESCE(MAX(rowid), 0) + 1 FROM detections))"));
                           StmtUse use(s);
                           use->BindTime(1, received_before);
                           QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
                           if (!row) return absl::InternalError("no purge bound row");
                           return use->ColumnInt(0);
                         }));
  constexpr int kChunk = 10000;
  int64_t total = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(
        int64_t n, WithSideWrite([&](Db& db) -> absl::StatusOr<int64_t> {
          QUELL_ASSIGN_OR_RETURN(
              Stmt * s, db.Prepare("DELETE FROM detections WHERE rowid IN (SELECT rowid FROM "
                                   "detections WHERE rowid < ?1 AND received_at < ?3 "
                                   "ORDER BY rowid LIMIT ?2)"));
          StmtUse use(s);
          use->BindInt(1, end);
          use->BindInt(2, kChunk);
          use->BindTime(3, received_before);
          QUELL_RETURN_IF_ERROR(use->Run());
          return db.changes();
        }));
    total += n;
    if (n < kChunk) return total;
  }
}

absl::StatusOr<std::vector<ListInfo>> SqliteStore::Lists() {
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<ListInfo>> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s,
                           db.Prepare("SELECT name, protected, kind FROM lists ORDER BY name"));
    StmtUse use(s);
    std::vector<ListInfo> out;
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      out.push_back({.name = std::string(use->ColumnText(0)),
                     .is_protected = use->ColumnInt(1) != 0,
                     .kind = std::string(use->ColumnText(2))});
    }
    return out;
  });
}

absl::StatusOr<std::vector<std::string>> SqliteStore::ListEntries(std::string_view name) {
  return WithRead([&](Db& db) -> absl::StatusOr<std::vector<std::string>> {
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT entity FROM list_entries WHERE list = ?1 ORDER BY entity"));
    StmtUse use(s);
    use->BindTextStatic(1, name);
    std::vector<std::string> out;
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      out.emplace_back(use->ColumnText(0));
    }
    return out;
  });
}

absl::StatusOr<int64_t> SqliteStore::ScanListEntries(
    const std::function<absl::Status(std::string_view list, std::string_view entity)>& fn) {
  return WithRead([&](Db& db) -> absl::StatusOr<int64_t> {
    QUELL_ASSIGN_OR_RETURN(int64_t seq, QueryLastSeq(db));  // same read transaction
    QUELL_ASSIGN_OR_RETURN(
        Stmt * s, db.Prepare("SELECT list, entity FROM list_entries ORDER BY list, entity"));
    StmtUse use(s);
    while (true) {
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) break;
      QUELL_RETURN_IF_ERROR(fn(use->ColumnText(0), use->ColumnText(1)));
    }
    return seq;
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

absl::Status SqliteStore::RevokeKey(std::string_view id, absl::Time at, bool keep_last_admin) {
  absl::StatusOr<bool> r = WithSideWrite([&](Db& db) -> absl::StatusOr<bool> {
    QUELL_ASSIGN_OR_RETURN(Stmt * s, db.Prepare("SELECT revoked_at IS NOT NULL, role = 'admin' "
                                                "FROM api_keys WHERE id = ?1"));
    bool revoked = false, admin = false;
    {
      StmtUse use(s);
      use->BindTextStatic(1, id);
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (!row) return absl::NotFoundError(absl::StrCat("no api key ", AV(id)));
      revoked = use->ColumnInt(0) != 0;
      admin = use->ColumnInt(1) != 0;
    }
    if (revoked) return true;        // revoking twice is fine and changes nothing
    if (keep_last_admin && admin) {  // the write lock is held: no other revoke in between
      QUELL_ASSIGN_OR_RETURN(Stmt * c, db.Prepare("SELECT COUNT(*) FROM api_keys "
                                                  "WHERE role = 'admin' AND revoked_at IS NULL"));
      StmtUse use(c);
      QUELL_ASSIGN_OR_RETURN(bool row, use->Step());
      if (row && use->ColumnInt(0) <= 1) {
        return absl::FailedPreconditionError(
            "this is the last active admin key: create another admin key before revoking it");
      }
    }
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

absl::Status CheckSqliteLedger(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(dir) / kSqliteFileName, ec)) {
    return absl::OkStatus();
  }
  // --data naming the database file itself (or any file) is a slip worth naming.
  if (std::filesystem::is_regular_file(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, " is a file: --data takes the data directory",
                                            " (the one that holds ", AV(kSqliteFileName), ")"));
  }
  return absl::NotFoundError(
      absl::StrCat("no ledger in ", dir, " (no ", AV(kSqliteFileName), "): check --data"));
}

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

absl::StatusOr<int64_t> SqliteCheckpointRunsForTest(Store& store) {
  auto* s = dynamic_cast<SqliteStore*>(&store);
  if (s == nullptr) return absl::InvalidArgumentError("not a SQLite store");
  return s->CheckpointRuns();
}

absl::StatusOr<int64_t> SqlitePrefetchTakenForTest(Store& store) {
  auto* s = dynamic_cast<SqliteStore*>(&store);
  if (s == nullptr) return absl::InvalidArgumentError("not a SQLite store");
  return s->prefetch().taken();
}

absl::StatusOr<int64_t> SqliteWalSyncsForTest(Store& store) {
  auto* s = dynamic_cast<SqliteStore*>(&store);
  if (s == nullptr) return absl::InvalidArgumentError("not a SQLite store");
  return s->WalSyncs();
}

}  // namespace quell::ledger
