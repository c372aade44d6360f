#include "engine/policy_cases.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

std::string ReadExample(const std::string& name) {
  std::ifstream in(std::string(QUELL_EXAMPLES_DIR) + "/" + name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::shared_ptr<const policy::PolicySet> MusicSet() {
  auto set = policy::LoadPolicySet(ReadExample("music.yaml"), 1);
  EXPECT_TRUE(set.ok()) << set.status().message();
  return set.ok() ? *set : nullptr;
}

TEST(ExamplePolicies, MusicSetLoads) {
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(ReadExample("music.yaml"), 1);
  for (const auto& e : r.errors) ADD_FAILURE() << "music.yaml:" << e.ToString();
  ASSERT_NE(r.set, nullptr);
  EXPECT_GE(r.set->policies().size(), 20u);
}

TEST(ExamplePolicies, AllCasesPass) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  auto run = RunCaseDirectory(*set, std::string(QUELL_EXAMPLES_DIR) + "/cases");
  ASSERT_TRUE(run.ok()) << run.status().message();
  EXPECT_GE(run->results.size(), 10u);
  for (const CaseResult& r : run->results) EXPECT_TRUE(r.passed) << r.Report();
  EXPECT_EQ(run->failed, 0);
}

TEST(PolicyCases, AFailingCaseShowsTheDiff) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  CaseResult r = RunCaseText(*set, R"(name: wrong
detections:
  - {id: d1, source: bot-model-v3, type: artificial_streaming, entity: "user:u1", score: 0.95}
expect:
  - {entity: "user:u1", action: suspend, state: active, policy: bot-model-high}
)",
                             "wrong.yaml");
  EXPECT_FALSE(r.passed);
  ASSERT_THAT(r.missing, SizeIs(1));
  ASSERT_THAT(r.unexpected, SizeIs(1));
  EXPECT_EQ(r.unexpected[0].action, "exclude_royalties");
  EXPECT_EQ(r.Report(),
            "FAIL wrong (wrong.yaml)\n"
            "  - missing:    user:u1 suspend active (policy bot-model-high)\n"
            "  + unexpected: user:u1 exclude_royalties active (policy bot-model-high)");
}

// A case that names what the set does not declare tests nothing: refused, each name said.
TEST(PolicyCases, UndeclaredNamesAreErrors) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  CaseResult r = RunCaseText(*set, R"(name: typos
lists: {verified_artsts: ["artist:1"]}
counters: [{counter: plays_per_hour, key: "user:u1", value: 3}]
detections:
  - {id: d1, source: bot-model-v3, type: artificial_streamin, entity: "user:u1", score: 0.95}
expect: []
)");
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(r.error,
              HasSubstr("detections[0].type: unknown detection type \"artificial_streamin\""));
  EXPECT_THAT(r.error, HasSubstr("lists: verified_artsts is not declared by the set"));
  EXPECT_THAT(r.error, HasSubstr("counters[0].counter: plays_per_hour is not declared by the set"));
  // The server's states: a protected entity's decision waits for review.
  CaseResult old = RunCaseText(*set, R"(name: old state
detections: []
expect:
  - {entity: "user:u1", action: flag, state: suppressed, policy: manual-report}
)");
  EXPECT_THAT(old.error, HasSubstr("held for review, as the server does: pending_approval"));
}

// prior() counts mitigations as the server does: a second hit of the same action on the
// same entity extends the first mitigation, it does not make a second.
TEST(PolicyCases, PriorCountsMitigationsNotDecisions) {
  auto set = policy::LoadPolicySet(R"(
detection_types: [manual]
actions:
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
  - {name: block, verdict: deny, severity: high, ttl: 7d}
policies:
  - {id: fl, on: detection, when: 'detection.type == "manual"', action: flag}
  - {id: pr, on: detection, when: 'detection.type == "manual" && prior(entity, "flag", "30d") >= 2', action: block}
)",
                                   1);
  ASSERT_TRUE(set.ok()) << set.status();
  CaseResult r = RunCaseText(**set, R"(name: three flags
detections:
  - {id: d1, source: s, type: manual, entity: "user:p", score: 1}
  - {id: d2, source: s, type: manual, entity: "user:p", score: 1}
  - {id: d3, source: s, type: manual, entity: "user:p", score: 1}
expect:
  - {entity: "user:p", action: flag, state: active, policy: fl}
  - {entity: "user:p", action: flag, state: active, policy: fl}
  - {entity: "user:p", action: flag, state: active, policy: fl}
)");
  EXPECT_TRUE(r.passed) << r.Report();
}

// Protection as the server's safeguard applies it: an ip inside a protected cidr is held
// (the runner matched list members by exact text, and said active).
TEST(PolicyCases, AnIpInsideAProtectedNetworkIsHeld) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  CaseResult r = RunCaseText(*set, R"(name: office network
lists: {employees: ["cidr:10.0.0.0/8", "ip:2001:db8::1"]}
detections:
  - {id: d1, source: manual, type: harassment, entity: "ip:10.5.5.5", score: 0.5}
  - {id: d2, source: manual, type: harassment, entity: "ip:2001:DB8:0::1", score: 0.5}
  - {id: d3, source: manual, type: harassment, entity: "ip:11.0.0.1", score: 0.5}
expect:
  - {entity: "ip:10.5.5.5", action: flag, state: pending_approval, policy: manual-report}
  - {entity: "ip:2001:db8::1", action: flag, state: pending_approval, policy: manual-report}
  - {entity: "ip:11.0.0.1", action: flag, state: active, policy: manual-report}
)");
  EXPECT_TRUE(r.passed) << r.Report() << r.error;
}

// SPEC: a cidr: id matches every ip: inside it. The case runner's in_list() matched a list's
// members by exact text (and the entity as written): the case said nothing where the server
// flags the address.
TEST(PolicyCases, InListMatchesAddressesInsideAListedNetwork) {
  auto set = policy::LoadPolicySet(R"(
detection_types: [manual]
actions:
  - {name: flag, verdict: allow, severity: low, ttl: 7d}
lists:
  - {name: vpn}
policies:
  - {id: via-vpn, on: detection, when: 'in_list("vpn", entity)', action: flag}
  - {id: via-vpn-ip, on: detection, when: 'in_list("vpn", detection.evidence.ip)', action: flag}
)",
                                   1);
  ASSERT_TRUE(set.ok()) << set.status();
  CaseResult r = RunCaseText(**set, R"(name: a list of ranges
lists: {vpn: ["cidr:10.0.0.0/8", "cidr:2001:db8::/32"]}
detections:
  - {id: d1, source: s, type: manual, entity: "ip:10.5.5.5", score: 0.5}
  - {id: d2, source: s, type: manual, entity: "ip:11.0.0.1", score: 0.5}
  - {id: d3, source: s, type: manual, entity: "cidr:10.9.0.0/16", score: 0.5}
  - {id: d4, source: s, type: manual, entity: "user:u", score: 0.5,
     evidence: {ip: "ip:2001:DB8::7"}}
expect:
  - {entity: "ip:10.5.5.5", action: flag, state: active, policy: via-vpn}
  - {entity: "cidr:10.9.0.0/16", action: flag, state: active, policy: via-vpn}
  - {entity: "user:u", action: flag, state: active, policy: via-vpn-ip}
)");
  EXPECT_TRUE(r.passed) << r.Report() << r.error;
}

// An event's attributes reach the rules in normal form, as POST /v1/events gives them:
// the case failed where the live event decided block.
TEST(PolicyCases, EventAttrsAreNormalisedAsTheEventsRouteDoes) {
  auto set = policy::LoadPolicySet(R"(
actions:
  - {name: block, verdict: deny, severity: high, ttl: 7d}
policies:
  - {id: bad-ip, on: login, when: 'event.attrs.ip == "ip:2001:db8::1"', action: block}
)",
                                   1);
  ASSERT_TRUE(set.ok()) << set.status();
  CaseResult r = RunCaseText(**set, R"(name: one address, another spelling
events:
  - {type: login, entity: "user:e", attrs: {ip: "ip:2001:DB8::1"}}
expect:
  - {entity: "user:e", action: block, state: active, policy: bad-ip}
)");
  EXPECT_TRUE(r.passed) << r.Report() << r.error;
}

TEST(PolicyCases, ExpectationsAreAMultiset) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  // Two identical decisions are expected; listing one is a failure.
  CaseResult r = RunCaseText(*set, R"(name: twice
detections:
  - {id: d1, source: bot-model-v3, type: artificial_streaming, entity: "user:u1", score: 0.95}
  - {id: d2, source: bot-model-v3, type: artificial_streaming, entity: "user:u1", score: 0.95}
expect:
  - {entity: "user:u1", action: exclude_royalties, state: active, policy: bot-model-high}
)");
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(r.unexpected, SizeIs(1));
  EXPECT_THAT(r.missing, SizeIs(0));
}

TEST(PolicyCases, ParseErrorsHavePositions) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  CaseResult r = RunCaseText(*set, R"(name: bad
detections:
  - {id: d1, type: artificial_streaming, entity: "nocolon", score: 2, colour: red}
expect: []
)");
  EXPECT_FALSE(r.passed);
  EXPECT_THAT(r.error, HasSubstr("3:71: unknown key \"colour\""));
  auto c =
      ParseCase("name: x\ndetections:\n  - {type: t, entity: \"user:a\", score: 2}\nexpect: []\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("3:"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("score must be a number from 0 to 1"));
  c = ParseCase("name: x\ndetections: []\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("needs `expect:`"));
  c = ParseCase("name: [x\n");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("YAML syntax error"));
}

TEST(PolicyCases, EvidenceTypesSurviveTheYamlToJsonStep) {
  auto c = ParseCase(R"(name: x
detections:
  - {type: t, entity: "user:a", score: 0.5,
     evidence: {n: 3, f: 0.5, b: true, s: "3", plain: SE, list: [a, b], nested: {k: null}}}
expect: []
)");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(
      c->detections[0].evidence_json,
      R"({"n":3,"f":0.5,"b":true,"s":"3","plain":"SE","list":["a","b"],"nested":{"k":null}})");
  EXPECT_EQ(c->detections[0].id, "case-d1");
  EXPECT_EQ(c->detections[0].source, "test");
}

TEST(PolicyCases, DirectoryErrors) {
  auto set = MusicSet();
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(RunCaseDirectory(*set, "/nonexistent/dir").status().code(),
            absl::StatusCode::kNotFound);
  std::string empty = ::testing::TempDir() + "/policy-cases-empty";
  std::filesystem::create_directories(empty);
  EXPECT_EQ(RunCaseDirectory(*set, empty).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quell::engine
