// The payload rules both stores share: what a list or policy-set change may hold, and the
// stored form of an API key's sources.
#include "ledger/internal/payloads.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::ledger::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ListChangePayload, ParsesAndNormalisesEntities) {
  auto lc = ParseListChange(
      R"({"list":"vip","add":["ip:2001:DB8:0:0:0:0:0:1"],"remove":["device:d1"],"protected":true,)"
      R"("kind":"ip"})");
  ASSERT_TRUE(lc.ok()) << lc.status();
  EXPECT_EQ(lc->list, "vip");
  EXPECT_THAT(lc->add, ElementsAre("ip:2001:db8::1"));  // as Entity::Parse writes it
  EXPECT_THAT(lc->remove, ElementsAre("device:d1"));
  EXPECT_EQ(lc->is_protected, true);
  EXPECT_EQ(lc->kind, "ip");

  auto minimal = ParseListChange(R"({"list":"l"})");
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_FALSE(minimal->is_protected.has_value());
  EXPECT_FALSE(minimal->kind.has_value());
}

TEST(ListChangePayload, RefusesBadShapesNamingTheField) {
  const struct {
    const char* payload;
    const char* says;
  } kBad[] = {
      {"[]", "must be a JSON object"},
      {"{", "must be a JSON object"},
      {R"({"add":["user:a"]})", "needs \"list\""},
      {R"({"list":""})", "non-empty string"},
      {R"({"list":"l","add":"user:a"})", "add must be an array"},
      {R"({"list":"l","remove":[7]})", "remove[0] must be a string"},
      {R"({"list":"l","add":["no-colon"]})", "add[0]: "},
      {R"({"list":"l","protected":"yes"})", "protected must be a boolean"},
      {R"({"list":"l","kind":1})", "kind must be a string"},
      {R"({"list":"l","colour":"red"})", "unknown field \"colour\""},
  };
  for (const auto& b : kBad) {
    auto lc = ParseListChange(b.payload);
    ASSERT_FALSE(lc.ok()) << b.payload;
    EXPECT_EQ(lc.status().code(), absl::StatusCode::kInvalidArgument) << b.payload;
    EXPECT_THAT(lc.status().message(), HasSubstr(b.says)) << b.payload;
  }
}

TEST(PolicySetPayload, NeedsExactlyVersionAndYaml) {
  auto p = ParsePolicySetChange(R"({"version":3,"yaml":"policies: []\n"})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->version, 3);
  EXPECT_EQ(p->yaml, "policies: []\n");
  for (const char* bad : {R"({"version":3})", R"({"yaml":"x"})", R"({"version":"3","yaml":"x"})",
                          R"({"version":3,"yaml":"x","by":"me"})", "null"}) {
    auto r = ParsePolicySetChange(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(KeySources, RoundTripAndRefuseWhatIsNotAnArrayOfStrings) {
  const std::vector<std::string> sources = {"bot-model-v3", "odd \"quoted\" source", ""};
  auto back = SourcesFromJson(SourcesToJson(sources));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, sources);
  EXPECT_EQ(SourcesToJson({}), "[]");
  for (const char* bad : {"", "{}", "[1]", "[\"a\""}) {
    EXPECT_EQ(SourcesFromJson(bad).status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

}  // namespace
}  // namespace quell::ledger::internal
