#include "engine/backtest.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kSet[] = R"(
lists:
  - {name: vip, protected: true}
  - {name: watched}
  - {name: staff, protected: true}
policies:
  - id: high
    on: detection
    when: detection.type == "bot" && detection.score >= 0.5
    action: exclude_royalties
    ttl: 30d
    escalate: [{after: 2, action: suspend}]
    escalate_window: 10d
  - id: offender
    on: detection
    when: detection.type == "bot" && detection.score >= 0.99 && active(entity, "exclude_royalties")
    action: block
  - id: trial
    mode: shadow
    on: detection
    when: detection.type == "bot" && in_list("watched", entity)
    action: flag
  - id: farm
    on: detection
    when: detection.type == "farm" && detection.evidence.asn == 16509 && size(detection.related) >= 1
    action: shadow_ban
    related: [device]
)";

std::shared_ptr<const policy::PolicySet> Load(std::string_view yaml, int64_t version = 7) {
  auto set = policy::LoadPolicySet(yaml, version);
  EXPECT_TRUE(set.ok()) << set.status();
  return set.ok() ? *set : nullptr;
}

absl::Time T(int hour) { return absl::FromUnixSeconds(1767225600) + absl::Hours(hour); }

// A stored detection: its JSON and its reply with `decisions` (policy, entity, action,
// state) as the live path wrote them.
struct Rec {
  std::string source = "m", id, type = "bot", entity, json, reply;
  double score = 0.9;
  absl::Time at;
  ReplayRecord View() const {
    return ReplayRecord{source, id, type, entity, score, at, json, reply};
  }
};

using D = std::tuple<std::string, std::string, std::string, std::string>;

Rec Make(std::string id, std::string entity, double score, absl::Time at,
         std::vector<D> decisions = {}, std::string type = "bot", std::string evidence = "{}",
         std::vector<std::string> related = {}) {
  Rec r;
  r.id = std::move(id);
  r.entity = std::move(entity);
  r.score = score;
  r.at = at;
  r.type = std::move(type);
  r.json = absl::StrCat(R"({"id":")", r.id, R"(","source":"m","type":")", r.type, R"(","entity":")",
                        r.entity, R"(","score":)", score, R"(,"observed_at":"x","evidence":)",
                        evidence, R"(,"related":[)");
  for (size_t i = 0; i < related.size(); ++i)
    absl::StrAppend(&r.json, i ? "," : "", "\"", related[i], "\"");
  r.json += "]}";
  r.reply = absl::StrCat(R"({"id":")", r.id, R"(","source":"m","status":"accepted","decisions":[)");
  for (size_t i = 0; i < decisions.size(); ++i) {
    const auto& [policy, entity, action, state] = decisions[i];
    absl::StrAppend(&r.reply, i ? "," : "", R"({"mitigation_id":"m)", i, R"(","entity":")", entity,
                    R"(","action":")", action, R"(","state":")", state, R"(","policy":")", policy,
                    R"(","reason":"r"})");
  }
  r.reply += "]}";
  return r;
}

const BacktestPolicyRow& Row(const BacktestReport& r, std::string_view policy) {
  for (const auto& row : r.policies) {
    if (row.policy == policy) return row;
  }
  static BacktestPolicyRow none;
  ADD_FAILURE() << "no row " << policy;
  return none;
}

BacktestReport Replay(const std::vector<Rec>& recs, ReplayLists lists = {},
                      BacktestOptions options = {}) {
  Backtester bt(Load(kSet), std::move(lists), options);
  for (const Rec& r : recs) EXPECT_TRUE(bt.Add(r.View()).ok());
  return bt.Finish();
}

TEST(BacktestTest, NewlyNoLongerUnchangedAndProtected) {
  ReplayLists lists;
  lists.protected_entities.insert("user:vip");
  std::vector<Rec> recs = {
      // Enforced then and now.
      Make("d1", "user:a", 0.95, T(1), {{"high", "user:a", "exclude_royalties", "active"}}),
      // Below the old threshold: nothing then, a decision now.
      Make("d2", "user:b", 0.6, T(2)),
      Make("d3", "user:vip", 0.7, T(3)),
      // A policy the candidate no longer has.
      Make("d4", "user:c", 0.3, T(4), {{"gone", "user:c", "block", "scheduled"}}),
      // Shadow and suppressed stored decisions enforce nothing.
      Make("d5", "user:d", 0.2, T(5),
           {{"high", "user:d", "exclude_royalties", "shadow"},
            {"high", "user:d", "exclude_royalties", "suppressed"}}),
      // Unrelated type: no candidate policy at all.
      Make("d6", "user:e", 0.99, T(6), {{"high", "user:e", "exclude_royalties", "active"}},
           "other"),
  };
  BacktestReport r = Replay(recs, std::move(lists));
  EXPECT_EQ(r.detections, 6);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_EQ(r.version, 7);
  const auto& high = Row(r, "high");
  EXPECT_EQ(high.mode, "enforce");
  EXPECT_EQ(high.matched, 3);
  EXPECT_EQ(high.newly.entities, 2);
  EXPECT_EQ(high.newly.protected_entities, 1);
  EXPECT_THAT(high.newly.samples, ElementsAre("user:b", "user:vip"));
  EXPECT_EQ(high.unchanged.entities, 1);
  EXPECT_EQ(high.no_longer.entities, 1);  // user:e: the candidate ignores type "other"
  EXPECT_THAT(high.no_longer.samples, ElementsAre("user:e"));
  const auto& gone = Row(r, "gone");
  EXPECT_EQ(gone.mode, "absent");
  EXPECT_EQ(gone.no_longer.entities, 1);
  EXPECT_THAT(gone.no_longer.samples, ElementsAre("user:c"));
  EXPECT_EQ(r.policies.back().policy, "gone");  // absent policies after the candidate's
  EXPECT_EQ(r.newly.entities, 2);
  EXPECT_EQ(r.newly.protected_entities, 1);
  EXPECT_EQ(r.no_longer.entities, 2);
  EXPECT_EQ(r.unchanged.entities, 1);
  EXPECT_EQ(r.shadow.entities, 0);
}

TEST(BacktestTest, EscalatesOnReplayHitsWithinTheWindow) {
  std::vector<D> er = {{"high", "user:x", "exclude_royalties", "active"}};
  BacktestReport r = Replay({
      Make("e1", "user:x", 0.9, T(0), er), Make("e2", "user:x", 0.9, T(1), er),
      Make("e3", "user:x", 0.9, T(2), er),    // third hit: suspend
      Make("e4", "user:x", 0.9, T(24 * 30)),  // window 10d: the earlier hits are out
  });
  const auto& high = Row(r, "high");
  EXPECT_EQ(high.unchanged.decisions, 2);
  EXPECT_EQ(high.newly.decisions, 2);      // suspend on e3, exclude_royalties on e4
  EXPECT_EQ(high.no_longer.decisions, 1);  // e3's exclude_royalties became suspend
  EXPECT_EQ(high.newly.entities, 1);
}

TEST(BacktestTest, ActiveAndListsAnswerFromTheReplay) {
  ReplayLists lists;
  lists.entries["watched"].Insert("user:w");
  BacktestReport r = Replay(
      {
          Make("a1", "user:w", 0.995, T(0)),  // not active yet: only `high`
          Make("a2", "user:w", 0.995, T(1)),  // active since a1: `offender` too
          Make("a3", "user:w", 0.995,
               T(24 * 31)),  // a1's 30d ttl is over (extended by a2 to 30d+1h)
      },
      std::move(lists));
  EXPECT_EQ(Row(r, "offender").matched, 1);
  EXPECT_EQ(Row(r, "offender").newly.decisions, 1);
  const auto& trial = Row(r, "trial");
  EXPECT_EQ(trial.mode, "shadow");
  EXPECT_EQ(trial.shadow.decisions, 3);
  EXPECT_EQ(trial.shadow.entities, 1);
  EXPECT_EQ(trial.newly.decisions, 0);
}

TEST(BacktestTest, ReadsEvidenceAndRelatedFromTheStoredJson) {
  BacktestReport r = Replay({
      Make("f1", "user:farm", 0.9, T(0), {}, "farm", R"({"asn":16509})",
           {"device:d1", "ip:10.0.0.1", "device:d2"}),
      Make("f2", "user:farm2", 0.9, T(1), {}, "farm", R"({"asn":1})", {"device:d3"}),
  });
  const auto& farm = Row(r, "farm");
  EXPECT_EQ(farm.matched, 1);
  EXPECT_EQ(farm.newly.entities, 3);
  EXPECT_THAT(farm.newly.samples, UnorderedElementsAre("user:farm", "device:d1", "device:d2"));
}

TEST(BacktestTest, WindowOrderAndUnreadableRecords) {
  BacktestOptions options;
  options.from = T(1);
  options.to = T(3);
  Backtester bt(Load(kSet), {}, options);
  EXPECT_TRUE(bt.Add(Make("w0", "user:a", 0.9, T(0)).View()).ok());  // before: ignored
  EXPECT_TRUE(bt.Add(Make("w1", "user:a", 0.9, T(1)).View()).ok());
  EXPECT_TRUE(bt.Add(Make("w2", "nonsense", 0.9, T(2)).View()).ok());  // bad entity
  Rec bad_reply = Make("w3", "user:b", 0.9, T(2), {{"high", "user:b", "x", "active"}});
  bad_reply.reply.pop_back();
  EXPECT_TRUE(bt.Add(bad_reply.View()).ok());
  EXPECT_TRUE(bt.Add(Make("w4", "user:a", 0.9, T(3)).View()).ok());  // `to` excluded
  EXPECT_EQ(bt.Add(Make("w5", "user:a", 0.9, T(1)).View()).code(),
            absl::StatusCode::kInvalidArgument);  // out of order
  BacktestReport r = bt.Finish();
  EXPECT_EQ(r.detections, 3);
  EXPECT_EQ(r.skipped, 2);
  EXPECT_EQ(Row(r, "high").newly.decisions, 1);
}

TEST(BacktestTest, JsonAndTextReports) {
  BacktestReport r = Replay({Make("j1", "user:\"q\"", 0.9, T(0))});
  std::string json = BacktestReportToJson(r);
  EXPECT_THAT(json, HasSubstr(R"("detections":1)"));
  EXPECT_THAT(
      json,
      HasSubstr(
          R"("policy":"high","mode":"enforce","matched":1,"newly":{"decisions":1,"entities":1,"protected_entities":0,"samples":["user:\"q\""]})"));
  EXPECT_THAT(json, HasSubstr(R"("from":"-inf")"));
  std::string text = BacktestReportToText(r);
  EXPECT_THAT(text, HasSubstr("backtest of 1 detections"));
  EXPECT_THAT(text, HasSubstr("high"));
}

// The adapter over a real store: lists are loaded (protected and declared ones), detections
// are streamed in observed_at order, and the window bounds are honoured.
TEST(BacktestTest, RunsOverASqliteStore) {
  auto dir = std::filesystem::temp_directory_path() / absl::StrCat("quell-backtest-", getpid());
  std::filesystem::remove_all(dir);
  {
    auto store = ledger::OpenSqliteStore({.path = dir.string(), .synchronous_full = false});
    ASSERT_TRUE(store.ok()) << store.status();
    auto txn = (*store)->Begin(T(100));
    ASSERT_TRUE(txn.ok());
    ledger::Change c;
    c.kind = ledger::ChangeKind::kList;
    c.actor = "test";
    c.payload = R"({"list":"vip","add":["user:p"],"protected":true})";
    ASSERT_TRUE((*txn)->Append(c, nullptr).ok());
    c.payload = R"({"list":"watched","add":["user:p"]})";
    ASSERT_TRUE((*txn)->Append(c, nullptr).ok());
    // Protected by the set's declaration only (the stored list is not flagged): counted
    // protected all the same, as the live safeguard does.
    c.payload = R"({"list":"staff","add":["user:q","cidr:10.0.0.0/8"]})";
    ASSERT_TRUE((*txn)->Append(c, nullptr).ok());
    // Stored out of observed_at order on purpose.
    int n = 0;
    for (int hour : {5, 1, 3, 9}) {
      Rec r = Make(absl::StrCat("s", n++), hour == 3 ? "user:p" : absl::StrCat("user:u", hour), 0.6,
                   T(hour));
      ledger::StoredDetection sd;
      sd.source = r.source;
      sd.id = r.id;
      sd.type = r.type;
      sd.entity = r.entity;
      sd.score = r.score;
      sd.observed_at = r.at;
      sd.received_at = T(100);
      sd.json = r.json;
      sd.reply = r.reply;
      ASSERT_TRUE((*txn)->PutDetection(sd).ok());
    }
    ASSERT_TRUE((*txn)->Commit().ok());

    auto lists = LoadReplayLists(**store, *Load(kSet));
    ASSERT_TRUE(lists.ok());
    EXPECT_TRUE(lists->protected_entities.contains("user:p"));
    EXPECT_TRUE(lists->protected_entities.contains("user:q"));
    EXPECT_TRUE(lists->entries["watched"].HasEntry("user:p"));
    // Covered, not named: held live, so counted protected (it was missed).
    EXPECT_TRUE(lists->IsProtected("ip:10.5.5.5"));
    EXPECT_TRUE(lists->IsProtected("cidr:10.1.0.0/16"));
    EXPECT_FALSE(lists->IsProtected("ip:11.0.0.1"));

    BacktestOptions options;
    options.from = T(1);
    options.to = T(9);
    auto report = RunBacktest(**store, Load(kSet), options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->detections, 3);
    EXPECT_EQ(Row(*report, "high").newly.entities, 3);
    EXPECT_EQ(Row(*report, "high").newly.protected_entities, 1);
    EXPECT_THAT(Row(*report, "high").newly.samples, ElementsAre("user:u1", "user:p", "user:u5"));
    EXPECT_EQ(Row(*report, "trial").shadow.entities, 1);
  }
  std::filesystem::remove_all(dir);
}

// SPEC: a cidr: id matches every ip: inside it. The replay's in_list() matched a list's
// entries exactly: an address inside a listed network read as unlisted.
TEST(BacktestTest, InListMatchesAddressesInsideAListedNetwork) {
  auto dir =
      std::filesystem::temp_directory_path() / absl::StrCat("quell-backtest-cidr-", getpid());
  std::filesystem::remove_all(dir);
  {
    auto store = ledger::OpenSqliteStore({.path = dir.string(), .synchronous_full = false});
    ASSERT_TRUE(store.ok()) << store.status();
    auto txn = (*store)->Begin(T(100));
    ASSERT_TRUE(txn.ok());
    ledger::Change c;
    c.kind = ledger::ChangeKind::kList;
    c.actor = "test";
    c.payload = R"({"list":"watched","add":["cidr:10.0.0.0/8","cidr:2001:db8::/32"]})";
    ASSERT_TRUE((*txn)->Append(c, nullptr).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
    auto lists = LoadReplayLists(**store, *Load(kSet));
    ASSERT_TRUE(lists.ok()) << lists.status();
    BacktestReport r =
        Replay({Make("n1", "ip:10.1.2.3", 0.6, T(0)), Make("n2", "ip:11.0.0.1", 0.6, T(1)),
                Make("n3", "ip:2001:db8::9", 0.6, T(2)), Make("n4", "cidr:10.5.0.0/16", 0.6, T(3)),
                Make("n5", "cidr:0.0.0.0/0", 0.6, T(4))},
               *std::move(lists));
    EXPECT_THAT(Row(r, "trial").shadow.samples,
                ElementsAre("ip:10.1.2.3", "ip:2001:db8::9", "cidr:10.5.0.0/16"));
  }
  std::filesystem::remove_all(dir);
}

// The example music set loads and replays (smoke test over its 20+ policies).
TEST(BacktestTest, ExampleSet) {
  std::ifstream in(std::string(QUELL_EXAMPLES_DIR) + "/music.yaml");
  std::stringstream s;
  s << in.rdbuf();
  auto set = Load(s.str());
  ASSERT_NE(set, nullptr);
  Backtester bt(set, {}, {});
  Rec r = Make("x1", "user:m", 0.97, T(0));
  r.type = "artificial_streaming";
  r.source = "bot-model-v3";
  ASSERT_TRUE(bt.Add(r.View()).ok());
  BacktestReport rep = bt.Finish();
  EXPECT_EQ(Row(rep, "bot-model-high").newly.entities, 1);
  EXPECT_EQ(rep.policies.size(), set->policies().size());
}

// Three ways the replay used to decide otherwise than the live path, found by a hunt
// against the real server (each failed before its fix).
constexpr char kLiveLikeSet[] = R"(
lists:
  - {name: watched}
policies:
  - id: esc
    on: detection
    when: detection.type == "hit"
    action: flag
    ttl: 1h
    escalate: [{after: 1, action: block, ttl: 10d}]
  - id: chk
    on: detection
    when: detection.type == "chk" && active(entity, "block")
    action: suspend
  - id: listed
    on: detection
    when: detection.type == "l" && in_list("watched", detection.evidence.ip)
    action: block
  - id: any
    on: detection
    when: detection.score >= 0.99
    action: flag
)";

BacktestReport ReplayLiveLike(const std::vector<Rec>& recs, ReplayLists lists = {}) {
  Backtester bt(Load(kLiveLikeSet), std::move(lists), {});
  for (const Rec& r : recs) EXPECT_TRUE(bt.Add(r.View()).ok());
  return bt.Finish();
}

// An escalated decision lasts its step's ttl (10d), not the policy's (1h): active() sees it.
TEST(BacktestTest, AnEscalatedDecisionLastsItsStepsTtl) {
  BacktestReport r = ReplayLiveLike({Make("h1", "user:e", 0.5, T(0), {}, "hit"),
                                     Make("h2", "user:e", 0.5, T(1), {}, "hit"),
                                     Make("c1", "user:e", 0.5, T(5), {}, "chk")});
  EXPECT_EQ(Row(r, "chk").matched, 1);
}

// in_list() reads an entity in its normal form, as live: "ip:2001:DB8::1" is listed.
TEST(BacktestTest, InListNormalisesTheEntityAsLiveDoes) {
  ReplayLists lists;
  lists.entries["watched"].Insert("ip:2001:db8::1");
  BacktestReport r = ReplayLiveLike(
      {Make("l1", "user:l", 0.5, T(0), {}, "l", R"({"ip":"ip:2001:DB8::1"})")}, std::move(lists));
  EXPECT_EQ(Row(r, "listed").matched, 1);
}

// A real-time rule's detection (made from events, which are not stored) is left out: live
// it is never evaluated against detection policies, and its rule cannot be replayed.
TEST(BacktestTest, RuleDetectionsAreLeftOut) {
  Rec rule = Make("r1", "user:r", 1.0, T(0), {{"ev-rule", "user:r", "block", "active"}}, "login");
  rule.source = "rule:ev-rule";
  BacktestReport r = ReplayLiveLike({rule, Make("d1", "user:d", 1.0, T(1))});
  EXPECT_EQ(r.detections, 1);
  EXPECT_EQ(Row(r, "any").matched, 1);  // d1 only
  EXPECT_EQ(r.no_longer.decisions, 0);
}

}  // namespace
}  // namespace quell::engine
