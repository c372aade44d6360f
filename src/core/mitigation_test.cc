#include "core/mitigation.h"

#include "core/action.h"
#include "core/ids.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"

namespace quell::core {
namespace {

TEST(MitigationTest, JsonRoundTrip) {
  Mitigation m;
  m.id = NewId("m_", absl::Now());
  m.entity = *Entity::Parse("user:u\"1\\x");
  m.action = "suspend";
  m.state = MitigationState::kPendingApproval;
  m.created_at = *ParseRfc3339("2026-11-28T12:00:00.5Z");
  m.updated_at = m.created_at;
  m.starts_at = m.created_at;
  m.expires_at = m.created_at + absl::Hours(24);
  m.reason = "line\nbreak \x01 ctl";
  m.source = "bot-v3";
  m.policy = "bot-model-high";
  m.policy_version = 7;
  m.actor = "k_1";
  m.detections = {"d1", "d2"};
  m.seq = 42;
  auto back = MitigationFromJson(MitigationToJson(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
}

// Every ASCII byte, alone and between plain runs, at the start, middle and end: the
// escaped text parses back (RapidJSON) to exactly the input.
TEST(MitigationTest, JsonStringEscapesEveryByteThatNeedsIt) {
  for (int c = 0; c < 0x80; ++c) {
    const std::string ch(1, static_cast<char>(c));
    for (const std::string& s : {ch, "ab" + ch, ch + "cd", "ab" + ch + "cd" + ch + ch + "ef"}) {
      std::string json;
      AppendJsonString(s, &json);
      rapidjson::Document doc;
      doc.Parse(json.c_str(), json.size());
      ASSERT_FALSE(doc.HasParseError()) << "byte " << c << ": " << json;
      ASSERT_TRUE(doc.IsString());
      EXPECT_EQ(std::string(doc.GetString(), doc.GetStringLength()), s) << "byte " << c;
      if (c >= 0x20 && c != '"' && c != '\\') {
        EXPECT_EQ(json, "\"" + s + "\"");
      }
    }
  }
  std::string empty;
  AppendJsonString("", &empty);
  EXPECT_EQ(empty, "\"\"");
}

TEST(MitigationTest, RejectsMalformed) {
  EXPECT_FALSE(MitigationFromJson("").ok());
  EXPECT_FALSE(MitigationFromJson("[]").ok());
  EXPECT_FALSE(MitigationFromJson("{\"id\":1}").ok());
}

TEST(IdsTest, SortByTimeAndDiffer) {
  absl::Time t = absl::Now();
  std::string a = NewId("m_", t);
  std::string b = NewId("m_", t + absl::Milliseconds(1));
  EXPECT_EQ(a.size(), 28u);
  EXPECT_LT(a, b);
  EXPECT_NE(NewId("m_", t), NewId("m_", t));
  EXPECT_EQ(RandomHex(16).size(), 32u);
}

TEST(ActionCatalogTest, DefaultAndValidation) {
  auto c = ActionCatalog::Default();
  ASSERT_NE(c->Find("suspend"), nullptr);
  EXPECT_EQ(c->Find("suspend")->verdict, Verdict::kDeny);
  EXPECT_EQ(c->size(), 9u);
  EXPECT_TRUE(c->Find("exclude_royalties")->AppliesTo("payout"));
  EXPECT_FALSE(c->Find("exclude_royalties")->AppliesTo("login"));
  EXPECT_TRUE(c->Find("exclude_royalties")->AppliesTo(""));
  EXPECT_FALSE(ActionCatalog::Create({{"Bad", Verdict::kDeny}}).ok());
  EXPECT_FALSE(ActionCatalog::Create({{"a", Verdict::kDeny}, {"a", Verdict::kAllow}}).ok());
  EXPECT_GT(Verdict::kDeny, Verdict::kChallenge);
}

}  // namespace
}  // namespace quell::core
