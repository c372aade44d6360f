// Imports into a real data directory (embedded SQLite store): counts, rejects, batch ids
// on mitigations, idempotent re-import, interrupted + resumed == uninterrupted, the dry
// run's preview (and that it writes nothing), and the data-directory lock.
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/ids.h"
#include "gtest/gtest.h"
#include "importer/importer.h"
#include "importer/sink.h"
#include "importer/test_util.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/mitigations.h"
#include "workflow/policies.h"

namespace quell::importer {
namespace {

constexpr char kPolicies[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
lists:
  - {name: vip, protected: true}
breakers:
  - {name: suspend-rate, action: suspend, limit: 1, window: 10m}
  - {name: all, limit: 1000, window: 1h}
policies:
  - id: bot
    mode: enforce
    on: detection
    when: detection.score >= 0.9
    action: exclude_royalties
    escalate: [{after: 2, action: suspend}]
  - id: watch
    mode: shadow
    on: detection
    when: detection.score >= 0.5 && detection.score < 0.9
    action: flag
)";

std::string Row(const std::string& id, const std::string& entity, double score) {
  return "{\"id\":\"" + id + "\",\"source\":\"model\",\"type\":\"bot\",\"entity\":\"" + entity +
         "\",\"score\":" + std::to_string(score) + ",\"observed_at\":\"2024-05-01T10:00:00Z\"}\n";
}

void PrepareDataDir(const std::string& dir, const char* policies = kPolicies) {
  ledger::SqliteOptions so;
  so.path = dir;
  auto store = ledger::OpenSqliteStore(so);
  ASSERT_TRUE(store.ok()) << store.status();
  auto ledger = ledger::Ledger::Open(*std::move(store), {}, core::RealClock::Get());
  ASSERT_TRUE(ledger.ok());
  ASSERT_TRUE(
      (*ledger)
          ->SubmitAndWait(workflow::PublishPolicySet(policies, "test", std::make_shared<int64_t>()))
          .ok());
  ASSERT_TRUE((*ledger)
                  ->SubmitAndWait([](ledger::Txn& txn, absl::Time) -> absl::Status {
                    ledger::Change c;
                    c.kind = ledger::ChangeKind::kList;
                    c.actor = "test";
                    c.payload = R"({"list":"vip","add":["user:vip"],"protected":true})";
                    return txn.Append(c, nullptr).status();
                  })
                  .ok());
}

std::unique_ptr<ledger::Store> OpenStore(const std::string& dir) {
  ledger::SqliteOptions so;
  so.path = dir;
  return *ledger::OpenSqliteStore(so);
}

// What an import leaves: mitigations without their ids and times.
std::multiset<std::string> State(const std::string& dir, std::string* batch = nullptr) {
  auto store = OpenStore(dir);
  std::multiset<std::string> out;
  ledger::MitigationQuery q;
  q.limit = 1000;
  for (;;) {
    auto page = store->ListMitigations(q);
    EXPECT_TRUE(page.ok());
    for (const core::Mitigation& m : page->mitigations) {
      std::string d;
      for (const auto& id : m.detections) d += id + ",";
      out.insert(m.entity.str() + " " + m.action + " " + std::string(core::StateName(m.state)) +
                 " " + m.policy + " [" + d + "]");
      if (batch != nullptr) *batch = m.batch;
    }
    if (page->next_cursor.empty()) break;
    q.cursor = page->next_cursor;
  }
  return out;
}

ImportOptions Options(const std::string& dir, const std::string& file) {
  ImportOptions o;
  o.files = {file};
  o.data_dir = dir + "/var";
  o.notes_out = stderr;
  o.batch_rows = 7;  // many batches, several in flight
  return o;
}

std::string MixedFile() {
  std::string f;
  for (int i = 0; i < 200; ++i) {
    f += Row(absl::StrCat("d", i), absl::StrCat("user:u", i % 37), (i % 10) / 10.0 + 0.05);
    if (i % 50 == 3) f += "{\"id\": broken\n";
  }
  return f;
}

TEST(DirectImportTest, CountsRejectsBatchAndIdempotentReimport) {
  std::string dir = testing::TempDir("direct");
  PrepareDataDir(dir + "/var");
  std::string file = dir + "/in.ndjson.zst";
  testing::WriteFile(file, testing::Zstd(MixedFile()));
  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.counts.read, 204);
  EXPECT_EQ(r.counts.accepted, 200);
  EXPECT_EQ(r.counts.duplicate, 0);
  EXPECT_EQ(r.counts.rejected, 4);
  EXPECT_GT(r.counts.decisions["active"], 0);
  EXPECT_GT(r.counts.decisions["shadow"], 0);
  EXPECT_EQ(r.batch.substr(0, 2), "b_");
  std::string rejects = testing::ReadFileOrEmpty(r.rejects_path);
  EXPECT_NE(rejects.find("\"line\":5,\"error\":\"invalid JSON"), std::string::npos) << rejects;
  EXPECT_EQ(std::count(rejects.begin(), rejects.end(), '\n'), 4);
  EXPECT_FALSE(ReadCheckpoint(r.checkpoint_path)->has_value());  // removed after a complete run

  std::string batch;
  auto state = State(dir + "/var", &batch);
  EXPECT_FALSE(state.empty());
  EXPECT_EQ(batch, r.batch);  // mitigations carry the import's batch
  auto seq = OpenStore(dir + "/var")->LastSeq();

  ImportResult again = Import(Options(dir, file));
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.counts.accepted, 0);
  EXPECT_EQ(again.counts.duplicate, 200);
  EXPECT_EQ(again.counts.rejected, 4);
  EXPECT_EQ(State(dir + "/var"), state);
  EXPECT_EQ(*OpenStore(dir + "/var")->LastSeq(), *seq);
}

// A row's decision that depends on the rows before it (active() of what an earlier row of
// the same file created) is the same however the file is cut into batches: every row is
// evaluated just before it is decided, after the rows before it in its own batch.
TEST(DirectImportTest, RowsSeeTheRowsBeforeThemWhateverTheBatching) {
  constexpr char kRepeat[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
policies:
  - id: bot
    on: detection
    when: detection.score >= 0.9
    action: exclude_royalties
  - id: known
    on: detection
    when: detection.score >= 0.99 && active(entity, "exclude_royalties")
    action: flag
)";
  std::string f;
  for (int u = 0; u < 20; ++u) {
    f += Row(absl::StrCat("a", u), absl::StrCat("user:u", u), 0.95);   // exclude_royalties
    f += Row(absl::StrCat("b", u), absl::StrCat("user:u", u), 0.995);  // then known: flag
  }
  std::multiset<std::string> first;
  for (size_t batch_rows : {size_t{1000}, size_t{1}, size_t{3}}) {
    std::string dir = testing::TempDir("batching");
    PrepareDataDir(dir + "/var", kRepeat);
    std::string file = dir + "/in.ndjson";
    testing::WriteFile(file, f);
    ImportOptions o = Options(dir, file);
    o.batch_rows = batch_rows;
    ImportResult r = Import(o);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.counts.accepted, 40);
    std::multiset<std::string> state = State(dir + "/var");
    EXPECT_EQ(std::count_if(state.begin(), state.end(),
                            [](const std::string& s) { return s.find(" flag ") != s.npos; }),
              20)
        << "batch_rows " << batch_rows;
    if (first.empty()) first = state;
    EXPECT_EQ(state, first) << "batch_rows " << batch_rows;
  }
}

// Rows whose evaluation reads no ledger state are evaluated ahead, on the reader's
// thread, with lists from a snapshot taken when the import starts. This checks the
// snapshot's answers (it fails if listed entities read as unlisted); it cannot tell
// which thread evaluated, since both must give the same decisions.
TEST(DirectImportTest, ListsReadFromTheSnapshotGiveTheLedgersDecisions) {
  constexpr char kListed[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
lists:
  - {name: watch}
policies:
  - id: bot
    on: detection
    when: detection.score >= 0.9
    action: exclude_royalties
  - id: watched
    on: detection
    when: detection.score >= 0.9 && in_list("watch", entity)
    action: flag
)";
  std::string dir = testing::TempDir("listed");
  PrepareDataDir(dir + "/var", kListed);
  {
    auto ledger = ledger::Ledger::Open(OpenStore(dir + "/var"), {}, core::RealClock::Get());
    ASSERT_TRUE(ledger.ok());
    ASSERT_TRUE((*ledger)
                    ->SubmitAndWait([](ledger::Txn& txn, absl::Time) -> absl::Status {
                      ledger::Change c;
                      c.kind = ledger::ChangeKind::kList;
                      c.actor = "test";
                      c.payload = R"({"list":"watch","add":["user:u3","user:u7"]})";
                      return txn.Append(c, nullptr).status();
                    })
                    .ok());
  }
  std::string f;
  for (int u = 0; u < 10; ++u) f += Row(absl::StrCat("d", u), absl::StrCat("user:u", u), 0.95);
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, f);
  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  std::multiset<std::string> state = State(dir + "/var");
  std::multiset<std::string> flagged;
  for (const std::string& s : state) {
    if (s.find(" flag ") != s.npos) flagged.insert(s.substr(0, s.find(' ')));
  }
  EXPECT_EQ(flagged, (std::multiset<std::string>{"user:u3", "user:u7"}));
  EXPECT_EQ(state.size(), 12u);
}

// SPEC: a cidr: id matches every ip: inside it. All three of the import's evaluators read a
// list of networks exactly: the one ahead (rows whose conditions stop before active()), the
// one in the ledger transaction (rows that reach it) and the dry run's; each now finds the
// addresses inside.
TEST(DirectImportTest, InListMatchesAddressesInsideAListedNetwork) {
  constexpr char kRanges[] = R"(actions:
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
  - {name: challenge, verdict: challenge, severity: low, ttl: 7d}
lists:
  - {name: vpn}
policies:
  - id: any
    on: detection
    when: in_list("vpn", entity)
    action: flag
  - id: high
    on: detection
    when: 'detection.score >= 0.9 && !active(entity, "challenge") && in_list("vpn", entity)'
    action: challenge
)";
  std::string dir = testing::TempDir("listed-cidr");
  PrepareDataDir(dir + "/var", kRanges);
  {
    auto ledger = ledger::Ledger::Open(OpenStore(dir + "/var"), {}, core::RealClock::Get());
    ASSERT_TRUE(ledger.ok());
    ASSERT_TRUE((*ledger)
                    ->SubmitAndWait([](ledger::Txn& txn, absl::Time) -> absl::Status {
                      ledger::Change c;
                      c.kind = ledger::ChangeKind::kList;
                      c.actor = "test";
                      c.payload =
                          R"({"list":"vpn","add":["cidr:10.0.0.0/8","cidr:2001:db8::/32"]})";
                      return txn.Append(c, nullptr).status();
                    })
                    .ok());
  }
  std::string file = dir + "/in.ndjson";
  // 0.5: evaluated ahead; 0.95: in the transaction (high reads active()).
  testing::WriteFile(file, Row("v1", "ip:10.1.2.3", 0.5) + Row("v2", "ip:11.0.0.1", 0.5) +
                               Row("v3", "ip:2001:db8::9", 0.5) + Row("w1", "ip:10.9.9.9", 0.95) +
                               Row("w2", "ip:12.0.0.1", 0.95));
  ImportOptions dry = Options(dir, file);
  dry.dry_run = true;
  ImportResult preview = Import(dry);
  ASSERT_TRUE(preview.status.ok()) << preview.status;
  EXPECT_EQ(preview.dry_run->new_by_policy,
            (std::map<std::string, int64_t>{{"any", 3}, {"high", 1}}))
      << DryRunText(*preview.dry_run);

  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(State(dir + "/var"), (std::multiset<std::string>{
                                     "ip:10.1.2.3 flag active any [v1,]",
                                     "ip:2001:db8::9 flag active any [v3,]",
                                     "ip:10.9.9.9 flag active any [w1,]",
                                     "ip:10.9.9.9 challenge active high [w1,]",
                                 }));
}

// A repeat of an id in the same batch is a duplicate of its first occurrence, whichever
// of the two would earn a decision: rows without one are written before the others.
TEST(DirectImportTest, RepeatsInABatchAnswerAsTheirFirstOccurrence) {
  std::string dir = testing::TempDir("repeats");
  PrepareDataDir(dir + "/var");
  std::string f = Row("q1", "user:quiet", 0.1) + Row("d1", "user:decided", 0.95) +
                  Row("q1", "user:quiet", 0.95) + Row("d1", "user:decided", 0.1);
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, f);
  ImportOptions o = Options(dir, file);
  o.batch_rows = 100;
  ImportResult r = Import(o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.counts.accepted, 2);
  EXPECT_EQ(r.counts.duplicate, 2);
  EXPECT_EQ(State(dir + "/var"),
            (std::multiset<std::string>{"user:decided exclude_royalties active bot [d1,]"}));
}

TEST(DirectImportTest, InterruptedAndResumedEqualsUninterrupted) {
  std::string dir = testing::TempDir("resume");
  PrepareDataDir(dir + "/a/var");
  PrepareDataDir(dir + "/b/var");
  std::string file = dir + "/in.ndjson.gz";
  testing::WriteFile(file, testing::Gzip(MixedFile()));
  ASSERT_TRUE(Import(Options(dir + "/a", file)).status.ok());

  ImportOptions o = Options(dir + "/b", file);
  o.rejects_path = dir + "/b/rejects.ndjson";
  o.stop_after_rows_for_test = 90;
  ImportResult first = Import(o);
  ASSERT_EQ(first.status.code(), absl::StatusCode::kCancelled) << first.status;
  // Next to the input, whatever --rejects says.
  auto cp = ReadCheckpoint(file + ".quell-checkpoint");
  ASSERT_TRUE(cp.ok() && cp->has_value());
  EXPECT_GT((*cp)->offset, 0u);
  EXPECT_EQ((*cp)->batch, first.batch);
  EXPECT_EQ((*cp)->destination, absl::StrCat("data dir ", dir, "/b/var"));
  EXPECT_TRUE((*cp)->crc.has_value());

  // A second run without --resume refuses to start over silently, with --rejects or
  // without (it started a second batch then: the checkpoint was looked for next to the
  // default rejects file).
  o.stop_after_rows_for_test = -1;
  for (std::string rejects : {o.rejects_path, std::string()}) {
    ImportOptions again = o;
    again.rejects_path = rejects;
    ImportResult refused = Import(again);
    EXPECT_TRUE(refused.refused);
    EXPECT_NE(std::string(refused.status.message()).find("--resume"), std::string::npos);
  }
  // Resumed into another data directory: refused (the rows before the checkpoint are
  // not there, and the summary would count them).
  ImportOptions elsewhere = o;
  elsewhere.resume = true;
  elsewhere.data_dir = dir + "/a/var";
  ImportResult refused = Import(elsewhere);
  EXPECT_TRUE(refused.refused);
  EXPECT_NE(std::string(refused.status.message()).find("went to data dir"), std::string::npos)
      << refused.status;

  // Another import of the same input with a checkpoint of its own but the first one's
  // rejects file: refused (it would empty the rows the first one rejected).
  ImportOptions other = o;
  other.checkpoint_path = dir + "/other.quell-checkpoint";
  refused = Import(other);
  EXPECT_TRUE(refused.refused);
  EXPECT_NE(std::string(refused.status.message()).find("give this import its own --rejects"),
            std::string::npos)
      << refused.status;
  EXPECT_FALSE(std::filesystem::exists(other.checkpoint_path));

  // Resumed without --rejects: into the checkpoint's rejects file.
  const std::string rejects_path = o.rejects_path;
  o.rejects_path.clear();
  o.resume = true;
  ImportResult second = Import(o);
  o.rejects_path = rejects_path;
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_EQ(second.batch, first.batch);  // one batch across the resume
  EXPECT_EQ(second.counts.read, 204);
  EXPECT_EQ(second.counts.accepted + second.counts.duplicate, 200);
  EXPECT_EQ(second.counts.rejected, 4);
  std::string rejects = testing::ReadFileOrEmpty(o.rejects_path);
  EXPECT_EQ(std::count(rejects.begin(), rejects.end(), '\n'), 4) << rejects;  // none twice
  EXPECT_EQ(State(dir + "/b/var"), State(dir + "/a/var"));
}

// A checkpoint an earlier version left next to --rejects (its default then) is found by
// a resume that names the same --rejects; an input whose directory cannot be written keeps
// its checkpoint next to --rejects.
TEST(DirectImportTest, ACheckpointNextToRejectsIsStillFound) {
  std::string dir = testing::TempDir("legacy");
  PrepareDataDir(dir + "/var");
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, MixedFile());
  ImportOptions o = Options(dir, file);
  o.rejects_path = dir + "/r.ndjson";
  o.checkpoint_path = o.rejects_path + ".quell-checkpoint";  // where it used to go
  o.stop_after_rows_for_test = 90;
  ASSERT_EQ(Import(o).status.code(), absl::StatusCode::kCancelled);
  o.checkpoint_path.clear();
  o.stop_after_rows_for_test = -1;
  o.resume = true;
  ImportResult r = Import(o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.read_before, 90 - 90 % 7);  // acknowledged batches of 7
  EXPECT_EQ(r.counts.read, 204);
  EXPECT_FALSE(std::filesystem::exists(file + ".quell-checkpoint"));
}

TEST(DirectImportTest, ReplayingAcknowledgedRowsChangesNothing) {
  // A checkpoint older than what was applied (a crash between commit and checkpoint):
  // the replayed rows come back as duplicates and the state is the same.
  std::string dir = testing::TempDir("replay");
  PrepareDataDir(dir + "/a/var");
  PrepareDataDir(dir + "/b/var");
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, MixedFile());
  ASSERT_TRUE(Import(Options(dir + "/a", file)).status.ok());
  ImportOptions o = Options(dir + "/b", file);
  o.stop_after_rows_for_test = 150;
  ASSERT_EQ(Import(o).status.code(), absl::StatusCode::kCancelled);
  const std::string cp_path = file + ".quell-checkpoint";
  auto cp = ReadCheckpoint(cp_path);
  ASSERT_TRUE(cp.ok() && cp->has_value()) << cp.status();
  Checkpoint rewound = **cp;
  rewound.offset = 0;
  rewound.line = 0;
  rewound.rows = 0;
  rewound.rejects_bytes = 0;
  rewound.counts = Counts{};
  ASSERT_TRUE(WriteCheckpoint(cp_path, rewound).ok());
  o.stop_after_rows_for_test = -1;
  o.resume = true;
  ImportResult r = Import(o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_GT(r.counts.duplicate, 100);
  EXPECT_EQ(r.counts.accepted + r.counts.duplicate, 200);
  EXPECT_EQ(State(dir + "/b/var"), State(dir + "/a/var"));
}

TEST(DirectImportTest, DryRunPreviewsAndWritesNothing) {
  std::string dir = testing::TempDir("dryrun");
  PrepareDataDir(dir + "/var");
  std::string before = dir + "/before.ndjson";
  testing::WriteFile(before, Row("p1", "user:a", 0.95));
  ASSERT_TRUE(Import(Options(dir, before)).status.ok());
  auto seq = *OpenStore(dir + "/var")->LastSeq();

  std::string file = dir + "/preview.ndjson";
  std::string rows =
      Row("x1", "user:a", 0.95) + Row("x2", "user:vip", 0.95) + Row("x3", "user:c", 0.6) + "nope\n";
  for (std::string u : {"user:b", "user:d"}) {
    for (int i = 0; i < 3; ++i) rows += Row(std::string("y") + u + std::to_string(i), u, 0.97);
  }
  testing::WriteFile(file, rows);
  ImportOptions o = Options(dir, file);
  o.dry_run = true;
  ImportResult r = Import(o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_TRUE(r.dry_run);
  const DryRunReport& d = *r.dry_run;
  EXPECT_EQ(d.seq, seq);
  EXPECT_EQ(r.counts.rejected, 1);
  EXPECT_EQ(d.already, 1);                                // user:a has exclude_royalties
  EXPECT_EQ(d.protected_, 1);                             // user:vip
  EXPECT_EQ(d.shadow, 1);                                 // user:c flag
  EXPECT_EQ(d.new_by_action.at("exclude_royalties"), 2);  // b, d
  // Their 3rd hits escalate: b's suspension passes, d's opens suspend-rate (limit 1) and
  // waits for approval, as the import would do.
  EXPECT_EQ(d.new_by_action.at("suspend"), 1);
  EXPECT_EQ(d.new_by_policy.at("bot"), 3);
  EXPECT_EQ(d.new_total, 3);
  EXPECT_EQ(d.held, 1);
  EXPECT_EQ(d.held_by_breaker, (std::map<std::string, int64_t>{{"suspend-rate", 1}}));
  ASSERT_EQ(d.breakers.size(), 2u);
  EXPECT_EQ(d.breakers[0].name, "suspend-rate");
  EXPECT_EQ(d.breakers[0].would_add, 1);
  EXPECT_TRUE(d.breakers[0].would_open);
  EXPECT_EQ(d.breakers[0].would_hold, 1);
  EXPECT_FALSE(d.breakers[1].would_open);
  EXPECT_NE(DryRunText(d).find("OPEN   suspend-rate"), std::string::npos) << DryRunText(d);
  EXPECT_EQ(*OpenStore(dir + "/var")->LastSeq(), seq);  // nothing written
  EXPECT_FALSE(ReadCheckpoint(file + ".quell-checkpoint")->has_value());
}

// Policies that read active() and prior(): a later row of the file sees what an earlier
// row of it created, in the preview as in the import that follows it.
TEST(DirectImportTest, DryRunSeesWhatEarlierRowsOfTheFileCreate) {
  constexpr char kStateful[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
policies:
  - {id: bot, mode: enforce, on: detection, when: detection.score >= 0.9,
     action: exclude_royalties}
  - {id: known, mode: enforce, on: detection, action: suspend,
     when: 'detection.score >= 0.98 && active(entity, "exclude_royalties")'}
  - {id: repeat, mode: enforce, on: detection, action: flag,
     when: 'detection.score >= 0.95 && prior(entity, "exclude_royalties", "1h") >= 1'}
)";
  std::string dir = testing::TempDir("dryrun-state");
  PrepareDataDir(dir + "/var", kStateful);
  std::string file = dir + "/in.ndjson";
  // user:n: excluded by its first row, suspended and flagged by its second; user:m once.
  testing::WriteFile(
      file, Row("n1", "user:n", 0.95) + Row("n2", "user:n", 0.99) + Row("m1", "user:m", 0.99));
  ImportOptions dry = Options(dir, file);
  dry.dry_run = true;
  ImportResult preview = Import(dry);
  ASSERT_TRUE(preview.status.ok()) << preview.status;
  const DryRunReport& d = *preview.dry_run;
  EXPECT_EQ(d.new_by_action,
            (std::map<std::string, int64_t>{{"exclude_royalties", 2}, {"flag", 1}, {"suspend", 1}}))
      << DryRunText(d);

  ASSERT_TRUE(Import(Options(dir, file)).status.ok());
  std::map<std::string, int64_t> created;
  for (const std::string& m : State(dir + "/var")) {
    std::vector<std::string> fields = absl::StrSplit(m, ' ');  // entity action state ...
    ++created[fields[1]];
  }
  EXPECT_EQ(created, d.new_by_action);
}

// A protected network: a row for an address inside it would be held, and the preview
// says so (it matched list members by exact text).
TEST(DirectImportTest, DryRunHoldsAnAddressInsideAProtectedNetwork) {
  std::string dir = testing::TempDir("dryrun-cidr");
  PrepareDataDir(dir + "/var");
  {
    auto ledger = ledger::Ledger::Open(OpenStore(dir + "/var"), {}, core::RealClock::Get()).value();
    ASSERT_TRUE(ledger
                    ->SubmitAndWait([](ledger::Txn& txn, absl::Time) -> absl::Status {
                      ledger::Change c;
                      c.kind = ledger::ChangeKind::kList;
                      c.actor = "test";
                      c.payload = R"({"list":"vip","add":["cidr:10.0.0.0/8"]})";
                      return txn.Append(c, nullptr).status();
                    })
                    .ok());
  }
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, Row("c1", "ip:10.5.5.5", 0.95) + Row("c2", "ip:11.0.0.1", 0.95));
  ImportOptions dry = Options(dir, file);
  dry.dry_run = true;
  ImportResult preview = Import(dry);
  ASSERT_TRUE(preview.status.ok()) << preview.status;
  EXPECT_EQ(preview.dry_run->protected_, 1) << DryRunText(*preview.dry_run);
  EXPECT_EQ(preview.dry_run->protected_by_list.at("vip"), 1);
  EXPECT_EQ(preview.dry_run->new_total, 1);
}

// An active mitigation past its expiry, not yet swept: active() answers false for it, as
// the live path's index does, so the import decides as the server would.
TEST(DirectImportTest, AnExpiredMitigationIsNotActiveBeforeTheSweep) {
  constexpr char kKnown[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
policies:
  - {id: known, mode: enforce, on: detection, action: suspend,
     when: 'active(entity, "exclude_royalties")'}
)";
  std::string dir = testing::TempDir("expired");
  PrepareDataDir(dir + "/var", kKnown);
  {
    auto ledger = ledger::Ledger::Open(OpenStore(dir + "/var"), {}, core::RealClock::Get()).value();
    ASSERT_TRUE(ledger
                    ->SubmitAndWait([](ledger::Txn& txn, absl::Time now) -> absl::Status {
                      core::Mitigation m;
                      m.id = core::NewId("m_", now);
                      m.entity = core::Entity::Parse("user:old").value();
                      m.action = "exclude_royalties";
                      m.created_at = m.updated_at = m.starts_at = now - absl::Hours(2);
                      m.expires_at = now - absl::Hours(1);
                      m.source = "manual";
                      return workflow::AppendMitigationChange(txn, m, "test", now).status();
                    })
                    .ok());
  }
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, Row("o1", "user:old", 0.5));
  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  for (const std::string& m : State(dir + "/var")) {
    EXPECT_EQ(m.find(" suspend "), std::string::npos) << m;
  }
}

// Two policies on one action: a hit extends the live mitigation whichever policy made it,
// and escalation counts each policy's own hits, not the mitigation's.
TEST(DirectImportTest, EscalationCountsThePolicysOwnHits) {
  constexpr char kTwo[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
policies:
  - {id: other, mode: enforce, on: detection, when: 'detection.source == "other"',
     action: exclude_royalties}
  - {id: bot, mode: enforce, on: detection, when: 'detection.source == "model"',
     action: exclude_royalties, escalate: [{after: 2, action: suspend}]}
)";
  std::string dir = testing::TempDir("escalation");
  PrepareDataDir(dir + "/var", kTwo);
  auto row = [](const std::string& id, const std::string& source, const std::string& entity) {
    std::string r = Row(id, entity, 0.95);
    r.replace(r.find("\"model\""), 7, "\"" + source + "\"");
    return r;
  };
  // user:a: made by `other`, then three `bot` hits: the third escalates (2 prior).
  // user:b: made by `bot`, three `other` hits on it, then one more `bot` hit: 1 prior.
  std::string rows = row("a0", "other", "user:a");
  for (int i = 1; i <= 3; ++i) rows += row("a" + std::to_string(i), "model", "user:a");
  rows += row("b0", "model", "user:b");
  for (int i = 1; i <= 3; ++i) rows += row("b" + std::to_string(i), "other", "user:b");
  rows += row("b4", "model", "user:b");
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, rows);
  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  std::multiset<std::string> suspended;
  for (const std::string& m : State(dir + "/var")) {
    if (m.find(" suspend ") != std::string::npos) suspended.insert(m);
  }
  EXPECT_EQ(suspended, (std::multiset<std::string>{"user:a suspend active bot [a3,]"}));
}

TEST(DirectImportTest, RefusedWhileAServerOwnsTheDataDir) {
  std::string dir = testing::TempDir("lock");
  PrepareDataDir(dir + "/var");
  std::string file = dir + "/in.ndjson";
  testing::WriteFile(file, Row("d1", "user:a", 0.95));
  auto held = LockDataDir(dir + "/var", "server.lock", "held by the test");
  ASSERT_TRUE(held.ok());
  ImportResult r = Import(Options(dir, file));
  EXPECT_TRUE(r.refused);
  EXPECT_NE(std::string(r.status.message()).find("a quell server owns"), std::string::npos)
      << r.status;
  ::close(*held);
  EXPECT_TRUE(Import(Options(dir, file)).status.ok());
}

// A set that declares its detection types: a row of another type is rejected with its
// line, in the server's words, by the import and by its dry run; the rows around it go in.
TEST(DirectImportTest, UndeclaredTypesAreRejectedAsTheServerRejectsThem) {
  std::string dir = testing::TempDir("types");
  const std::string policies = std::string("detection_types: [bot, farm]\n") + kPolicies;
  PrepareDataDir(dir + "/var", policies.c_str());
  std::string other = Row("t2", "user:b", 0.95);
  other.replace(other.find("\"type\":\"bot\""), 12, "\"type\":\"spam\"");
  std::string file = dir + "/typed.ndjson";
  testing::WriteFile(file, Row("t1", "user:a", 0.95) + other + Row("t3", "user:c", 0.95));

  ImportOptions dry = Options(dir, file);
  dry.dry_run = true;
  ImportResult preview = Import(dry);
  ASSERT_TRUE(preview.status.ok()) << preview.status;
  EXPECT_EQ(preview.counts.rejected, 1);
  EXPECT_EQ(preview.dry_run->new_total, 2);

  ImportResult r = Import(Options(dir, file));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.counts.accepted, 2);
  EXPECT_EQ(r.counts.rejected, 1);
  EXPECT_EQ(r.counts.decisions["active"], 2);
  std::string rejects = testing::ReadFileOrEmpty(r.rejects_path);
  EXPECT_NE(rejects.find(R"("line":2,"error":"type: unknown detection type \"spam\"; )"
                         R"(policy set v1 declares: bot, farm")"),
            std::string::npos)
      << rejects;
  EXPECT_NE(rejects.find("t2"), std::string::npos) << rejects;  // the row, as decoded
  EXPECT_EQ(State(dir + "/var"),
            (std::multiset<std::string>{"user:a exclude_royalties active bot [t1,]",
                                        "user:c exclude_royalties active bot [t3,]"}));

  // Again, in one-row batches: the rows around the rejected one come back duplicate.
  ImportOptions again = Options(dir, file);
  again.batch_rows = 1;
  ImportResult r2 = Import(again);
  ASSERT_TRUE(r2.status.ok()) << r2.status;
  EXPECT_EQ(r2.counts.duplicate, 2);
  EXPECT_EQ(r2.counts.rejected, 1);
  EXPECT_EQ(r2.counts.accepted, 0);
}

TEST(DirectImportTest, BadInputRefusesBeforeWriting) {
  std::string dir = testing::TempDir("refuse");
  PrepareDataDir(dir + "/var");
  auto seq = *OpenStore(dir + "/var")->LastSeq();
  std::string empty = dir + "/empty.ndjson", good = dir + "/good.ndjson", header = dir + "/h.csv";
  testing::WriteFile(empty, "");
  testing::WriteFile(good, Row("d1", "user:a", 0.95));
  testing::WriteFile(header, "id,source,colour\n");
  for (const auto& files : std::vector<std::vector<std::string>>{{good, empty}, {good, header}}) {
    ImportOptions o = Options(dir, good);
    o.files = files;
    ImportResult r = Import(o);
    EXPECT_TRUE(r.refused) << r.status;
    EXPECT_EQ(*OpenStore(dir + "/var")->LastSeq(), seq);
  }
}

}  // namespace
}  // namespace quell::importer
