// PostgreSQL-only properties of the ledger store (the shared Store contract runs in
// ledger/store_test.cc): several nodes writing at once, visibility in seq order for a
// tailer, migrations, errors with SQLSTATE, connection loss.
#include "ledger/postgres/postgres_store.h"

#include <libpq-fe.h>
#include <poll.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "gtest/gtest.h"
#include "ledger/internal/test_backends.h"
#include "ledger/postgres/internal/test_cluster.h"

namespace quell::ledger {
namespace {

using pg_internal::TestCluster;

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

std::string FreshDatabase() {
  auto cluster = TestCluster::Shared();
  EXPECT_TRUE(cluster.ok()) << cluster.status();  // PostgreSQL must be installed
  if (!cluster.ok()) return "";
  auto url = (*cluster)->NewDatabase();
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : "";
}

absl::Status AppendNote(Txn& txn, std::string subject) {
  Change c;
  c.kind = ChangeKind::kReview;
  c.actor = "node";
  c.subject = std::move(subject);
  c.payload = R"({"note":"x"})";
  return txn.Append(std::move(c), nullptr).status();
}

// Three "nodes" (stores on the same database) commit transactions of several changes at
// once while a fourth tails ReadChanges(last, ...). Every node's changes chain onto one
// another's (no fork), seqs are gap-free, and the tailer, which trusts `seq > last`,
// sees every change exactly once: a higher seq never became visible before a lower one.
TEST(PostgresStore, ConcurrentNodesSerialiseAndATailerNeverSkips) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  constexpr int kNodes = 3, kTxns = 40, kPerTxn = 5;
  std::vector<std::unique_ptr<Store>> nodes;
  for (int i = 0; i < kNodes + 1; ++i) {
    auto s = OpenPostgresStore({.url = url});
    ASSERT_TRUE(s.ok()) << s.status();
    nodes.push_back(*std::move(s));
  }
  std::atomic<int> writers_left{kNodes};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int n = 0; n < kNodes; ++n) {
    threads.emplace_back([&, n] {
      for (int t = 0; t < kTxns; ++t) {
        auto txn = nodes[n]->Begin(kT0 + absl::Seconds(t));
        if (!txn.ok()) {
          ++failures;
          continue;
        }
        for (int i = 0; i < kPerTxn; ++i) {
          if (!AppendNote(**txn, absl::StrCat(n, "/", t, "/", i)).ok()) ++failures;
        }
        if (!(*txn)->Commit().ok()) ++failures;
      }
      --writers_left;
    });
  }
  std::vector<Change> seen;
  int64_t last = 0;
  bool done = false;
  while (!done) {
    done = writers_left.load() == 0;  // one more read after the writers finished
    auto batch = nodes[kNodes]->ReadChanges(last, 1000);
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (Change& c : *batch) {
      last = c.seq;
      seen.push_back(std::move(c));
    }
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_EQ(seen.size(), static_cast<size_t>(kNodes * kTxns * kPerTxn));
  std::map<std::string, int> subjects;
  std::string prev(kGenesisHash);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].seq, static_cast<int64_t>(i + 1));
    EXPECT_EQ(seen[i].prev_hash, prev) << "fork at seq " << seen[i].seq;
    EXPECT_EQ(seen[i].hash, ChainHash(seen[i]));
    prev = seen[i].hash;
    ++subjects[seen[i].subject];
  }
  EXPECT_EQ(subjects.size(), seen.size());  // no duplicates
  auto last_seq = nodes[0]->LastSeq();
  ASSERT_TRUE(last_seq.ok());
  EXPECT_EQ(*last_seq, static_cast<int64_t>(seen.size()));
}

// A writer holding the chain head makes another node's Begin wait, and with a short
// lock_timeout fail as kUnavailable (SQLSTATE 55P03) instead of hanging.
TEST(PostgresStore, SecondWriterWaitsForTheHeadAndTimesOutAsUnavailable) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto a = OpenPostgresStore({.url = url});
  auto b = OpenPostgresStore({.url = url, .lock_timeout_ms = 200});
  ASSERT_TRUE(a.ok() && b.ok());
  auto ta = (*a)->Begin(kT0);
  ASSERT_TRUE(ta.ok()) << ta.status();
  ASSERT_TRUE(AppendNote(**ta, "a").ok());
  auto tb = (*b)->Begin(kT0);
  EXPECT_EQ(tb.status().code(), absl::StatusCode::kUnavailable) << tb.status();
  EXPECT_NE(tb.status().message().find("55P03"), std::string_view::npos) << tb.status();
  ASSERT_TRUE((*ta)->Commit().ok());
  tb = (*b)->Begin(kT0);
  ASSERT_TRUE(tb.ok()) << tb.status();
  EXPECT_EQ((*tb)->NextSeq(), 2);
}

TEST(PostgresStore, MigrationsRunOnceAndOnlyWhenAllowed) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto refused = OpenPostgresStore({.url = url, .apply_migrations = false});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  ASSERT_TRUE(OpenPostgresStore({.url = url}).ok());
  ASSERT_TRUE(OpenPostgresStore({.url = url}).ok());
  EXPECT_TRUE(OpenPostgresStore({.url = url, .apply_migrations = false}).ok());
  // Fails (division by zero) unless exactly one row per version was recorded.
  EXPECT_TRUE(TestCluster::Exec(
                  url, absl::StrCat("SELECT 1 / (CASE WHEN COUNT(*) = ", PostgresSchemaVersion(),
                                    " AND MAX(version) = ", PostgresSchemaVersion(),
                                    " THEN 1 ELSE 0 END) FROM schema_version"))
                  .ok());
}

TEST(PostgresStore, ErrorsCarryTheSqlstate) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(TestCluster::Exec(url, "DROP TABLE chain_head").ok());
  auto txn = (*s)->Begin(kT0);
  EXPECT_FALSE(txn.ok());
  EXPECT_NE(txn.status().message().find("SQLSTATE 42P01"), std::string_view::npos) << txn.status();
}

// Killed server connections: the operation that finds out fails as kUnavailable, and
// the store reconnects on the next use.
// Connections the server closed while idle (a restart, an admin's terminate) are only
// found closed by their next statement: that first statement, a read or a write
// transaction's BEGIN, is tried again on a fresh connection (each failed once, a 503).
TEST(PostgresStore, ConnectionsClosedWhileIdleAreReopenedByTheirNextUse) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok());
  {  // several read connections, idle in the pool afterwards
    std::vector<std::thread> readers;
    for (int t = 0; t < 3; ++t) {
      readers.emplace_back([&] {
        for (int i = 0; i < 200; ++i) ASSERT_TRUE((*s)->LastSeq().ok());
      });
    }
    for (std::thread& r : readers) r.join();
  }
  ASSERT_TRUE(TestCluster::Exec(url,
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "datname = current_database() AND pid <> pg_backend_pid()")
                  .ok());
  for (int i = 0; i < 3; ++i) {
    auto seq = (*s)->LastSeq();
    EXPECT_TRUE(seq.ok()) << i << ": " << seq.status();
  }
  auto txn = (*s)->Begin(kT0);
  ASSERT_TRUE(txn.ok()) << txn.status();
  ASSERT_TRUE(AppendNote(**txn, "after").ok());
  EXPECT_TRUE((*txn)->Commit().ok());
}

std::vector<std::string> Subjects(Store& s) {
  std::vector<std::string> out;
  auto changes = s.ReadChanges(0, 100);
  EXPECT_TRUE(changes.ok()) << changes.status();
  if (!changes.ok()) return out;
  for (size_t i = 0; i < changes->size(); ++i) {
    EXPECT_EQ((*changes)[i].seq, static_cast<int64_t>(i + 1));
    out.push_back((*changes)[i].subject);
  }
  return out;
}

// Writes are deferred and savepoints sent lazily (one round trip per read): rolling back
// to a savepoint undoes exactly what followed it, whether its SAVEPOINT was still queued,
// sent with a later read, or released inside an outer one; seqs stay gap-free.
TEST(PostgresStore, DeferredWritesHonourSavepoints) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok()) << s.status();
  auto txn = (*s)->Begin(kT0);
  ASSERT_TRUE(txn.ok()) << txn.status();
  Txn& t = **txn;
  ASSERT_TRUE(t.Savepoint().ok());  // queued, then dropped
  ASSERT_TRUE(AppendNote(t, "a").ok());
  ASSERT_TRUE(t.RollbackToSavepoint().ok());
  ASSERT_TRUE(t.Savepoint().ok());  // nested, the inner one released while queued
  ASSERT_TRUE(AppendNote(t, "b").ok());
  ASSERT_TRUE(t.Savepoint().ok());
  ASSERT_TRUE(AppendNote(t, "c").ok());
  ASSERT_TRUE(t.ReleaseSavepoint().ok());
  ASSERT_TRUE(t.ReleaseSavepoint().ok());
  ASSERT_TRUE(t.Savepoint().ok());  // sent by a read, then rolled back on the server
  ASSERT_TRUE(AppendNote(t, "d").ok());
  ASSERT_TRUE(t.GetMitigation("m_none").ok());
  ASSERT_TRUE(AppendNote(t, "d2").ok());
  ASSERT_TRUE(t.RollbackToSavepoint().ok());
  ASSERT_TRUE(t.Savepoint().ok());  // a savepoint no write followed
  ASSERT_TRUE(t.GetMitigation("m_none").ok());
  ASSERT_TRUE(t.RollbackToSavepoint().ok());
  ASSERT_TRUE(t.Savepoint().ok());  // sent, then released
  ASSERT_TRUE(AppendNote(t, "e").ok());
  ASSERT_TRUE(t.GetMitigation("m_none").ok());
  ASSERT_TRUE(t.ReleaseSavepoint().ok());
  EXPECT_EQ(t.NextSeq(), 4);
  ASSERT_TRUE(t.Commit().ok());
  EXPECT_EQ(Subjects(**s), (std::vector<std::string>{"b", "c", "e"}));
}

// An active manual block of `entity` from kT0, for an hour.
core::Mitigation MakeMitigation(std::string_view id, std::string_view entity) {
  core::Mitigation m;
  m.id = id;
  m.entity = *core::Entity::Parse(entity);
  m.action = "block";
  m.state = core::MitigationState::kActive;
  m.created_at = m.updated_at = m.starts_at = kT0;
  m.expires_at = kT0 + absl::Hours(1);
  m.source = "manual";
  return m;
}

// Appends the kMitigation change of `m`, whose seq becomes the next one.
absl::StatusOr<Change> AppendRecord(Txn& txn, core::Mitigation& m, std::string actor = "node",
                                    std::string subject = "", std::string change_entity = "") {
  m.seq = txn.NextSeq();
  Change c;
  c.kind = ChangeKind::kMitigation;
  c.actor = std::move(actor);
  c.subject = std::move(subject);
  c.entity = std::move(change_entity);
  return txn.Append(std::move(c), &m);
}

absl::StatusOr<Change> AppendMitigation(Txn& txn, std::string_view id, std::string_view entity,
                                        std::string subject = "", std::string change_entity = "") {
  core::Mitigation m = MakeMitigation(id, entity);
  return AppendRecord(txn, m, "node", std::move(subject), std::move(change_entity));
}

// A Txn answers FindLive and CountMitigations without a query for entities its store
// knows to have no mitigation; what other nodes wrote since its last Begin, and its own
// uncommitted writes, must still be seen (the set is caught up under the chain head lock).
TEST(PostgresStore, FindLiveSeesWhatOtherNodesWroteSinceTheLastBegin) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto a = OpenPostgresStore({.url = url});
  auto b = OpenPostgresStore({.url = url});
  ASSERT_TRUE(a.ok() && b.ok());
  const core::Entity x = *core::Entity::Parse("user:x");
  const core::Entity y = *core::Entity::Parse("user:y");
  auto live = [&](Store& s, const core::Entity& e) -> int64_t {
    auto txn = s.Begin(kT0);
    EXPECT_TRUE(txn.ok()) << txn.status();
    if (!txn.ok()) return -1;
    auto found = (*txn)->FindLive(e, "block");
    auto count = (*txn)->CountMitigations(e, "", "", kT0 - absl::Hours(1), false);
    EXPECT_TRUE(found.ok() && count.ok());
    if (!found.ok() || !count.ok()) return -1;
    EXPECT_EQ(static_cast<int64_t>(found->size()), *count);
    (*txn)->Rollback();
    return *count;
  };
  EXPECT_EQ(live(**a, x), 0);  // a's set is loaded (empty)
  {
    auto txn = (*b)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(AppendMitigation(**txn, "m_x1", "user:x").ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  EXPECT_EQ(live(**a, x), 1);  // caught up at Begin
  EXPECT_EQ(live(**a, y), 0);
  {
    // Its own writes, and again after a rolled-back transaction and a savepoint.
    auto txn = (*a)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE((*txn)->Savepoint().ok());
    ASSERT_TRUE(AppendMitigation(**txn, "m_y1", "user:y").ok());
    auto found = (*txn)->FindLive(y, "block");
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(found->size(), 1u);
    ASSERT_TRUE((*txn)->RollbackToSavepoint().ok());
    found = (*txn)->FindLive(y, "block");
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(found->size(), 0u);
    (*txn)->Rollback();
  }
  {
    auto txn = (*b)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(AppendMitigation(**txn, "m_y2", "user:y").ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  EXPECT_EQ(live(**a, y), 1);
  // A store opened after the writes loads them from the mitigations table.
  auto c = OpenPostgresStore({.url = url});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(live(**c, x), 1);
  EXPECT_EQ(live(**c, y), 1);
}

// A group's rows reach the server as multi-row INSERTs (array literals): quotes,
// backslashes and NULLs survive them, and a mitigation written twice in one group is
// split across statements (the later version wins).
TEST(PostgresStore, MergedRowsKeepTheirTextNullsAndOrder) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok());
  auto txn = (*s)->Begin(kT0);
  ASSERT_TRUE(txn.ok());
  std::vector<core::Mitigation> written;
  for (int i = 0; i < 5; ++i) {
    // m_0 and m_1 twice
    core::Mitigation m = MakeMitigation(absl::StrCat("m_", i % 3), absl::StrCat("user:u", i % 3));
    if (i >= 3) m.state = core::MitigationState::kRevoked;
    m.reason = absl::StrCat("a \\ \"quoted\" {x,y} NULL ", i);
    auto appended = AppendRecord(**txn, m, "node \"1\"");
    ASSERT_TRUE(appended.ok()) << appended.status();
    written.push_back(m);
  }
  ASSERT_TRUE((*txn)->Commit().ok());
  auto changes = (*s)->ReadChanges(0, 100);
  ASSERT_TRUE(changes.ok());
  ASSERT_EQ(changes->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ((*changes)[i].payload, core::MitigationToJson(written[i]));
    EXPECT_EQ((*changes)[i].actor, "node \"1\"");
  }
  for (int id = 0; id < 3; ++id) {
    auto m = (*s)->GetMitigation(absl::StrCat("m_", id));
    ASSERT_TRUE(m.ok() && m->has_value());
    const core::Mitigation& want = written[id < 2 ? id + 3 : id];
    EXPECT_EQ((*m)->reason, want.reason);
    EXPECT_EQ((*m)->state, want.state);
  }
  auto due = (*s)->ListDue(kT0 + absl::Hours(2), 100);  // revoked ones have no due_at
  ASSERT_TRUE(due.ok());
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ((*due)[0].id, "m_2");
}

// The catch-up reads a change's entity as its mitigation's: Append refuses others.
TEST(PostgresStore, AMitigationChangeCarriesItsMitigationsIdAndEntity) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok());
  auto txn = (*s)->Begin(kT0);
  ASSERT_TRUE(txn.ok());
  EXPECT_EQ(AppendMitigation(**txn, "m_1", "user:x", "", "user:other").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AppendMitigation(**txn, "m_1", "user:x", "m_2").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ok = AppendMitigation(**txn, "m_1", "user:x", "m_1", "user:x");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->seq, 1);
  ASSERT_TRUE((*txn)->Commit().ok());
}

// A deferred insert that the server refuses fails the query it travelled with; a sent
// savepoint before it recovers the transaction. One that only reaches the server with
// the commit fails the commit, and nothing of the transaction is stored.
TEST(PostgresStore, AFailedDeferredWriteFailsItsCarrierAndItsSavepointRecovers) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(TestCluster::Exec(url,
                                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS "
                                "$$BEGIN IF NEW.subject = 'bad' THEN RAISE EXCEPTION 'refused'; "
                                "END IF; RETURN NEW; END$$; CREATE TRIGGER refuse BEFORE INSERT "
                                "ON changes FOR EACH ROW EXECUTE FUNCTION refuse_bad()")
                  .ok());
  {
    auto txn = (*s)->Begin(kT0);
    ASSERT_TRUE(txn.ok()) << txn.status();
    Txn& t = **txn;
    ASSERT_TRUE(t.Savepoint().ok());
    ASSERT_TRUE(AppendNote(t, "ok1").ok());
    ASSERT_TRUE(t.ReleaseSavepoint().ok());
    ASSERT_TRUE(t.Savepoint().ok());
    ASSERT_TRUE(AppendNote(t, "bad").ok());  // queued: nothing failed yet
    auto read = t.GetMitigation("m_none");
    EXPECT_FALSE(read.ok());
    EXPECT_NE(read.status().message().find("refused"), std::string_view::npos) << read.status();
    ASSERT_TRUE(t.RollbackToSavepoint().ok());
    ASSERT_TRUE(t.Savepoint().ok());
    ASSERT_TRUE(AppendNote(t, "ok2").ok());
    ASSERT_TRUE(t.ReleaseSavepoint().ok());
    ASSERT_TRUE(t.Commit().ok());
  }
  EXPECT_EQ(Subjects(**s), (std::vector<std::string>{"ok1", "ok2"}));
  {
    auto txn = (*s)->Begin(kT0);
    ASSERT_TRUE(txn.ok()) << txn.status();
    Txn& t = **txn;
    ASSERT_TRUE(t.Savepoint().ok());
    ASSERT_TRUE(AppendNote(t, "ok3").ok());
    ASSERT_TRUE(AppendNote(t, "bad").ok());
    ASSERT_TRUE(t.ReleaseSavepoint().ok());
    absl::Status st = t.Commit();
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("refused"), std::string_view::npos) << st;
  }
  EXPECT_EQ(Subjects(**s), (std::vector<std::string>{"ok1", "ok2"}));
  auto txn = (*s)->Begin(kT0);  // the connection is usable again
  ASSERT_TRUE(txn.ok()) << txn.status();
  ASSERT_TRUE(AppendNote(**txn, "ok3").ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(Subjects(**s), (std::vector<std::string>{"ok1", "ok2", "ok3"}));
}

// The batch detection statements pass their rows as array literals: ids and payloads
// with quotes, backslashes, commas, braces and non-ASCII come back byte for byte, a key
// repeated inside one batch is kAlreadyExists, and the batch keeps its order.
TEST(PostgresStore, DetectionBatchesSurviveArrayQuotingAndRepeats) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok()) << s.status();
  const std::vector<std::string> ids = {"a\"b", "c\\d", "e,f", "{g}", "h i", "NULL", "é\\\"", ""};
  std::vector<StoredDetection> ds;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    StoredDetection d;
    d.source = "src\"1";
    d.id = ids[i];
    d.type = "bot";
    d.entity = "user:x";
    d.score = 0.25 * static_cast<double>(i);
    d.observed_at = kT0;  // one instant: ScanDetections orders them by insertion
    d.received_at = kT0 + absl::Seconds(static_cast<int64_t>(i));
    d.json = absl::StrCat("{\"id\":\"", i, "\",\"x\":[1,2]}");
    d.reply = absl::StrCat("{\"r\":\"\\\\", ids[i], "\"}");
    ds.push_back(d);
  }
  auto txn = (*s)->Begin(kT0);
  ASSERT_TRUE(txn.ok()) << txn.status();
  ASSERT_TRUE((*txn)->PutDetections(ds).ok());
  std::vector<DetectionKey> keys;
  for (const StoredDetection& d : ds) keys.push_back({d.source, d.id});
  keys.push_back({"src\"1", "absent"});
  auto replies = (*txn)->GetDetectionReplies(keys);
  ASSERT_TRUE(replies.ok()) << replies.status();
  ASSERT_EQ(replies->size(), keys.size());
  for (size_t i = 0; i < ds.size(); ++i) {
    ASSERT_TRUE((*replies)[i].has_value()) << i;
    EXPECT_EQ(*(*replies)[i], ds[i].reply) << i;
  }
  EXPECT_FALSE(replies->back().has_value());
  ASSERT_TRUE((*txn)->Savepoint().ok());
  StoredDetection twice = ds[0];
  twice.id = "twice";
  EXPECT_EQ((*txn)->PutDetections({twice, twice}).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE((*txn)->RollbackToSavepoint().ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  std::vector<StoredDetection> scanned;
  ASSERT_TRUE((*s)->ScanDetections(kT0, kT0 + absl::Seconds(1),
                                   [&](const StoredDetection& d) {
                                     scanned.push_back(d);
                                     return absl::OkStatus();
                                   })
                  .ok());
  ASSERT_EQ(scanned.size(), ds.size());
  for (size_t i = 0; i < ds.size(); ++i) {
    EXPECT_EQ(scanned[i].id, ds[i].id);
    EXPECT_EQ(scanned[i].source, ds[i].source);
    EXPECT_EQ(scanned[i].json, ds[i].json);
    EXPECT_DOUBLE_EQ(scanned[i].score, ds[i].score);
    EXPECT_EQ(scanned[i].received_at, ds[i].received_at);
  }
  EXPECT_FALSE((*s)->GetDetection("src\"1", "twice")->has_value());
}

// A commit that appended changes wakes LISTENers with the new last seq; a commit that
// appended nothing (or a rollback) sends nothing.
TEST(PostgresStore, CommitNotifiesTheNewLastSeq) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto s = OpenPostgresStore({.url = url});
  ASSERT_TRUE(s.ok()) << s.status();
  std::unique_ptr<PGconn, void (*)(PGconn*)> listener(PQconnectdb(url.c_str()), &PQfinish);
  ASSERT_EQ(PQstatus(listener.get()), CONNECTION_OK);
  PQclear(PQexec(listener.get(), absl::StrCat("LISTEN ", kPostgresChangeChannel).c_str()));
  {
    auto txn = (*s)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE((*txn)->Commit().ok());  // nothing appended: no notification
    txn = (*s)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(AppendNote(**txn, "rolled back").ok());
    (*txn)->Rollback();
    txn = (*s)->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(AppendNote(**txn, "one").ok());
    ASSERT_TRUE(AppendNote(**txn, "two").ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  std::vector<std::string> payloads;
  // Wait (generously; not a timing assertion) for the one notification.
  for (int i = 0; i < 100 && payloads.empty(); ++i) {
    pollfd pfd{PQsocket(listener.get()), POLLIN, 0};
    poll(&pfd, 1, 100);
    ASSERT_EQ(PQconsumeInput(listener.get()), 1);
    while (PGnotify* n = PQnotifies(listener.get())) {
      EXPECT_STREQ(n->relname, kPostgresChangeChannel);
      payloads.emplace_back(n->extra);
      PQfreemem(n);
    }
  }
  EXPECT_EQ(payloads, std::vector<std::string>{"2"});
}

TEST(PostgresStore, UnreachableServerIsUnavailable) {
  auto s = OpenPostgresStore(
      {.url = "host=127.0.0.1 port=1 user=postgres dbname=x", .connect_timeout_s = 2});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_EQ(OpenPostgresStore({}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quell::ledger
