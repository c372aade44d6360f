#include "policy/policy_set.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kGood[] = R"(actions:
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d, surfaces: [payout]}
  - {name: challenge, verdict: challenge, severity: low, ttl: 1d}
  - {name: suspend, verdict: deny, severity: critical, ttl: 30d}
counters:
  - {name: plays, on: play, key: entity, windows: [1m, 1h, 24h]}
  - {name: accounts_per_ip, on: login, key: attrs.ip, distinct: entity, windows: [1h]}
lists:
  - {name: verified_artists, protected: true}
  - {name: watch1}
breakers:
  - {name: suspend-rate, action: suspend, limit: 100, window: 10m}
  - {name: bot-rate, policy: bot-model-high, limit: 10, window: 1h, relative: {factor: 3}}
  - {name: all, limit: 1000, window: 1h}
policies:
  - id: bot-model-high
    mode: enforce
    on: detection
    when: detection.type == "artificial_streaming" && detection.score >= 0.9
    action: exclude_royalties
    ttl: 90d
    escalate: [{after: 2, action: suspend}]
  - id: loop-listener
    mode: shadow
    on: play
    when: count("plays", entity, "1h") > 300 && event.attrs.ms_played < 35000
    action: challenge
  - id: credential-stuffing
    mode: enforce
    on: login
    when: distinct("accounts_per_ip", event.attrs.ip, "1h") > 20
    action: challenge
    target: attrs.ip
  - id: farm
    mode: off
    on: detection
    when: detection.type == "stream_farm"
    action: suspend
    related: [device, ip]
    delay: {min: 10m, max: 6h}
    rollout: 25
)";

LoadResult Load(const std::string& yaml) { return LoadPolicySetWithDiagnostics(yaml, 3); }

// The single error of a load that must fail, as "line:column: message".
std::string OnlyError(const std::string& yaml) {
  LoadResult r = Load(yaml);
  EXPECT_EQ(r.set, nullptr);
  EXPECT_THAT(r.errors, SizeIs(1));
  return r.errors.empty() ? "" : r.errors[0].ToString();
}

std::string WithPolicy(const std::string& body) {
  return "policies:\n  - id: p1\n    on: detection\n    action: flag\n" + body;
}

TEST(PolicySet, LoadsTheSpecExample) {
  LoadResult r = Load(kGood);
  ASSERT_NE(r.set, nullptr) << (r.errors.empty() ? "" : r.errors[0].ToString());
  const PolicySet& s = *r.set;
  EXPECT_EQ(s.version(), 3);
  EXPECT_EQ(s.yaml(), kGood);
  ASSERT_THAT(s.policies(), SizeIs(4));
  EXPECT_EQ(s.policies()[0].id, "bot-model-high");
  EXPECT_EQ(s.policies()[1].mode, Mode::kShadow);
  EXPECT_EQ(s.catalog().size(), 3u);
  EXPECT_THAT(s.counters(), SizeIs(2));
  EXPECT_EQ(s.counters()[1].distinct, "entity");
  EXPECT_EQ(s.counters()[0].windows[2], absl::Hours(24));
  ASSERT_THAT(s.lists(), SizeIs(2));
  EXPECT_TRUE(s.lists()[0].is_protected);
  EXPECT_EQ(s.lists()[0].kind, "protected");
  EXPECT_EQ(s.lists()[1].kind, "watch");
  ASSERT_THAT(s.breakers(), SizeIs(3));
  EXPECT_EQ(s.breakers()[0].scope, BreakerDef::Scope::kAction);
  EXPECT_EQ(s.breakers()[1].scope, BreakerDef::Scope::kPolicy);
  ASSERT_TRUE(s.breakers()[1].relative.has_value());
  EXPECT_EQ(s.breakers()[1].relative->baseline, absl::Hours(24 * 7));
  EXPECT_EQ(s.breakers()[2].scope, BreakerDef::Scope::kGlobal);

  const Policy* bot = s.Find("bot-model-high");
  ASSERT_NE(bot, nullptr);
  EXPECT_TRUE(bot->on_detection);
  EXPECT_EQ(bot->ttl, absl::Hours(24 * 90));
  ASSERT_THAT(bot->escalate, SizeIs(1));
  EXPECT_EQ(bot->escalate[0].after, 2);
  EXPECT_EQ(bot->escalate[0].action, "suspend");
  EXPECT_EQ(bot->escalate_window, absl::Hours(24 * 90));
  EXPECT_EQ(s.Find("nope"), nullptr);

  const Policy* cs = s.Find("credential-stuffing");
  EXPECT_EQ(cs->target_attr, "ip");
  EXPECT_EQ(cs->ttl, absl::Hours(24));  // the action's default

  const Policy* farm = s.Find("farm");
  EXPECT_EQ(farm->rollout, 25);
  EXPECT_THAT(farm->related_types, ElementsAre("device", "ip"));
  EXPECT_EQ(farm->delay_min, absl::Minutes(10));
  EXPECT_EQ(farm->delay_max, absl::Hours(6));

  // Index: off policies are never candidates; event policies by type.
  EXPECT_THAT(s.DetectionCandidates("artificial_streaming"), ElementsAre(0u));
  EXPECT_THAT(s.DetectionCandidates("stream_farm"), IsEmpty());
  EXPECT_THAT(s.DetectionCandidates("other"), IsEmpty());
  EXPECT_THAT(s.EventCandidates("login"), ElementsAre(2u));
  EXPECT_THAT(s.EventCandidates("play"), ElementsAre(1u));
  EXPECT_THAT(s.EventCandidates("signup"), IsEmpty());
}

TEST(PolicySet, DefaultCatalogWhenActionsAbsent) {
  LoadResult r = Load(WithPolicy("    when: true\n"));
  ASSERT_NE(r.set, nullptr);
  EXPECT_NE(r.set->catalog().Find("remove_from_charts"), nullptr);
  EXPECT_EQ(r.set->policies()[0].ttl, absl::Hours(24 * 7));  // flag's default
  EXPECT_EQ(r.set->policies()[0].mode, Mode::kEnforce);
}

TEST(PolicySet, EmptySetIsValidButEmptyFileIsNot) {
  LoadResult r = Load("policies: []\n");
  ASSERT_NE(r.set, nullptr);
  EXPECT_THAT(r.set->policies(), IsEmpty());
  EXPECT_THAT(OnlyError(""), HasSubstr("empty"));
  // A mapping without `policies:` (`{}` over the API) would have replaced every policy
  // with none.
  EXPECT_THAT(OnlyError("{}\n"), HasSubstr("no `policies:`"));
  EXPECT_THAT(OnlyError("detection_types: [a]\n"), HasSubstr("no `policies:`"));
}

// yaml-cpp passes any byte through; the set is stored in the ledger and served as JSON.
TEST(PolicySet, InvalidUtf8IsRefusedWhereItIs) {
  LoadResult r = Load(WithPolicy("    when: true\n    description: \"caf\xe9\"\n"));
  ASSERT_EQ(r.set, nullptr);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].ToString(), "6:22: invalid UTF-8: a policy set is text");
  EXPECT_NE(Load(WithPolicy("    when: true\n    description: \"caf\xc3\xa9\"\n")).set, nullptr);
}

TEST(PolicySet, UnknownKeySuggestsTheRightOne) {
  LoadResult typo = Load(WithPolicy("    wehn: true\n"));
  ASSERT_THAT(typo.errors, SizeIs(2)) << "the typo alone must not satisfy `when`";
  EXPECT_EQ(typo.errors[0].ToString(),
            "2:5: policy p1 needs `when:` (write `when: true` to match everything)");
  EXPECT_EQ(typo.errors[1].ToString(),
            "5:5: unknown key \"wehn\" in a policy — did you mean `when`?");
  LoadResult r = Load(WithPolicy("    wehn: true\n    when: true\n"));
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].ToString(), "5:5: unknown key \"wehn\" in a policy — did you mean `when`?");
  EXPECT_THAT(
      Load("polices: []\n").errors[0].ToString(),
      HasSubstr("1:1: unknown key \"polices\" in the policy set — did you mean `policies`?"));
  EXPECT_THAT(Load(WithPolicy("    when: true\n    colour: red\n")).errors[0].ToString(),
              HasSubstr("6:5: unknown key \"colour\" in a policy (expected one of: id, mode"));
  EXPECT_THAT(
      Load("counters:\n  - {name: c, on: play, windows: [1h], windws: [1h]}\npolicies: []\n")
          .errors[0]
          .ToString(),
      HasSubstr("2:40: unknown key \"windws\" in a counter — did you mean `windows`?"));
}

// A window the counter stores refuse is refused here, where the set is validated whole:
// published, it stopped every counter and the server could not start on the ledger.
TEST(PolicySet, CounterWindowsAreWhatTheCounterStoresTake) {
  EXPECT_EQ(OnlyError("counters:\n  - {name: y, on: signup, windows: [1h, 400d]}\npolicies: []\n"),
            "2:41: window 400d must be in (0, 366d]");
  EXPECT_TRUE(Load("counters:\n  - {name: y, on: signup, windows: [366d]}\npolicies: []\n").set);
}

TEST(PolicySet, DuplicateKeysAndIds) {
  EXPECT_THAT(Load(WithPolicy("    when: true\n    when: false\n")).errors[0].ToString(),
              HasSubstr("6:5: duplicate key `when`"));
  std::string two = WithPolicy("    when: true\n") +
                    "  - id: p1\n    on: detection\n    action: flag\n    when: true\n";
  EXPECT_EQ(OnlyError(two), "6:9: duplicate policy id p1 (first on line 2)");
}

TEST(PolicySet, BadIdsModesAndOn) {
  EXPECT_THAT(OnlyError("policies:\n  - {id: Bad_Id, on: detection, action: flag, when: true}\n"),
              HasSubstr("2:10: policy id \"Bad_Id\" must match"));
  EXPECT_THAT(
      OnlyError("policies:\n  - {id: a, mode: loud, on: detection, action: flag, when: true}\n"),
      HasSubstr("2:19: mode \"loud\" must be enforce, shadow or off"));
  EXPECT_THAT(OnlyError("policies:\n  - {id: a, on: Detection!, action: flag, when: true}\n"),
              HasSubstr("2:17: on: \"Detection!\" must be detection or an event type"));
  EXPECT_THAT(OnlyError("policies:\n  - {id: a, on: detection, when: true}\n"),
              HasSubstr("2:5: policy a needs an action"));
  EXPECT_THAT(OnlyError("policies:\n  - {on: detection, action: flag, when: true}\n"),
              HasSubstr("2:5: policy #1 needs an id"));
  EXPECT_THAT(OnlyError("policies:\n  - not a map\n"),
              HasSubstr("2:5: a policy must be a mapping"));
  EXPECT_THAT(OnlyError("policies: {}\n"), HasSubstr("1:11: policies must be a list"));
}

TEST(PolicySet, BadDurations) {
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    ttl: 90 days\n")),
              HasSubstr("6:10: ttl: "));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    ttl: 0s\n")), HasSubstr("6:10: ttl: "));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    delay: {min: 2h, max: 1h}\n")),
              HasSubstr("6:27: delay max must not be less than min"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    delay: soon\n")),
              HasSubstr("6:12: delay: "));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    delay: {min: 1m}\n")),
              HasSubstr("delay needs both min and max"));
  EXPECT_THAT(OnlyError("counters:\n  - {name: c, on: play, windows: [1h, 60m]}\npolicies: []\n"),
              HasSubstr("2:39: window 60m is listed twice"));
  EXPECT_THAT(OnlyError("counters:\n  - {name: c, on: play, windows: [1x]}\npolicies: []\n"),
              HasSubstr("2:35: window \"1x\""));
  EXPECT_THAT(OnlyError("actions:\n  - {name: a, verdict: deny, ttl: forever}\npolicies: []\n"),
              HasSubstr("2:35: ttl: "));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, limit: 1, window: 0m}\npolicies: []\n"),
              HasSubstr("2:33: window: "));
}

TEST(PolicySet, DelayForms) {
  LoadResult r = Load(WithPolicy("    when: true\n    delay: 15m\n"));
  ASSERT_NE(r.set, nullptr);
  EXPECT_EQ(r.set->policies()[0].delay_min, absl::Minutes(15));
  EXPECT_EQ(r.set->policies()[0].delay_max, absl::Minutes(15));
  r = Load(WithPolicy("    when: true\n    delay: {min: 0s, max: 1h}\n"));
  ASSERT_NE(r.set, nullptr);
  EXPECT_EQ(r.set->policies()[0].delay_min, absl::ZeroDuration());
}

TEST(PolicySet, UnknownActionsCountersAndLists) {
  EXPECT_THAT(
      OnlyError(WithPolicy("    when: true\n").replace(WithPolicy("").find("flag"), 4, "suspnd")),
      HasSubstr("4:13: unknown action \"suspnd\" — did you mean suspend?"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    escalate: [{after: 1, action: ban}]\n")),
              HasSubstr("6:35: unknown action \"ban\""));
  EXPECT_THAT(OnlyError(WithPolicy("    when: count(\"plays\", entity, \"1h\") > 3\n")),
              HasSubstr("5:17: when: unknown counter plays"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: in_list(\"vip\", entity)\n")), HasSubstr("5:"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, policy: ghost, limit: 1, window: 1m}\n"
                        "policies: []\n"),
              HasSubstr("2:23: breaker b: unknown policy \"ghost\""));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, action: ban, limit: 1, window: 1m}\n"
                        "policies: []\n"),
              HasSubstr("2:23: breaker b: unknown action \"ban\""));
}

TEST(PolicySet, EscalationMustAscend) {
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    escalate:\n      - {after: 3, action: "
                                   "suspend}\n      - {after: 2, action: block}\n")),
              HasSubstr("8:17: escalate steps must be in ascending order of after: 2 follows 3"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    escalate: [{after: 0, action: block}]\n")),
              HasSubstr("6:24: escalate after: must be at least 1"));
  EXPECT_THAT(
      OnlyError(WithPolicy("    when: true\n    escalate: [{after: two, action: block}]\n")),
      HasSubstr("6:24: after must be an integer"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    escalate_window: 30d\n")),
              HasSubstr("6:5: escalate_window without escalate"));
}

TEST(PolicySet, AGuardOnAnUndeclaredDetectionTypeIsATypo) {
  const std::string head =
      "detection_types: [bot, farm]\npolicies:\n  - id: p1\n    on: detection\n"
      "    action: flag\n";
  EXPECT_THAT(OnlyError(head + "    when: detection.type == \"bto\" && detection.score > 0.5\n"),
              HasSubstr("detection type \"bto\" is not in detection_types (bot, farm)"));
  EXPECT_THAT(OnlyError(head + "    when: detection.type in [\"bot\", \"frm\"]\n"),
              HasSubstr("detection type \"frm\""));
  EXPECT_NE(Load(head + "    when: detection.type in [\"bot\", \"farm\"]\n").set, nullptr);
  // Without declared types any type may come: nothing to check against.
  EXPECT_NE(Load(WithPolicy("    when: detection.type == \"bto\"\n")).set, nullptr);
}

TEST(PolicySet, SelfContradictionsAreRefused) {
  EXPECT_THAT(
      OnlyError("lists:\n  - {name: l1, protected: false, kind: protected}\npolicies: []\n"),
      HasSubstr("list l1 says protected: false but kind: protected"));
  EXPECT_THAT(OnlyError("lists:\n  - {name: l1, kind: deny, protected: true}\npolicies: []\n"),
              HasSubstr("list l1 says protected: true but kind: deny"));
  // The default baseline (7d) is checked as a written one is.
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b1, limit: 5, window: 8d, relative: {factor: 2}}\n"
                        "policies: []\n"),
              HasSubstr("relative baseline (the default 168h) must be longer than the window"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b1, limit: 5, window: 8d, relative: {factor: 2, "
                        "baseline: 7d}}\npolicies: []\n"),
              HasSubstr("relative baseline (168h) must be longer than the window"));
}

TEST(PolicySet, EscalationStepsLastTheirOwnTime) {
  // The policy's ttl is its own action's; a step's action lasts the step's ttl, else that
  // action's catalog default.
  LoadResult r = Load(
      WithPolicy("    ttl: 2d\n    when: true\n    escalate:\n      - {after: 1, action: suspend}\n"
                 "      - {after: 2, action: block, ttl: 12h}\n"));
  ASSERT_NE(r.set, nullptr) << (r.errors.empty() ? "" : r.errors[0].ToString());
  const Policy& p = r.set->policies()[0];
  EXPECT_EQ(p.ttl, absl::Hours(48));
  ASSERT_THAT(p.escalate, SizeIs(2));
  EXPECT_EQ(p.escalate[0].ttl, r.set->catalog().Find("suspend")->default_ttl);
  EXPECT_NE(p.escalate[0].ttl, p.ttl);
  EXPECT_EQ(p.escalate[1].ttl, absl::Hours(12));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    escalate: [{after: 1, action: block, "
                                   "ttl: soon}]\n")),
              HasSubstr("ttl"));
}

TEST(PolicySet, RolloutTargetRelated) {
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    rollout: 101\n")),
              HasSubstr("6:14: rollout \"101\" must be a whole percentage from 0 to 100"));
  LoadResult r = Load(WithPolicy("    when: true\n    rollout: 30%\n    related: true\n"));
  ASSERT_NE(r.set, nullptr);
  EXPECT_EQ(r.set->policies()[0].rollout, 30);
  EXPECT_TRUE(r.set->policies()[0].related_all);
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    target: attrs.ip\n")),
              HasSubstr("6:13: target \"attrs.ip\": detection policies act on"));
  EXPECT_THAT(OnlyError("policies:\n  - {id: a, on: login, action: flag, when: true, target: "
                        "ip}\n"),
              HasSubstr("target \"ip\" must be entity or attrs.<name>"));
  EXPECT_THAT(OnlyError("policies:\n  - {id: a, on: login, action: flag, when: true, related: "
                        "true}\n"),
              HasSubstr("related: applies to detection policies only"));
  EXPECT_THAT(OnlyError(WithPolicy("    when: true\n    related: [Device]\n")),
              HasSubstr("6:15: related: \"Device\" is not an entity type"));
}

TEST(PolicySet, CatalogErrors) {
  EXPECT_THAT(OnlyError("actions:\n  - {name: a, verdict: maybe}\npolicies: []\n"),
              HasSubstr("2:24: verdict \"maybe\" must be allow"));
  EXPECT_THAT(OnlyError("actions:\n  - {name: a, verdict: deny, severity: huge}\npolicies: []\n"),
              HasSubstr("2:40: severity \"huge\""));
  EXPECT_THAT(OnlyError("actions:\n  - {name: a, verdict: deny}\n  - {name: a, verdict: allow}\n"
                        "policies: []\n"),
              HasSubstr("3:12: action a is declared twice"));
  EXPECT_THAT(OnlyError("actions:\n  - {name: Bad, verdict: deny}\npolicies: []\n"),
              HasSubstr("2:12: action name \"Bad\" must match"));
  EXPECT_THAT(OnlyError("actions:\n  - {verdict: deny}\npolicies: []\n"),
              HasSubstr("2:5: an action needs a name"));
  // A custom catalog replaces the default one.
  EXPECT_THAT(
      OnlyError("actions:\n  - {name: a, verdict: deny}\n" + WithPolicy("    when: true\n")),
      HasSubstr("6:13: unknown action \"flag\" (the catalog has: a)"));
}

TEST(PolicySet, ListAndBreakerErrors) {
  EXPECT_THAT(OnlyError("lists:\n  - {name: a, protected: yes please}\npolicies: []\n"),
              HasSubstr("2:26: protected must be true or false"));
  EXPECT_THAT(OnlyError("lists:\n  - {name: a, kind: vip}\npolicies: []\n"),
              HasSubstr("2:21: list kind \"vip\""));
  EXPECT_THAT(OnlyError("lists:\n  - {name: a}\n  - {name: a}\npolicies: []\n"),
              HasSubstr("3:12: list a is declared twice (first on line 2)"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, action: suspend, source: x, limit: 1, window: "
                        "1m}\npolicies: []\n"),
              HasSubstr("a breaker has one scope"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, limit: 0, window: 1m}\npolicies: []\n"),
              HasSubstr("2:22: breaker limit must be at least 1"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, window: 1m}\npolicies: []\n"),
              HasSubstr("2:5: breaker b needs a limit"));
  EXPECT_THAT(OnlyError("breakers:\n  - {name: b, limit: 5, window: 1h, relative: {factor: 0.5}}\n"
                        "policies: []\n"),
              HasSubstr("relative factor must be greater than 1"));
  EXPECT_THAT(OnlyError("counters:\n  - {name: c, on: detection, windows: [1h]}\npolicies: []\n"),
              HasSubstr("2:19: counter on: \"detection\" must be an event type"));
  EXPECT_THAT(OnlyError("counters:\n  - {name: c, on: play, key: user, windows: [1h]}\n"
                        "policies: []\n"),
              HasSubstr("counter key \"user\" must be entity or attrs.<name>"));
}

TEST(PolicySet, WhenErrorsPointInsideTheFile) {
  // Plain scalar on one line: column of the error inside the expression.
  std::string yaml = WithPolicy("    when: detection.scor >= 0.9\n");
  LoadResult r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 5);
  EXPECT_EQ(r.errors[0].column, 21);  // at "scor"
  EXPECT_THAT(r.errors[0].message, HasSubstr("did you mean detection.score?"));

  // Block scalar: the error is on the second line of the expression, line 7 of the file.
  yaml =
      WithPolicy("    when: |\n      detection.score >= 0.9 &&\n        detection.tpye == \"x\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 7);
  EXPECT_EQ(r.errors[0].column, 19);

  // Folded block scalar: lines are kept for positions.
  yaml =
      WithPolicy("    when: >\n      detection.score >= 0.9 &&\n      detection.tpye == \"x\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 7);
  EXPECT_EQ(r.errors[0].column, 17);

  // A plain scalar folded over two lines.
  yaml = WithPolicy("    when: detection.score >= 0.9 &&\n      detection.tpye == \"x\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 6);
  EXPECT_EQ(r.errors[0].column, 17);

  // Double-quoted: after the quote.
  yaml = WithPolicy("    when: \"detection.scor > 1\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].column, 22);

  // Quoted over several lines, escapes before the error: the file's line and column (the
  // folded value put it at line 5, column 72, past the line's end).
  yaml = WithPolicy(
      "    when: \"detection.score > 0.5 && detection.type == \\\"x\\\" &&\n"
      "      detection.tpye == \\\"x\\\"\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 6);
  EXPECT_EQ(r.errors[0].column, 17);  // at "tpye"
  yaml = WithPolicy("    when: 'detection.type == ''x'' &&\n\n      detection.tpye == ''x'''\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 7);
  EXPECT_EQ(r.errors[0].column, 17);

  // Columns count characters, in the file and in the expression alike.
  yaml = WithPolicy("    when: \"detection.type == '\xc3\xa9' && detection.scor > 1\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 5);
  EXPECT_EQ(r.errors[0].column, 47);

  // A tag or an anchor before the scalar: the position is the expression's, not the
  // tag's (it was 9 columns off for `!!str "…"`), also with the scalar on the next line.
  yaml = WithPolicy("    when: !!str \"detection.scor > 1\"\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 5);
  EXPECT_EQ(r.errors[0].column, 28);
  yaml = WithPolicy("    when: &w detection.scor >= 0.9\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 5);
  EXPECT_EQ(r.errors[0].column, 24);
  yaml = WithPolicy("    when: !!str\n      detection.scor >= 0.9\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 6);
  EXPECT_EQ(r.errors[0].column, 17);
  yaml = WithPolicy("    when: !!str   # a comment\n      detection.scor >= 0.9\n");
  r = Load(yaml);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 6);
  EXPECT_EQ(r.errors[0].column, 17);

  // Type error on line 40 reports line 40.
  std::string many = "policies:\n";
  for (int i = 0; i < 7; ++i) {
    many += "  - id: p" + std::to_string(i) +
            "\n    on: detection\n    action: flag\n"
            "    when: detection.score > 0.5\n    mode: shadow\n";
  }
  many += "  - id: late\n    on: detection\n    action: flag\n    when: detection.score == \"x\"\n";
  r = Load(many);
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].line, 40);
  EXPECT_EQ(r.errors[0].column, 27);  // at "=="
}

TEST(PolicySet, EventSchemaForEventPolicies) {
  EXPECT_THAT(OnlyError("policies:\n  - {id: a, on: login, action: flag, when: detection.score > "
                        "1}\n"),
              HasSubstr("2:44: when: detection is not available in an event policy"));
  LoadResult r =
      Load("policies:\n  - {id: a, on: login, action: flag, when: event.attrs.x == 1}\n");
  ASSERT_NE(r.set, nullptr);
  EXPECT_TRUE(r.set->policies()[0].uses_evidence);
}

TEST(PolicySet, EveryErrorIsListedInFileOrder) {
  std::string yaml =
      "actions:\n"
      "  - {name: a, verdict: deny, ttl: 1x}\n"
      "policies:\n"
      "  - {id: p, on: detection, action: nope, when: detection.score > 0.5}\n"
      "  - {id: p, on: detection, action: a, when: detection.bogus}\n"
      "  - {id: q, on: detection, action: a, wehn: true}\n";
  LoadResult r = Load(yaml);
  EXPECT_EQ(r.set, nullptr);
  ASSERT_GE(r.errors.size(), 5u);
  for (size_t i = 1; i < r.errors.size(); ++i) {
    EXPECT_LE(r.errors[i - 1].line, r.errors[i].line);
  }
  EXPECT_EQ(r.errors[0].line, 2);
  auto status = LoadPolicySet(yaml, 1);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.status().message()), HasSubstr("2:35: ttl: "));
  EXPECT_THAT(std::string(status.status().message()), HasSubstr("\n5:"));
}

TEST(PolicySet, YamlSyntaxErrorsHavePositions) {
  LoadResult r = Load("policies:\n  - {id: a, on: [detection\n");
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_GE(r.errors[0].line, 2);
  EXPECT_THAT(r.errors[0].message, HasSubstr("YAML syntax error"));
  EXPECT_THAT(OnlyError("a: 1\n---\nb: 2\n"), HasSubstr("one YAML document"));
  EXPECT_THAT(OnlyError("[1, 2]\n"), HasSubstr("1:1: the policy set must be a mapping"));
  std::string deep(10000, '[');
  EXPECT_EQ(Load(deep).set, nullptr);
}

TEST(PolicySet, DetectionTypeIndex) {
  LoadResult r = Load(
      "policies:\n"
      "  - {id: a, on: detection, action: flag, when: 'detection.type == \"x\"'}\n"
      "  - {id: b, on: detection, action: flag, when: detection.score > 0.5}\n"
      "  - {id: c, on: detection, action: flag, when: 'detection.type in [\"x\", \"y\"]'}\n"
      "  - {id: d, on: detection, action: flag, when: 'detection.type == \"y\"', mode: off}\n"
      "  - {id: e, on: detection, action: flag, when: 'detection.type == \"y\"', mode: shadow}\n");
  ASSERT_NE(r.set, nullptr) << r.errors[0].ToString();
  EXPECT_THAT(r.set->DetectionCandidates("x"), ElementsAre(0u, 1u, 2u));
  EXPECT_THAT(r.set->DetectionCandidates("y"), ElementsAre(1u, 2u, 4u));
  EXPECT_THAT(r.set->DetectionCandidates("z"), ElementsAre(1u));
  EXPECT_THAT(r.set->DetectionPolicies(), ElementsAre(0u, 1u, 2u, 4u));
}

TEST(PolicySet, TooManyErrorsStops) {
  std::string yaml = "policies:\n";
  for (int i = 0; i < 500; ++i) yaml += "  - {id: x, on: detection}\n";
  LoadResult r = Load(yaml);
  EXPECT_EQ(r.set, nullptr);
  EXPECT_LE(r.errors.size(), 201u);
  EXPECT_THAT(r.errors.back().message, HasSubstr("too many errors"));
}

}  // namespace
}  // namespace quell::policy

namespace quell::policy {
namespace {

TEST(PolicySetDetectionTypes, DeclaredTypesAreTheOnlyOnesKnown) {
  LoadResult open = LoadPolicySetWithDiagnostics("policies: []\n", 1);
  ASSERT_NE(open.set, nullptr);
  EXPECT_TRUE(open.set->KnowsDetectionType("anything_at_all"));  // nothing declared
  LoadResult r = LoadPolicySetWithDiagnostics(
      "detection_types: [artificial_streaming, stream_farm]\npolicies: []\n", 1);
  ASSERT_NE(r.set, nullptr) << (r.errors.empty() ? "" : r.errors[0].ToString());
  EXPECT_TRUE(r.set->KnowsDetectionType("stream_farm"));
  EXPECT_FALSE(r.set->KnowsDetectionType("artifical_streaming"));
  EXPECT_EQ(r.set->UnknownDetectionTypeError("stream_farm"), "");
  EXPECT_EQ(r.set->UnknownDetectionTypeError("artifical_streaming"),
            "unknown detection type \"artifical_streaming\"; policy set v1 declares: "
            "artificial_streaming, stream_farm");
  LoadResult unpublished = LoadPolicySetWithDiagnostics(
      "detection_types: [artificial_streaming]\npolicies: []\n", 0);  // a --policies file
  ASSERT_NE(unpublished.set, nullptr);
  EXPECT_EQ(unpublished.set->UnknownDetectionTypeError("x"),
            "unknown detection type \"x\"; the policy set declares: artificial_streaming");
  LoadResult bad = LoadPolicySetWithDiagnostics(
      "detection_types: [Bad Type, ok_type, ok_type]\npolicies: []\n", 1);
  ASSERT_EQ(bad.set, nullptr);
  ASSERT_EQ(bad.errors.size(), 2u);
  EXPECT_EQ(bad.errors[0].line, 1);
}

}  // namespace
}  // namespace quell::policy
