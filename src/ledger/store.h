// The storage seam of the ledger. A Store persists changes (the hash-chained log) and the
// materialised views the API reads (mitigations by id and entity, idempotency records,
// API keys). Two backends implement it: sqlite/ (embedded, the default) and, later,
// postgres/. Business logic never talks SQL: it goes through this interface.
//
// Writes happen only inside a Txn, which only the ledger's commit thread uses (see
// ledger.h). Reads outside a Txn are thread-safe and see committed data only.
//
// Every backend implements the whole interface; one parameterised test suite
// (store_test.cc) runs against each.
#ifndef QUELL_LEDGER_STORE_H_
#define QUELL_LEDGER_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "ledger/change.h"

namespace quell::ledger {

// A stored reply to a request made with an Idempotency-Key.
struct IdempotencyRecord {
  std::string scope;         // who and where: "<key id> <METHOD> <route>"
  std::string key;           // the client's Idempotency-Key
  std::string request_hash;  // hex SHA-256 of the request body
  int status = 0;            // HTTP status of the stored reply
  std::string response;      // body of the stored reply
  absl::Time created_at;
};

// An API key. The secret is never stored, only its SHA-256.
struct ApiKey {
  std::string id;                    // public part, "k_..."
  std::string secret_hash;           // hex SHA-256 of the secret
  std::string role;                  // admin | detector | enforcer | reviewer | viewer
  std::vector<std::string> sources;  // detector keys: the sources it may submit as
  std::string name;                  // free text
  absl::Time created_at;
  std::optional<absl::Time> revoked_at;
};

// A detection as received (SPEC POST /v1/detections), kept for idempotency per
// (source, id), timelines and backtests. Not a ledger change: an input, stored in the
// same transaction as the decisions it causes.
struct StoredDetection {
  std::string source;  // the detector that sent it
  std::string id;      // unique per source: the idempotency key
  std::string type;    // abuse type
  std::string entity;  // normalised entity text
  double score = 0;
  absl::Time observed_at;  // when the detector saw it
  absl::Time received_at;  // when Quell accepted it
  std::string batch;       // import batch, if any
  std::string json;        // the detection as submitted, normalised
  std::string reply;       // the per-item reply JSON returned the first time (decisions)
  // A hint from the writer, not part of the value: json starts with
  // AppendDetectionJsonHead of this row's own fields and that head is this long (0: not
  // known; a backend that elides the head then checks for it).
  size_t json_head_bytes = 0;
  // The value's fields: every one but the hint.
  auto Fields() const {
    return std::tie(source, id, type, entity, score, observed_at, received_at, batch, json, reply);
  }
  friend bool operator==(const StoredDetection& a, const StoredDetection& b) {
    return a.Fields() == b.Fields();
  }
};

//! Appends the head of a stored detection's JSON, its key fields in this order (score in
//! the shortest form that reads back the same double, observed_at in RFC 3339):
//! {"id":..,"source":..,"type":..,"entity":..,"score":..,"observed_at":".." — the
//! detection codec appends the rest (evidence, related, batch) and "}". Most stored
//! detections start with the head of their own columns: a backend may store only the
//! rest and rebuild the head when read.
void AppendDetectionJsonHead(std::string_view id, std::string_view source, std::string_view type,
                             std::string_view entity, double score, absl::Time observed_at,
                             std::string* out);

//! Appends the head of the per-item reply to an accepted detection, up to its decisions:
//! {"id":ID,"source":SOURCE,"status":"accepted","decisions":[ — the decision path
//! appends its decisions and "]}".
inline void AppendAcceptedReplyHead(std::string_view source, std::string_view id,
                                    std::string* out) {
  out->append("{\"id\":");
  core::AppendJsonString(id, out);
  out->append(",\"source\":");
  core::AppendJsonString(source, out);
  out->append(",\"status\":\"accepted\",\"decisions\":[");
}
//! The reply to an accepted detection that earned no decision. Most detections earn
//! none: a backend may store this reply as a marker and rebuild it when read.
inline void AppendNoDecisionReply(std::string_view source, std::string_view id, std::string* out) {
  AppendAcceptedReplyHead(source, id, out);
  out->append("]}");
}
inline std::string NoDecisionReply(std::string_view source, std::string_view id) {
  std::string out;
  AppendNoDecisionReply(source, id, &out);
  return out;
}

// Names one detection: (source, id). Views into strings the caller keeps alive.
struct DetectionKey {
  std::string_view source;
  std::string_view id;
};

// One published policy set (a kPolicySet change, materialised).
struct PolicySetVersion {
  int64_t version = 0;  // 1, 2, 3...; never repeats
  int64_t seq = 0;      // the change that published it
  std::string yaml;
  absl::Time created_at;
  std::string actor;
};

// A named list of entities (kList changes, materialised).
struct ListInfo {
  std::string name;
  bool is_protected = false;  // payload field "protected"
  std::string kind;           // payload field "kind", free text ("" if never given)
};

struct MitigationQuery {
  std::optional<core::Entity> entity;
  std::optional<core::MitigationState> state;
  std::string action;  // "" = any
  std::string policy;  // "" = any
  std::string source;  // "" = any
  int limit = 100;
  std::string cursor;  // "" = first page; else the id after which to continue
};

struct MitigationPage {
  std::vector<core::Mitigation> mitigations;  // newest first (by id)
  std::string next_cursor;                    // "" when this is the last page
};

// One entity a batch about to be decided will read (Store::PrefetchEntities): its
// mitigations live or created at or after `since` (InfiniteFuture: the live ones).
struct EntityRead {
  core::Entity entity;
  absl::Time since;
};

// A write transaction. Confined to the commit thread; not thread-safe.
// Reads inside a Txn see the Txn's own uncommitted writes.
class Txn {
 public:
  virtual ~Txn() = default;

  //! The mitigation with `id`, or nullopt.
  virtual absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) = 0;
  //! Live (pending_approval, scheduled, active) mitigations of `entity` with `action`.
  virtual absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& entity,
                                                                 std::string_view action) = 0;
  //! The stored reply for (scope, key), or nullopt.
  virtual absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                          std::string_view key) = 0;
  //! kAlreadyExists if (scope, key) is already stored.
  virtual absl::Status PutIdempotency(const IdempotencyRecord& record) = 0;

  //! Appends `change` to the log: assigns seq (last + 1), `at` (= `now` of Begin,
  //! truncated to microseconds), prev_hash and hash, and returns the completed change.
  //! kPolicySet changes (payload {"version": N, "yaml": "..."}, N = NextPolicyVersion())
  //! and kList changes (payload {"list": name, "add": [entities], "remove": [entities],
  //! "protected": bool?, "kind": string?}; removes apply after adds) are materialised
  //! too; a malformed payload is kInvalidArgument; their subject defaults to the version
  //! or the list name.
  //! For kMitigation changes it also upserts the mitigation row: `mitigation` is required,
  //! its seq must already equal the seq this change gets (use NextSeq()); an empty
  //! payload is filled with core::MitigationToJson(*mitigation), a non-empty one must
  //! equal it; empty subject/entity default to the mitigation's id/entity. Violations are
  //! kInvalidArgument, as is a non-null `mitigation` on another kind. On error nothing
  //! was written.
  virtual absl::StatusOr<Change> Append(Change change, const core::Mitigation* mitigation) = 0;
  //! The seq the next Append will assign.
  virtual int64_t NextSeq() const = 0;
  //! Append of a kMitigation change for `mitigation` (its seq must be NextSeq()), but only
  //! if the stored mitigation with its id is still the version at `expected_seq` (as read
  //! earlier, e.g. by a scan outside this Txn) with the same entity, action, created_at,
  //! source and policy: then it returns the completed change. Otherwise it writes nothing
  //! and returns nullopt (the caller re-reads). For bulk updates of mitigations already
  //! read, such as a rollback: a backend needs no read nor parse per row. Other errors as
  //! Append's. The default reads the row with GetMitigation and calls Append.
  virtual absl::StatusOr<std::optional<Change>> AppendMitigationIfAt(
      Change change, const core::Mitigation& mitigation, int64_t expected_seq) {
    absl::StatusOr<std::optional<core::Mitigation>> cur = GetMitigation(mitigation.id);
    if (!cur.ok()) return cur.status();
    const std::optional<core::Mitigation>& m = *cur;
    if (!m || m->seq != expected_seq || m->entity.str() != mitigation.entity.str() ||
        m->action != mitigation.action || m->created_at != mitigation.created_at ||
        m->source != mitigation.source || m->policy != mitigation.policy) {
      return std::nullopt;
    }
    absl::StatusOr<Change> c = Append(std::move(change), &mitigation);
    if (!c.ok()) return c.status();
    return std::optional<Change>(*std::move(c));
  }

  //! The stored detection (source, id), or nullopt.
  virtual absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                                      std::string_view id) = 0;
  //! Stores `d`: kAlreadyExists if (source, id) is stored; kInvalidArgument if source or
  //! id is empty. Undone by a savepoint rollback like every other write.
  virtual absl::Status PutDetection(const StoredDetection& d) = 0;
  //! For each key, in order, the reply stored with that detection, or nullopt if it is
  //! not stored. Sees this Txn's own writes. The default asks GetDetection per key;
  //! a backend answers a batch in a few statements.
  virtual absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
      const std::vector<DetectionKey>& keys) {
    std::vector<std::optional<std::string>> out;
    out.reserve(keys.size());
    for (const DetectionKey& k : keys) {
      absl::StatusOr<std::optional<StoredDetection>> d = GetDetection(k.source, k.id);
      if (!d.ok()) return d.status();
      out.push_back(*d ? std::optional<std::string>(std::move((*d)->reply)) : std::nullopt);
    }
    return out;
  }
  //! Stores each of `ds` in order, as PutDetection one by one would, with its codes. On
  //! error some of them may be stored: the caller's savepoint undoes them. The default
  //! calls PutDetection per item; a backend writes a batch in a few statements.
  virtual absl::Status PutDetections(const std::vector<StoredDetection>& ds) {
    for (const StoredDetection& d : ds) {
      absl::Status st = PutDetection(d);
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }
  //! Stores, in order, each of `ds` whose key is not stored yet (the keys of `ds` differ)
  //! and says for each whether it was stored: false means the key was already stored
  //! and the row was not written. For detections whose row is complete before the
  //! duplicate check (no decision to wait for): one pass instead of a check, then a write.
  //! kInvalidArgument if a source or id is empty.
  virtual absl::StatusOr<std::vector<bool>> PutNewDetections(
      const std::vector<StoredDetection>& ds) = 0;
  //! How many mitigations of `entity` were created at or after `since`, of `policy` ("" =
  //! any) and `action` ("" = any), that count as prior offences (core::CountsAsPrior: not
  //! revoked, rejected, suppressed or expired unapproved; not shadow if `exclude_shadow`).
  //! Sees this Txn's own writes. Escalation and prior() read it.
  virtual absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity,
                                                   std::string_view policy, std::string_view action,
                                                   absl::Time since, bool exclude_shadow) = 0;
  //! Every mitigation of `entity` that is live or was created at or after `since`, in
  //! no particular order: what CountMitigations (with that `since` or a later one) and
  //! FindLive answer, read at once, so that a caller asking both about one entity (the
  //! escalation count, then create-or-extend) reads the entity once. InfiniteFuture: the
  //! live ones only. Sees this Txn's own writes.
  virtual absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(
      const core::Entity& entity, absl::Time since) = 0;
  //! The version the next kPolicySet change must carry: 1 + the highest published.
  virtual absl::StatusOr<int64_t> NextPolicyVersion() = 0;
  //! Whether `entity` is on list `name` (false if there is no such list), as
  //! core::EntityList matches: held, or an `ip:` / `cidr:` inside a `cidr:` entry. A
  //! bounded number of index probes whatever the list's size (one per prefix length of
  //! the entity's family at most: core::CoveringCidrEntries).
  virtual absl::StatusOr<bool> ListHas(std::string_view name, const core::Entity& entity) = 0;

  //! Marks a savepoint (they nest); RollbackToSavepoint undoes every write (and seq)
  //! after the innermost one and ends it; ReleaseSavepoint keeps the writes and ends it.
  //! kFailedPrecondition without an open savepoint.
  virtual absl::Status Savepoint() = 0;
  virtual absl::Status RollbackToSavepoint() = 0;
  virtual absl::Status ReleaseSavepoint() = 0;

  //! Makes every write durable (per the configured synchronous mode). After an error
  //! nothing of this Txn is visible, except where a backend says otherwise (the SQLite
  //! store: a commit whose WAL fsync then failed is visible, kDataLoss).
  virtual absl::Status Commit() = 0;
  //! Commits like Commit(), but the writes may not be durable yet: they are visible at
  //! once and durable once the Store's SyncCommitted() has returned OK. The ledger uses
  //! it to run the next batch while this one's fsync is in flight, and acknowledges a
  //! batch only after its sync. The default is Commit(): durable at once.
  virtual absl::Status CommitVisible() { return Commit(); }
  //! Abandons the transaction. Also done by the destructor if neither was called.
  virtual void Rollback() = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  //! Starts the one write transaction. Called only from the commit thread (or a CLI
  //! process with the store to itself); concurrent writers from other processes are
  //! serialised by the backend (SQLite's lock, PostgreSQL's row lock on the chain head),
  //! and the chain head is read inside the transaction. kFailedPrecondition if a Txn of
  //! this Store is still open; kUnavailable if another process holds the lock too long.
  //! The Txn must not outlive the Store.
  virtual absl::StatusOr<std::unique_ptr<Txn>> Begin(absl::Time now) = 0;
  //! Makes every transaction committed so far with CommitVisible() durable. Thread-safe:
  //! may run on another thread while the next Txn is open. Nothing to do by default.
  virtual absl::Status SyncCommitted() { return absl::OkStatus(); }
  //! Whether CommitVisible can leave a commit visible before it is durable (then readers
  //! that pass changes on stop at the ledger's durable seq). False by default.
  virtual bool DefersSync() const { return false; }

  // ---- reads: thread-safe, committed data only (after CommitVisible, possibly before
  // SyncCommitted: visible a few milliseconds before durable) ----

  //! A hint: transactions about to begin will read these entities (Txn::EntityMitigations
  //! with the same `since` or a later one). A store may read them now, on the caller's
  //! thread, so that the Txn answers them without a read when nothing has been written to
  //! the entity since (the commit thread runs the whole write path; this moves its reads
  //! to the threads that prepare the batches). Errors are not reported: a read not done
  //! ahead is done in the Txn. The default does nothing.
  virtual void PrefetchEntities(const std::vector<EntityRead>& reads) { (void)reads; }

  //! The highest committed seq (0 if the log is empty).
  virtual absl::StatusOr<int64_t> LastSeq() = 0;
  // `limit` arguments must be in [1, 10000]; kInvalidArgument otherwise.

  //! Changes with seq > after, in seq order, at most `limit`.
  virtual absl::StatusOr<std::vector<Change>> ReadChanges(int64_t after, int limit) = 0;
  //! As ReadChanges, of one kind only: for readers of a rare kind (reviews) that would
  //! otherwise page through the whole log. The default filters ReadChanges pages; the
  //! backends answer it with one query.
  virtual absl::StatusOr<std::vector<Change>> ReadChangesOfKind(ChangeKind kind, int64_t after,
                                                                int limit) {
    std::vector<Change> out;
    while (static_cast<int>(out.size()) < limit) {
      absl::StatusOr<std::vector<Change>> page = ReadChanges(after, limit);
      if (!page.ok()) return page.status();
      for (Change& c : *page) {
        if (c.kind == kind && static_cast<int>(out.size()) < limit) out.push_back(std::move(c));
      }
      if (static_cast<int>(page->size()) < limit) break;
      after = page->back().seq;
    }
    return out;
  }
  //! Changes about `entity` with seq > `after`, oldest first, at most `limit` (page on
  //! with the last one's seq; ForEachEntityChange reads them all).
  virtual absl::StatusOr<std::vector<Change>> ReadEntityChanges(const core::Entity& entity,
                                                                int limit, int64_t after = 0) = 0;
  virtual absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) = 0;
  //! Newest first by id; every set filter must match; `cursor` continues after that id.
  virtual absl::StatusOr<MitigationPage> ListMitigations(const MitigationQuery& query) = 0;
  //! Calls `fn` for every live mitigation (pending_approval, scheduled, active), from one
  //! consistent read, and returns the seq that read is as of. Used to build the index and
  //! to serve snapshots. Stops early with fn's error.
  virtual absl::StatusOr<int64_t> ScanLive(
      const std::function<absl::Status(const core::Mitigation&)>& fn) = 0;
  //! Calls `start` with the seq of one consistent read, then `fn` with the stored JSON
  //! (core::MitigationToJson's bytes) of every ACTIVE mitigation as of that seq; returns
  //! the seq. For snapshots: nothing is parsed or re-serialised.
  virtual absl::StatusOr<int64_t> ScanActiveJson(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(std::string_view json)>& fn) = 0;
  //! What enforcing an active mitigation takes (GET /v1/snapshot?view=enforcement):
  //! the views are valid only during the callback.
  struct ActiveEntry {
    std::string_view id;
    std::string_view entity;
    std::string_view action;
    absl::Time expires_at;
  };
  //! As ScanActiveJson, but only the enforcement fields of each ACTIVE mitigation. The
  //! default parses the stored JSON; a backend may read its columns directly.
  virtual absl::StatusOr<int64_t> ScanActiveEntries(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const ActiveEntry&)>& fn) {
    return ScanActiveJson(start, [&fn](std::string_view json) -> absl::Status {
      absl::StatusOr<core::Mitigation> m = core::MitigationFromJson(json);
      if (!m.ok()) return m.status();
      return fn(ActiveEntry{m->id, m->entity.str(), m->action, m->expires_at});
    });
  }
  //! The scheduler's own column: calls `start` with the seq of one consistent read, then
  //! `fn` with the id and next transition time (due_at) of every mitigation row that has
  //! one, as of that seq; returns the seq. What ListDue and NextDue go by: for `quell
  //! audit verify`, which checks it against the changes (active: expires_at, scheduled:
  //! starts_at, any other state: none). The id is valid only during the callback.
  struct DueEntry {
    std::string_view id;
    absl::Time due_at;
  };
  virtual absl::StatusOr<int64_t> ScanDue(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const DueEntry&)>& fn) = 0;
  //! Every row of the mitigations table as stored, with the payload of the change its
  //! `seq` names ("" if there is no such change), from one consistent read: calls
  //! `start` with that read's seq, `fn` per row; returns the seq. For `quell audit
  //! verify`, which checks each row's columns against its change (the list filters and
  //! the timelines read these columns). The views are valid only during the callback.
  struct MitigationRow {
    std::string_view id, entity, action, state, source, policy;
    absl::Time created_at;
    int64_t seq = 0;
    std::string_view payload;
  };
  virtual absl::StatusOr<int64_t> ScanMitigationRows(
      const std::function<void(int64_t seq)>& start,
      const std::function<absl::Status(const MitigationRow&)>& fn) = 0;
  //! Up to `limit` live mitigations whose next transition is due at `now`: active ones
  //! with expires_at <= now, scheduled ones with starts_at <= now.
  virtual absl::StatusOr<std::vector<core::Mitigation>> ListDue(absl::Time now, int limit) = 0;
  //! The earliest upcoming transition time of any live mitigation, if any.
  virtual absl::StatusOr<std::optional<absl::Time>> NextDue() = 0;
  //! Deletes idempotency records created before `before`; returns how many.
  virtual absl::StatusOr<int64_t> PurgeIdempotency(absl::Time before) = 0;

  // ---- detections ----
  //! The stored detection (source, id), or nullopt.
  virtual absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view source,
                                                                      std::string_view id) = 0;
  //! Calls `fn` for every detection with from <= observed_at < to, in observed_at order
  //! (ties in storage order, which is not submission order: within a batch, detections
  //! that earned no decision are stored first), from one consistent read, streaming (no
  //! result set in memory); for backtests. Stops early with fn's error. `fn` must not
  //! call back into the Store.
  virtual absl::Status ScanDetections(
      absl::Time from, absl::Time to,
      const std::function<absl::Status(const StoredDetection&)>& fn) = 0;
  //! Deletes detections received before `received_before` and returns how many, in small
  //! transactions so writers are never held up for long. Deletes oldest-stored first and
  //! stops at the first detection received at or after `received_before`: received_at
  //! is the commit clock, which follows storage order unless the clock steps back.
  virtual absl::StatusOr<int64_t> PurgeDetections(absl::Time received_before) = 0;

  //! As Txn::CountMitigations, on committed data.
  virtual absl::StatusOr<int64_t> CountMitigations(const core::Entity& entity,
                                                   std::string_view policy, std::string_view action,
                                                   absl::Time since, bool exclude_shadow) = 0;

  // ---- policy sets ----
  //! The published set `version`, or nullopt.
  virtual absl::StatusOr<std::optional<PolicySetVersion>> GetPolicySet(int64_t version) = 0;
  //! The newest published set, or nullopt if none was ever published.
  virtual absl::StatusOr<std::optional<PolicySetVersion>> LatestPolicySet() = 0;

  // ---- lists ----
  //! Every list that was ever changed, by name.
  virtual absl::StatusOr<std::vector<ListInfo>> Lists() = 0;
  //! The entities on list `name`, sorted (empty if no such list).
  virtual absl::StatusOr<std::vector<std::string>> ListEntries(std::string_view name) = 0;
  //! Calls `fn(list, entity)` for every entry of every list, ordered by list then entity,
  //! from one consistent read, and returns the seq that read is as of (follow the change
  //! feed from there). Stops early with fn's error.
  virtual absl::StatusOr<int64_t> ScanListEntries(
      const std::function<absl::Status(std::string_view list, std::string_view entity)>& fn) = 0;

  // ---- API keys: small, rarely written; direct writes outside the log ----
  //! kAlreadyExists if the id or secret_hash is taken; kInvalidArgument if id,
  //! secret_hash or role is empty.
  virtual absl::Status CreateKey(const ApiKey& key) = 0;
  //! Every key, revoked ones included, oldest first.
  virtual absl::StatusOr<std::vector<ApiKey>> ListKeys() = 0;
  //! kNotFound if no such key; revoking twice is OK. With `keep_last_admin`,
  //! kFailedPrecondition if the key is the last active admin key (checked in the same
  //! transaction as the revoke, so two revokes at once cannot both pass it).
  virtual absl::Status RevokeKey(std::string_view id, absl::Time at,
                                 bool keep_last_admin = false) = 0;
  //! A number that changes whenever any process creates or revokes a key.
  virtual absl::StatusOr<int64_t> KeysVersion() = 0;
};

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_STORE_H_
