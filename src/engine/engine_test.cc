#include "engine/engine.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/internal/json_map.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const absl::Time kNow = absl::FromUnixSeconds(1772366400);  // 2026-03-01T12:00:00Z

std::shared_ptr<const policy::PolicySet> Load(const std::string& yaml, int64_t version = 7) {
  auto set = policy::LoadPolicySet(yaml, version);
  EXPECT_TRUE(set.ok()) << set.status().message();
  return set.ok() ? *set : nullptr;
}

core::Entity E(std::string_view s) { return *core::Entity::Parse(s); }

Detection Det(std::string type, std::string entity, double score, std::string id = "d1") {
  Detection d;
  d.id = std::move(id);
  d.source = "bot-model-v3";
  d.type = std::move(type);
  d.entity = E(entity);
  d.score = score;
  d.observed_at = kNow;
  return d;
}

std::vector<std::string> Targets(const Evaluation& ev) {
  std::vector<std::string> out;
  for (const Proposal& p : ev.proposals) out.push_back(p.policy + "->" + p.entity.str());
  return out;
}

TEST(Engine, ProposalFields) {
  auto set = Load(R"(policies:
  - id: bot
    on: detection
    when: detection.type == "bot" && detection.score >= 0.9
    action: exclude_royalties
    ttl: 45d
    escalate: [{after: 2, action: suspend}, {after: 4, action: block}]
    escalate_window: 30d
  - id: plain
    on: detection
    when: detection.type == "bot"
    action: flag
)");
  ASSERT_NE(set, nullptr);
  policy::EmptyEnvironment env;
  Evaluation ev = Evaluate(*set, Det("bot", "user:u1", 0.95), env, kNow);
  ASSERT_THAT(ev.proposals, SizeIs(2));
  const Proposal& p = ev.proposals[0];
  EXPECT_EQ(p.policy, "bot");
  EXPECT_EQ(p.policy_version, 7);
  EXPECT_EQ(p.entity.str(), "user:u1");
  EXPECT_EQ(p.action, "exclude_royalties");
  EXPECT_EQ(p.ttl, absl::Hours(24 * 45));
  EXPECT_FALSE(p.shadow);
  EXPECT_EQ(p.delay, absl::ZeroDuration());
  EXPECT_EQ(p.escalation_window, absl::Hours(24 * 30));
  EXPECT_FALSE(p.via_related);
  EXPECT_EQ(p.reason, "policy bot (v7) matched detection d1 (bot, score 0.95)");
  EXPECT_EQ(ev.proposals[1].ttl, absl::Hours(24 * 7));  // flag's default ttl
  EXPECT_EQ(ev.policies_evaluated, 2);

  // Escalation selection: the last step with after <= prior.
  EXPECT_EQ(EscalatedAction(p, 0), "exclude_royalties");
  EXPECT_EQ(EscalatedAction(p, 1), "exclude_royalties");
  EXPECT_EQ(EscalatedAction(p, 2), "suspend");
  EXPECT_EQ(EscalatedAction(p, 3), "suspend");
  EXPECT_EQ(EscalatedAction(p, 4), "block");
  EXPECT_EQ(EscalatedAction(p, 100), "block");
  EXPECT_EQ(EscalatedAction(ev.proposals[1], 100), "flag");

  EXPECT_THAT(Evaluate(*set, Det("bot", "user:u1", 0.5), env, kNow).proposals, SizeIs(1));
  EXPECT_THAT(Evaluate(*set, Det("other", "user:u1", 0.99), env, kNow).proposals, IsEmpty());
}

TEST(Engine, ModesOffAndShadow) {
  auto set = Load(R"(policies:
  - {id: on, on: detection, when: "true", action: flag}
  - {id: sh, on: detection, when: "true", action: flag, mode: shadow}
  - {id: off, on: detection, when: "true", action: flag, mode: off}
)");
  policy::EmptyEnvironment env;
  Evaluation ev = Evaluate(*set, Det("x", "user:u1", 0.1), env, kNow);
  EXPECT_THAT(Targets(ev), ElementsAre("on->user:u1", "sh->user:u1"));
  EXPECT_FALSE(ev.proposals[0].shadow);
  EXPECT_TRUE(ev.proposals[1].shadow);
  EXPECT_EQ(ev.policies_evaluated, 2);
}

TEST(Engine, RolloutIsDeterministicAndProportional) {
  EXPECT_TRUE(InRollout("p", "user:a", 100));
  EXPECT_FALSE(InRollout("p", "user:a", 0));
  for (int percent : {1, 10, 25, 50, 90}) {
    int in = 0;
    constexpr int kN = 20000;
    for (int i = 0; i < kN; ++i) {
      std::string e = absl::StrCat("user:", i);
      bool a = InRollout("fake-account-throttle", e, percent);
      EXPECT_EQ(a, InRollout("fake-account-throttle", e, percent));
      // Monotone: raising the percentage never drops an entity.
      if (a) {
        EXPECT_TRUE(InRollout("fake-account-throttle", e, percent + 5));
      }
      in += a;
    }
    double share = static_cast<double>(in) / kN;
    EXPECT_NEAR(share, percent / 100.0, 0.015) << percent;
  }
  // Pinned values: membership must not change between releases.
  EXPECT_TRUE(InRollout("fake-account-throttle", "user:r1", 50));
  EXPECT_FALSE(InRollout("fake-account-throttle", "user:r2", 50));
  // Different policies sample different entities.
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string e = absl::StrCat("user:", i);
    differ += InRollout("a", e, 50) != InRollout("b", e, 50);
  }
  EXPECT_GT(differ, 300);

  auto set = Load(R"(policies:
  - {id: half, on: detection, when: "true", action: flag, rollout: 50}
)");
  policy::EmptyEnvironment env;
  int matched = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string e = absl::StrCat("user:", i);
    Evaluation ev = Evaluate(*set, Det("x", e, 0.5), env, kNow);
    EXPECT_EQ(ev.proposals.size(), InRollout("half", e, 50) ? 1u : 0u);
    matched += static_cast<int>(ev.proposals.size());
  }
  EXPECT_NEAR(matched, 1000, 100);
}

TEST(Engine, RelatedPropagation) {
  auto set = Load(R"(policies:
  - {id: typed, on: detection, when: 'detection.type == "farm"', action: shadow_ban,
     related: [device, ip]}
  - {id: all, on: detection, when: 'detection.type == "farm"', action: flag, related: true}
  - {id: none, on: detection, when: 'detection.type == "farm"', action: challenge}
)");
  Detection d = Det("farm", "user:f1", 0.9);
  d.related = {E("device:d1"), E("ip:10.0.0.1"), E("user:f2"), E("device:d1"), E("user:f1")};
  policy::EmptyEnvironment env;
  Evaluation ev = Evaluate(*set, d, env, kNow);
  EXPECT_THAT(Targets(ev), ElementsAre("typed->user:f1", "typed->device:d1", "typed->ip:10.0.0.1",
                                       "all->user:f1", "all->device:d1", "all->ip:10.0.0.1",
                                       "all->user:f2", "none->user:f1"));
  EXPECT_FALSE(ev.proposals[0].via_related);
  EXPECT_TRUE(ev.proposals[1].via_related);
  EXPECT_EQ(ev.proposals[1].reason,
            "policy typed (v7) matched detection d1 on user:f1; related device");
}

TEST(Engine, DelayIsDeterministicAndBounded) {
  const absl::Duration lo = absl::Minutes(10), hi = absl::Hours(6);
  std::set<int64_t> seen;
  for (int i = 0; i < 5000; ++i) {
    std::string id = absl::StrCat("d", i);
    absl::Duration d = DrawDelay("payment-fraud-block", "payment:x", id, lo, hi);
    EXPECT_GE(d, lo);
    EXPECT_LE(d, hi);
    EXPECT_EQ(d, DrawDelay("payment-fraud-block", "payment:x", id, lo, hi));
    seen.insert(absl::ToInt64Minutes(d));
  }
  EXPECT_GT(seen.size(), 300u);  // spread over the range, not a constant
  EXPECT_EQ(DrawDelay("p", "e", "s", absl::Hours(1), absl::Hours(1)), absl::Hours(1));
  EXPECT_EQ(DrawDelay("p", "e", "s", absl::ZeroDuration(), absl::Microseconds(1)),
            DrawDelay("p", "e", "s", absl::ZeroDuration(), absl::Microseconds(1)));

  auto set = Load(R"(policies:
  - {id: rnd, on: detection, when: "true", action: block, delay: {min: 10m, max: 6h},
     related: true}
  - {id: fixed, on: detection, when: "true", action: block, delay: 1h}
)");
  Detection d = Det("x", "payment:p1", 0.9, "det-42");
  d.related = {E("user:u1")};
  policy::EmptyEnvironment env;
  Evaluation ev = Evaluate(*set, d, env, kNow);
  ASSERT_THAT(ev.proposals, SizeIs(3));
  EXPECT_EQ(ev.proposals[0].delay, DrawDelay("rnd", "payment:p1", "det-42", lo, hi));
  EXPECT_EQ(ev.proposals[1].delay, DrawDelay("rnd", "user:u1", "det-42", lo, hi));
  EXPECT_EQ(ev.proposals[2].delay, absl::Hours(1));
  Evaluation again = Evaluate(*set, d, env, kNow);
  EXPECT_EQ(again.proposals[0].delay, ev.proposals[0].delay);
}

TEST(Engine, DetectionFieldsReachTheExpression) {
  auto set = Load(R"(policies:
  - {id: at, on: detection, when: 'detection.observed_at == "2026-03-01T12:00:00Z"', action: flag}
  - {id: at-us, on: detection, when: 'detection.observed_at.endsWith(".000005Z")', action: flag}
  - {id: rel, on: detection, when: '"device:d1" in detection.related', action: flag}
  - {id: ev, on: detection, when: 'detection.evidence.geo.country == "SE" && "vpn" in detection.evidence.tags', action: flag}
  - {id: num, on: detection, when: 'detection.evidence.n > 3 && detection.evidence.big > 1e18', action: flag}
  - {id: arr, on: detection, when: '2 in detection.evidence.hours && detection.evidence.mixed[0] == 1 && size(detection.evidence.mixed) == 2', action: flag}
  - {id: nohit, on: detection, when: '5 in detection.evidence.hours || "b" in detection.evidence.mixed', action: flag}
  - {id: bad, on: detection, when: 'detection.evidence.mixed > 1', action: flag}
  - {id: src, on: detection, when: 'detection.source == "bot-model-v3" && entity.type == "user" && entity.id == "u1"', action: flag}
)");
  ASSERT_NE(set, nullptr);
  Detection d = Det("x", "user:u1", 0.9);
  d.related = {E("device:d1")};
  d.evidence_json =
      R"({"geo": {"country": "SE"}, "tags": ["vpn", "dc"], "n": 4, "big": 18446744073709551615,
          "mixed": [1, "a"], "hours": [1, 2.0, 3]})";
  policy::EmptyEnvironment env;
  Evaluation ev = Evaluate(*set, d, env, kNow);
  EXPECT_THAT(Targets(ev), ElementsAre("at->user:u1", "rel->user:u1", "ev->user:u1", "num->user:u1",
                                       "arr->user:u1", "src->user:u1"));
  EXPECT_EQ(ev.eval_errors, 1);  // `bad`: an array is not ordered against a number

  d.observed_at = kNow + absl::Microseconds(5);
  ev = Evaluate(*set, d, env, kNow);
  EXPECT_EQ(ev.proposals[0].policy, "at-us");

  d.evidence_json = "not json";  // invalid evidence reads as an empty map
  ev = Evaluate(*set, d, env, kNow);
  EXPECT_THAT(Targets(ev), ElementsAre("at-us->user:u1", "rel->user:u1", "src->user:u1"));
}

TEST(Engine, EnvironmentIsConsulted) {
  class Env final : public policy::Environment {
   public:
    int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
    int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
    bool InList(std::string_view list, std::string_view e) override {
      return list == "vip" && e == "user:vip";
    }
    bool Active(std::string_view, std::string_view) override { return false; }
    int64_t Prior(std::string_view, std::string_view, absl::Duration) override { return 0; }
  };
  auto set = Load(R"(lists: [{name: vip, protected: true}]
policies:
  - {id: p, on: detection, when: '!in_list("vip", entity)', action: flag}
)");
  Env env;
  EXPECT_THAT(Evaluate(*set, Det("x", "user:vip", 0.9), env, kNow).proposals, IsEmpty());
  EXPECT_THAT(Evaluate(*set, Det("x", "user:other", 0.9), env, kNow).proposals, SizeIs(1));
}

TEST(Engine, EventPoliciesAndTargets) {
  auto set = Load(R"(counters:
  - {name: accounts_per_ip, on: login, key: attrs.ip, distinct: entity, windows: [1h]}
policies:
  - {id: stuffing, on: login, when: 'event.attrs.ms > 5', action: challenge, target: attrs.ip}
  - {id: self, on: login, when: 'event.type == "login" && event.at == "2026-03-01T12:00:00Z"', action: flag}
  - {id: rnd, on: login, when: 'true', action: block, delay: {min: 1m, max: 1h}, mode: shadow}
  - {id: other, on: play, when: 'true', action: flag}
)");
  ASSERT_NE(set, nullptr);
  Event e;
  e.type = "login";
  e.entity = E("user:u1");
  e.at = kNow;
  e.attrs_json = R"({"ip": "ip:203.0.113.7", "ms": 10})";
  policy::EmptyEnvironment env;
  Evaluation ev = EvaluateEvent(*set, e, env, kNow);
  EXPECT_THAT(Targets(ev),
              ElementsAre("stuffing->ip:203.0.113.7", "self->user:u1", "rnd->user:u1"));
  EXPECT_TRUE(ev.proposals[2].shadow);
  EXPECT_GE(ev.proposals[2].delay, absl::Minutes(1));
  EXPECT_EQ(ev.proposals[2].delay, EvaluateEvent(*set, e, env, kNow).proposals[2].delay);
  EXPECT_EQ(ev.target_errors, 0);

  e.attrs_json = R"({"ip": "not an entity", "ms": 10})";
  ev = EvaluateEvent(*set, e, env, kNow);
  EXPECT_THAT(Targets(ev), ElementsAre("self->user:u1", "rnd->user:u1"));
  EXPECT_EQ(ev.target_errors, 1);
  e.attrs_json = R"({"ms": 10})";
  EXPECT_EQ(EvaluateEvent(*set, e, env, kNow).target_errors, 1);
  // A condition that does not match needs no target: a bad one is not an error then.
  e.attrs_json = R"({"ip": "not an entity", "ms": 1})";
  EXPECT_EQ(EvaluateEvent(*set, e, env, kNow).target_errors, 0);

  e.type = "signup";
  EXPECT_THAT(EvaluateEvent(*set, e, env, kNow).proposals, IsEmpty());
  // Detections never reach event policies and vice versa.
  EXPECT_THAT(Evaluate(*set, Det("login", "user:u1", 1), env, kNow).proposals, IsEmpty());
}

// The detection.type index must not change any result: compare with the naive loop over
// the example set, for every detection type it names and some it does not.
TEST(Engine, TypeIndexGivesTheSameResultsAsTheNaiveLoop) {
  std::ifstream in(std::string(QUELL_EXAMPLES_DIR) + "/music.yaml");
  std::stringstream text;
  text << in.rdbuf();
  auto set = Load(text.str());
  ASSERT_NE(set, nullptr);
  class Env final : public policy::Environment {
   public:
    int64_t Count(std::string_view, std::string_view k, absl::Duration) override {
      return static_cast<int64_t>(k.size()) * 30;
    }
    int64_t Distinct(std::string_view, std::string_view k, absl::Duration) override {
      return static_cast<int64_t>(k.size());
    }
    bool InList(std::string_view l, std::string_view e) override {
      return (l.size() + e.size()) % 3 == 0;
    }
    bool Active(std::string_view e, std::string_view a) override {
      return (e.size() + a.size()) % 2 == 0;
    }
    int64_t Prior(std::string_view, std::string_view, absl::Duration) override { return 1; }
  } env;
  const char* types[] = {"artificial_streaming",
                         "stream_farm",
                         "account_takeover",
                         "payment_fraud",
                         "trial_abuse",
                         "chart_manipulation",
                         "playlist_stuffing",
                         "fake_account",
                         "scraping",
                         ""};
  const char* sources[] = {"bot-model-v3", "bot-model-v4", "manual", "bot-model-v2"};
  const char* entities[] = {"user:u1", "track:t1", "playlist:p1", "payment:c1", "user:staff"};
  int compared = 0, with_proposals = 0;
  int64_t indexed_evals = 0, naive_evals = 0;
  for (const char* type : types) {
    for (const char* source : sources) {
      for (const char* entity : entities) {
        for (double score : {0.5, 0.7, 0.8, 0.86, 0.9, 0.96, 0.985, 0.995}) {
          Detection d = Det(type, entity, score, absl::StrCat("d", compared));
          d.source = source;
          d.related = {E("device:d1"), E("ip:203.0.113.5"), E("user:x"), E("payment:p9")};
          d.evidence_json = R"({"new_device": true, "asn": 16509})";
          Evaluation a = Evaluate(*set, d, env, kNow);
          Evaluation b = EvaluateWithoutIndexForTest(*set, d, env, kNow);
          ASSERT_EQ(a.proposals.size(), b.proposals.size());
          for (size_t i = 0; i < a.proposals.size(); ++i) {
            EXPECT_EQ(a.proposals[i].policy, b.proposals[i].policy);
            EXPECT_EQ(a.proposals[i].entity, b.proposals[i].entity);
            EXPECT_EQ(a.proposals[i].delay, b.proposals[i].delay);
            EXPECT_EQ(a.proposals[i].reason, b.proposals[i].reason);
          }
          EXPECT_LE(a.policies_evaluated, b.policies_evaluated);
          indexed_evals += a.policies_evaluated;
          naive_evals += b.policies_evaluated;
          with_proposals += !a.proposals.empty();
          ++compared;
        }
      }
    }
  }
  EXPECT_GT(with_proposals, compared / 4);    // the comparison is not vacuous
  EXPECT_LT(indexed_evals * 2, naive_evals);  // and the index does skip work
}

TEST(JsonMap, ShapesAndLimits) {
  internal::JsonMapArena arena;
  policy::MapView m;
  ASSERT_TRUE(arena.Parse(R"({"a": 1, "b": "x", "c": {"d": [ "p", "q" ]}, "e": null,
                             "f": -2.5, "g": [], "h": [{"x": 1}], "i": false,
                             "j": [1, 2.5, true, null, "s", [7]]})",
                          &m));
  ASSERT_EQ(m.size, 9u);
  EXPECT_EQ(m.Find("a")->int_value(), 1);
  EXPECT_EQ(m.Find("b")->string_value(), "x");
  const policy::MapView* c = m.Find("c")->map_value();
  ASSERT_EQ(c->size, 1u);
  EXPECT_EQ(c->Find("d")->list_size(), 2u);
  EXPECT_EQ(c->Find("d")->list_data()[1], "q");
  EXPECT_EQ(m.Find("e")->kind(), policy::ValueKind::kNull);
  EXPECT_EQ(m.Find("f")->double_value(), -2.5);
  EXPECT_EQ(m.Find("g")->list_size(), 0u);
  // An array with anything but strings keeps its items as they are.
  ASSERT_EQ(m.Find("h")->kind(), policy::ValueKind::kArray);
  ASSERT_EQ(m.Find("h")->array_size(), 1u);
  EXPECT_EQ(m.Find("h")->array_data()[0].map_value()->Find("x")->int_value(), 1);
  EXPECT_FALSE(m.Find("i")->bool_value());
  EXPECT_EQ(m.Find("j")->DebugString(), R"([1, 2.5, true, null, "s", [7]])");
  EXPECT_EQ(m.Find("zz"), nullptr);

  EXPECT_FALSE(arena.Parse("[1]", &m));
  EXPECT_EQ(m.size, 0u);
  EXPECT_FALSE(arena.Parse("\"s\"", &m));
  EXPECT_FALSE(arena.Parse("{\"a\": 1", &m));
  EXPECT_FALSE(arena.Parse("", &m));
  // As deep as any input path takes (core::kMaxJsonDepth), evidence is read whole: a key
  // beside a deep object stays visible (at depth 32 the whole map used to vanish, and a
  // detector could hide `asn` from a policy that way). Deeper cannot arrive.
  auto nested = [](int levels) {
    std::string s = "{\"asn\": 14061, \"trace\": ";
    for (int i = 1; i < levels; ++i) s += "{\"k\":";
    s += "1";
    for (int i = 0; i < levels; ++i) s += "}";
    return s;
  };
  ASSERT_TRUE(arena.Parse(nested(core::kMaxJsonDepth), &m));
  EXPECT_EQ(m.Find("asn")->int_value(), 14061);
  EXPECT_FALSE(arena.Parse(nested(internal::JsonMapArena::kMaxDepth + 1), &m));
  // Reuse after failure.
  ASSERT_TRUE(arena.Parse(R"({"k": "v"})", &m));
  EXPECT_EQ(m.Find("k")->string_value(), "v");
  // Escapes are decoded.
  ASSERT_TRUE(arena.Parse(R"({"k\u0041": "a\"b"})", &m));
  EXPECT_EQ(m.Find("kA")->string_value(), "a\"b");
}

}  // namespace
}  // namespace quell::engine
