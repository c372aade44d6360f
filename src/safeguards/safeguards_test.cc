#include <gtest/gtest.h>

#include "safeguards/approval.h"
#include "safeguards/breakers.h"
#include "safeguards/protected.h"

namespace quell::safeguards {
namespace {

core::Entity E(std::string_view s) { return *core::Entity::Parse(s); }

TEST(ProtectedSet, DirectCidrAndNetworkCoverage) {
  auto set = ProtectedSet::Build({{"artists", "artist:42"},
                                  {"staff", "ip:10.0.0.7"},
                                  {"partners", "cidr:192.168.4.0/24"},
                                  {"v6", "ip:2001:db8::1"}});
  EXPECT_TRUE(set->Why(E("artist:42")));
  EXPECT_FALSE(set->Why(E("artist:43")));
  EXPECT_TRUE(set->Why(E("ip:10.0.0.7")));
  EXPECT_FALSE(set->Why(E("ip:10.0.0.8")));
  auto why = set->Why(E("cidr:10.0.0.0/24"));
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("covers ip:10.0.0.7"), std::string::npos) << *why;
  EXPECT_FALSE(set->Why(E("cidr:10.0.1.0/24")));
  EXPECT_TRUE(set->Why(E("ip:192.168.4.200")));       // inside a protected network
  EXPECT_TRUE(set->Why(E("cidr:192.168.0.0/16")));    // over a protected network
  EXPECT_TRUE(set->Why(E("cidr:192.168.4.128/25")));  // inside one
  EXPECT_FALSE(set->Why(E("cidr:192.168.5.0/24")));
  EXPECT_TRUE(set->Why(E("cidr:2001:db8::/64")));
  EXPECT_FALSE(set->Why(E("cidr:0.0.0.0/0")) == std::nullopt);  // covers everything v4
  EXPECT_FALSE(ProtectedSet::Empty()->Why(E("artist:42")));
}

BreakerSpec Spec(std::string name, BreakerSpec::Scope scope, std::string value, int64_t limit) {
  BreakerSpec s;
  s.name = std::move(name);
  s.scope = scope;
  s.scope_value = std::move(value);
  s.limit = limit;
  s.window = absl::Minutes(10);
  return s;
}

TEST(Breakers, OpensPastLimitHoldsEverythingInScopeUntilReset) {
  BreakerBank bank;
  bank.Configure({Spec("suspends", BreakerSpec::Scope::kAction, "suspend", 3)});
  absl::Time t = absl::FromUnixSeconds(1700000000);
  for (int i = 0; i < 3; ++i) {
    auto o = bank.Record({"p", "suspend", "s"}, t);
    EXPECT_TRUE(o.held_by.empty()) << i;
  }
  // Out of scope: never counted, never held.
  EXPECT_TRUE(bank.Record({"p", "block", "s"}, t).held_by.empty());
  auto o = bank.Record({"p", "suspend", "s"}, t);
  EXPECT_EQ(o.held_by, "suspends");
  ASSERT_EQ(o.opened.size(), 1u);
  // Stays open, even after the window has passed.
  auto later = bank.Record({"p", "suspend", "s"}, t + absl::Hours(5));
  EXPECT_EQ(later.held_by, "suspends");
  EXPECT_TRUE(later.opened.empty());
  ASSERT_TRUE(bank.Find("suspends", t)->open);
  EXPECT_TRUE(bank.SetOpen("suspends", false, t, "reset"));
  EXPECT_FALSE(bank.Find("suspends", t)->open);
  EXPECT_TRUE(bank.Record({"p", "suspend", "s"}, t + absl::Hours(5)).held_by.empty());
  EXPECT_FALSE(bank.SetOpen("nope", true, t, ""));
}

// A decision an open breaker holds creates nothing: another breaker in its scope must not
// count it (it used to, and could open with no mitigation created); nor one whose
// decision trips a third breaker.
TEST(Breakers, HeldDecisionsAreCountedNowhere) {
  BreakerBank bank;
  bank.Configure({Spec("blocks", BreakerSpec::Scope::kAction, "block", 1),
                  Spec("src", BreakerSpec::Scope::kSource, "s", 2)});
  absl::Time t = absl::FromUnixSeconds(1700000000);
  EXPECT_TRUE(bank.Record({"p", "block", "s"}, t).held_by.empty());
  auto trip = bank.Record({"p", "block", "s"}, t);  // the second block trips "blocks"
  EXPECT_EQ(trip.held_by, "blocks");
  EXPECT_EQ(trip.opened, std::vector<std::string>{"blocks"});
  EXPECT_EQ(bank.Find("blocks", t)->count, 1);
  EXPECT_EQ(bank.Find("src", t)->count, 1);  // the tripping decision was not counted
  for (int i = 0; i < 5; ++i) EXPECT_EQ(bank.Record({"p", "block", "s"}, t).held_by, "blocks");
  EXPECT_EQ(bank.Find("src", t)->count, 1);
  EXPECT_FALSE(bank.Find("src", t)->open);
  // A decision only "src" covers still passes: one more fits under its limit of 2.
  EXPECT_TRUE(bank.Record({"p", "flag", "s"}, t).held_by.empty());
  EXPECT_EQ(bank.Find("src", t)->count, 2);
}

TEST(Breakers, WindowSlides) {
  BreakerBank bank;
  bank.Configure({Spec("g", BreakerSpec::Scope::kGlobal, "", 2)});
  absl::Time t = absl::FromUnixSeconds(1700000000);
  EXPECT_TRUE(bank.Record({"p", "a", "s"}, t).held_by.empty());
  EXPECT_TRUE(bank.Record({"p", "a", "s"}, t).held_by.empty());
  // Eleven minutes later the first two are out of the window.
  EXPECT_TRUE(bank.Record({"p", "a", "s"}, t + absl::Minutes(11)).held_by.empty());
  EXPECT_TRUE(bank.Record({"p", "a", "s"}, t + absl::Minutes(11)).held_by.empty());
  EXPECT_EQ(bank.Record({"p", "a", "s"}, t + absl::Minutes(11)).held_by, "g");
}

// A burst straddling the window's start: the count covers the whole window (the bucket
// holding its start included), so no more than `limit` pass in any window. It counted
// window/bucket buckets only — up to a bucket short of the window, and for a relative
// breaker with the default baseline (30 s buckets) half of a 1m window: twice the limit
// passed.
TEST(Breakers, NoMoreThanTheLimitPassInAnyWindow) {
  for (bool relative : {false, true}) {
    BreakerBank bank;
    BreakerSpec s = Spec("p", BreakerSpec::Scope::kPolicy, "pol", 3);
    s.window = relative ? absl::Minutes(1) : absl::Seconds(16);
    if (relative) {
      s.factor = 2;
      s.baseline = absl::Hours(24 * 7);
    }
    bank.Configure({s});
    // Starts at several offsets within a bucket; three decisions, then three more just
    // inside one window of the first.
    for (int offset_ms : {0, 300, 800, 999}) {
      bank.SetOpen("p", false, absl::UnixEpoch(), "");  // closed, counts cleared
      absl::Time t = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(offset_ms);
      int passed = 0;
      for (int i = 0; i < 3; ++i) passed += bank.Record({"pol", "a", "s"}, t).held_by.empty();
      const absl::Time later = t + s.window - absl::Milliseconds(50);
      for (int i = 0; i < 3; ++i) {
        passed += bank.Record({"pol", "a", "s"}, later).held_by.empty();
      }
      EXPECT_EQ(passed, 3) << "relative " << relative << " offset " << offset_ms;
    }
  }
}

TEST(Breakers, RelativeLimitNeedsBothConditions) {
  BreakerBank bank;
  BreakerSpec s = Spec("rel", BreakerSpec::Scope::kSource, "bot", 25);
  s.window = absl::Hours(1);
  s.factor = 3;
  s.baseline = absl::Hours(24 * 7);
  bank.Configure({s});
  absl::Time t0 = absl::FromUnixSeconds(1700000000);
  // A steady 20 per hour for a week (one every 3 minutes): under `limit`, never opens.
  for (int h = 0; h < 24 * 7; ++h) {
    for (int i = 0; i < 20; ++i) {
      const absl::Time at = t0 + absl::Hours(h) + absl::Minutes(3 * i);
      ASSERT_TRUE(bank.Record({"p", "a", "bot"}, at).held_by.empty())
          << "hour " << h << " item " << i;
    }
  }
  // A spike past 3x the trailing average (20) opens it: the window already holds the
  // last hour's 20 (and up to a bucket more), so about 40 more pass.
  absl::Time t = t0 + absl::Hours(24 * 7);
  int passed = 0;
  while (bank.Record({"p", "a", "bot"}, t).held_by.empty()) ++passed;
  EXPECT_GE(passed, 37);
  EXPECT_LE(passed, 41);
  EXPECT_EQ(bank.Record({"p", "a", "other"}, t).held_by, "");

  // Without history the trailing average is 0: `limit` alone decides.
  BreakerBank fresh;
  fresh.Configure({s});
  int first = 0;
  while (fresh.Record({"p", "a", "bot"}, t).held_by.empty()) ++first;
  EXPECT_EQ(first, 25);
}

TEST(Breakers, ConfigureKeepsStateOfSurvivors) {
  BreakerBank bank;
  absl::Time t = absl::FromUnixSeconds(1700000000);
  bank.Configure({Spec("a", BreakerSpec::Scope::kGlobal, "", 0),
                  Spec("b", BreakerSpec::Scope::kGlobal, "", 10)});
  EXPECT_EQ(bank.Record({"p", "x", "s"}, t).held_by, "a");
  bank.Configure({Spec("a", BreakerSpec::Scope::kGlobal, "", 100)});
  EXPECT_TRUE(bank.Find("a", t)->open);
  EXPECT_FALSE(bank.Find("b", t));
  EXPECT_EQ(bank.Status(t).size(), 1u);
}

TEST(Breakers, ConfigureNamesTheBreakersThatStartEmptyAndCountInFillsOne) {
  BreakerBank bank;
  absl::Time t = absl::FromUnixSeconds(1700000000);
  EXPECT_EQ(bank.Configure({Spec("a", BreakerSpec::Scope::kGlobal, "", 10),
                            Spec("b", BreakerSpec::Scope::kSource, "bot", 10)}),
            (std::vector<std::string>{"a", "b"}));
  bank.Record({"p", "x", "bot"}, t);
  // A new limit keeps the counts; a new scope (or window) does not; c is new.
  BreakerSpec b = Spec("b", BreakerSpec::Scope::kSource, "other", 10);
  EXPECT_EQ(bank.Configure({Spec("a", BreakerSpec::Scope::kGlobal, "", 20), b,
                            Spec("c", BreakerSpec::Scope::kGlobal, "", 10)}),
            (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(bank.Find("a", t)->count, 1);
  EXPECT_EQ(bank.Find("b", t)->count, 0);
  bank.CountIn("b", {"p", "x", "other"}, t);
  bank.CountIn("b", {"p", "x", "bot"}, t);  // out of its scope now
  bank.CountIn("nope", {"p", "x", "other"}, t);
  EXPECT_EQ(bank.Find("b", t)->count, 1);
  EXPECT_EQ(bank.Find("c", t)->count, 0);  // CountIn counts in the one named only
  EXPECT_EQ(bank.Find("a", t)->count, 1);
}

TEST(Breakers, RemoteCountsNeverOpenButTheNextLocalDecisionDoes) {
  BreakerBank bank;
  bank.Configure({Spec("src", BreakerSpec::Scope::kSource, "bot", 4)});
  absl::Time t = absl::FromUnixSeconds(1700000000);
  // Four decisions of other nodes: the count reaches the limit, nothing opens.
  for (int i = 0; i < 4; ++i) bank.CountRemote({"p", "a", "bot"}, t);
  bank.CountRemote({"p", "a", "other"}, t);  // out of scope
  EXPECT_EQ(bank.Find("src", t)->count, 4);
  EXPECT_FALSE(bank.Find("src", t)->open);
  EXPECT_EQ(bank.HeldBy({"p", "a", "bot"}), "");
  EXPECT_TRUE(bank.MayTrip({"p", "a", "bot"}, t, 0));  // 4 + this one > 4
  EXPECT_FALSE(bank.MayTrip({"p", "a", "other"}, t, 100));
  // The fifth decision in all is this node's: it opens the breaker and is held.
  auto o = bank.Record({"p", "a", "bot"}, t);
  EXPECT_EQ(o.held_by, "src");
  EXPECT_EQ(o.opened.size(), 1u);
  EXPECT_EQ(bank.HeldBy({"p", "a", "bot"}), "src");
  EXPECT_EQ(bank.HeldBy({"p", "a", "other"}), "");
  // The decision that opened it is held, so not counted; open, remote decisions are not
  // counted either (as held ones are not).
  EXPECT_EQ(bank.Find("src", t)->count, 4);
  bank.CountRemote({"p", "a", "bot"}, t);
  EXPECT_EQ(bank.Find("src", t)->count, 4);
}

TEST(Breakers, RemoteCountsLandInTheBucketOfTheirTime) {
  BreakerBank bank;
  bank.Configure({Spec("g", BreakerSpec::Scope::kGlobal, "", 100)});
  absl::Time t = absl::FromUnixSeconds(1700000000);
  bank.Record({"p", "a", "s"}, t + absl::Minutes(5));
  // Delivered late: an older time goes before the newest bucket, and slides out of the
  // window before it.
  bank.CountRemote({"p", "a", "s"}, t);
  bank.CountRemote({"p", "a", "s"}, t + absl::Minutes(2));
  bank.CountRemote({"p", "a", "s"}, t - absl::Hours(1));  // older than the window: ignored
  EXPECT_EQ(bank.Find("g", t + absl::Minutes(5))->count, 3);
  EXPECT_FALSE(bank.MayTrip({"p", "a", "s"}, t + absl::Minutes(5), 96));  // 3 + 1 + 96
  EXPECT_TRUE(bank.MayTrip({"p", "a", "s"}, t + absl::Minutes(5), 97));
  EXPECT_EQ(bank.Find("g", t + absl::Minutes(11))->count, 2);
  EXPECT_EQ(bank.Find("g", t + absl::Minutes(13))->count, 1);
  EXPECT_EQ(bank.Find("g", t + absl::Minutes(16))->count, 0);
}

TEST(Approval, Rules) {
  EXPECT_EQ(RequiredApprovals(core::Severity::kCritical), 2);
  EXPECT_EQ(RequiredApprovals(core::Severity::kHigh), 1);
  EXPECT_EQ(CheckReviewer("k1", "k1", {}).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckReviewer("k2", "k1", {"k2"}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(CheckReviewer("k3", "k1", {"k2"}).ok());
  EXPECT_EQ(EntitiesCovered(E("cidr:10.0.0.0/24")), 256);
  EXPECT_EQ(EntitiesCovered(E("user:1")), 1);
  EXPECT_EQ(EntitiesCovered(E("cidr:::/0")), int64_t{1} << 62);
  EXPECT_EQ(EntitiesCovered(E("cidr:2001:db8::/48")), 65536);
  EXPECT_EQ(EntitiesCovered(E("cidr:2001:db8::/96")), 1);
  EXPECT_FALSE(BulkNeedsApproval(1 << 20, 1000, core::Severity::kLow));
  EXPECT_TRUE(BulkNeedsApproval(1001, 1000));
  EXPECT_FALSE(BulkNeedsApproval(1000, 1000));
}

}  // namespace
}  // namespace quell::safeguards
