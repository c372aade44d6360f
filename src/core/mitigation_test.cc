#include "core/mitigation.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/action.h"
#include "core/aggregate.h"
#include "core/ids.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::core {
namespace {

// A record with every field set, for the reader's tests.
Mitigation Sample() {
  Mitigation m;
  m.id = "m_01";
  m.entity = *Entity::Parse("user:u1");
  m.action = "suspend";
  m.state = MitigationState::kActive;
  m.created_at = *ParseRfc3339("2026-11-28T12:00:00.25Z");
  m.updated_at = m.created_at + absl::Seconds(1);
  m.starts_at = m.created_at + absl::Seconds(2);
  m.expires_at = m.created_at + absl::Hours(24);
  m.reason = "r";
  m.source = "bot-v3";
  m.policy = "p";
  m.policy_version = 3;
  m.actor = "k_1";
  m.batch = "b";
  m.detections = {"d1", "d2"};
  m.state_reason = "s";
  m.seq = 9;
  return m;
}

// FieldCount, which the codecs of Mitigation state their field count with, counts fields
// of every kind they hold, including one that fits in another's padding.
struct Padded {
  int32_t a;
  bool in_padding;
  int64_t b;
};
struct Mixed {
  std::string s;
  Entity e;
  MitigationState state;
  std::vector<std::string> v;
  absl::Time t;
};
static_assert(FieldCount<Padded>() == 3 && sizeof(Padded) == 16);
static_assert(FieldCount<Mixed>() == 5);

TEST(MitigationTest, JsonRoundTrip) {
  Mitigation m = Sample();
  m.id = NewId("m_", absl::Now());
  m.entity = *Entity::Parse("user:u\"1\\x");
  m.state = MitigationState::kPendingApproval;
  m.created_at = *ParseRfc3339("2026-11-28T12:00:00.5Z");
  m.reason = "line\nbreak \x01 ctl";
  m.batch.clear();
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
  for (const char* bad : {"", "[]", "{\"id\":1}", "1", "\"x\"", "null", "{", "{} {}"}) {
    EXPECT_FALSE(MitigationFromJson(bad).ok()) << bad;
  }
}

std::string Serialize(const rapidjson::Document& doc) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  doc.Accept(w);
  return buf.GetString();
}

// The reader takes the fields in any order, skips unknown ones of any shape and keeps a
// repeated field's first value.
TEST(MitigationTest, FieldsInAnyOrderUnknownOnesSkipped) {
  const Mitigation m = Sample();
  rapidjson::Document doc;
  doc.Parse(MitigationToJson(m).c_str());
  ASSERT_TRUE(doc.IsObject());
  rapidjson::Document reversed(rapidjson::kObjectType);
  auto& a = reversed.GetAllocator();
  reversed.AddMember("extra", rapidjson::Value(rapidjson::kObjectType), a);
  reversed["extra"].AddMember("id", "not-this", a);
  reversed["extra"].AddMember("list", rapidjson::Value(rapidjson::kArrayType), a);
  std::vector<const rapidjson::Value::Member*> members;
  for (const auto& mem : doc.GetObject()) members.push_back(&mem);
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    reversed.AddMember(rapidjson::Value((*it)->name, a), rapidjson::Value((*it)->value, a), a);
  }
  reversed.AddMember("id", "second", a);  // a repeated field: the first one counts
  reversed.AddMember("more", 1.5, a);
  auto back = MitigationFromJson(Serialize(reversed));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
}

// detection_policies is written only once another policy's hit is recorded, then kept in
// step with detections; it reads back, and a malformed one is an error.
TEST(MitigationTest, DetectionPoliciesAppearWhenAnotherPolicyHits) {
  Mitigation m = Sample();
  AddDetections(m, {"d3"}, "p");
  EXPECT_TRUE(m.detection_policies.empty());
  EXPECT_EQ(MitigationToJson(m).find("detection_policies"), std::string::npos);
  AddDetections(m, {"d4", "d5"}, "q");
  EXPECT_EQ(m.detection_policies, (std::vector<std::string>{"p", "p", "p", "q", "q"}));
  AddDetections(m, {"d6"}, "p");
  m.approvals = {"k_a", "k_b"};  // the other optional array
  EXPECT_EQ(DetectionPolicy(m, 4), "q");
  EXPECT_EQ(DetectionPolicy(m, 5), "p");
  auto back = MitigationFromJson(MitigationToJson(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  // A manual mitigation (no policy, no detection yet) that a policy hits records the hit
  // as that policy's: it was attributed to no policy (an empty list read as "all are the
  // mitigation's own").
  Mitigation manual = Sample();
  manual.policy.clear();
  manual.detections.clear();
  AddDetections(manual, {"d1"}, "p");
  EXPECT_EQ(manual.detection_policies, std::vector<std::string>{"p"});
  EXPECT_EQ(DetectionPolicy(manual, 0), "p");
  for (const char* bad : {"[\"p\"]", "\"p\"", "[1,2,3,4,5,6]", "{}"}) {
    std::string json = MitigationToJson(m);
    const size_t at = json.find("\"detection_policies\":") + 21;
    json.replace(at, json.find(']', at) + 1 - at, bad);
    EXPECT_FALSE(MitigationFromJson(json).ok()) << json;
  }
}

// An import batch's hit that extends a mitigation created otherwise is kept apart, with
// what every other hit asked for, so that the batch's part can be taken back alone.
TEST(MitigationTest, ABatchsExtensionIsKeptApartAndCanBeTakenBack) {
  Mitigation m = Sample();  // batch "b", source "bot-v3", policy "p", expires at T+24h
  const absl::Time t = m.expires_at;
  const absl::Duration h = absl::Hours(1);
  // Hits without a batch, or of the creation's own batch, source and policy: no list.
  EXPECT_TRUE(ExtendExpiry(m, {"", "rule:r", "p", t + 1 * h}));
  EXPECT_TRUE(ExtendExpiry(m, {"b", "bot-v3", "p", t + 2 * h}));
  EXPECT_TRUE(m.batch_expiries.empty());
  EXPECT_FALSE(HitByBatch(m, "b", "", ""));
  // Another batch's hit starts it, even one that extends nothing (its hits can be taken
  // back, and its expiry holds once the hits above it are).
  EXPECT_FALSE(ExtendExpiry(m, {"b2", "bot-v3", "p", t}));
  EXPECT_EQ(m.batch_expiries,
            (std::vector<BatchExpiry>{{"", "", "", t + 2 * h}, {"b2", "bot-v3", "p", t}}));
  // b2 again, later; the same batch id from another source (another import); the
  // creation's batch under another policy (that policy's own decisions).
  EXPECT_TRUE(ExtendExpiry(m, {"b2", "bot-v3", "p", t + 10 * h}));
  EXPECT_TRUE(ExtendExpiry(m, {"b", "other-model", "q", t + 12 * h}));
  EXPECT_FALSE(ExtendExpiry(m, {"b", "bot-v3", "q", t + 3 * h}));
  // A later hit without a batch that extends nothing is counted under "".
  EXPECT_FALSE(ExtendExpiry(m, {"", "rule:r", "p", t + 5 * h}));
  EXPECT_EQ(m.expires_at, t + 12 * h);
  EXPECT_EQ(m.batch_expiries, (std::vector<BatchExpiry>{{"", "", "", t + 5 * h},
                                                        {"b2", "bot-v3", "p", t + 10 * h},
                                                        {"b", "other-model", "q", t + 12 * h},
                                                        {"b", "bot-v3", "q", t + 3 * h}}));
  // The list reads back.
  auto back = MitigationFromJson(MitigationToJson(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  // Taking back one batch: only when it matches (source and policy, when given).
  EXPECT_FALSE(HitByBatch(m, "b2", "other-model", ""));
  EXPECT_FALSE(ExpiryWithoutBatch(m, "b2", "bot-v3", "q").has_value());
  EXPECT_FALSE(ExpiryWithoutBatch(m, "", "", "").has_value());  // "" is not a batch
  EXPECT_EQ(ExpiryWithoutBatch(m, "b", "other-model", ""), t + 10 * h);
  EXPECT_EQ(m.batch_expiries.size(), 3u);
  std::vector<BatchExpiry> removed;
  EXPECT_EQ(ExpiryWithoutBatch(m, "b2", "", "p", &removed), t + 5 * h);
  EXPECT_EQ(removed, (std::vector<BatchExpiry>{{"b2", "bot-v3", "p", t + 10 * h}}));
  // Once no other batch's part is left, neither is the list.
  EXPECT_EQ(ExpiryWithoutBatch(m, "b", "", "q"), t + 5 * h);
  EXPECT_TRUE(m.batch_expiries.empty());
}

TEST(MitigationTest, MalformedBatchExpiriesAreErrors) {
  Mitigation m = Sample();
  ExtendExpiry(m, {"b2", "bot-v3", "p", m.expires_at + absl::Hours(1)});
  const std::string json = MitigationToJson(m);
  const std::string from =
      json.substr(json.find("\"batch_expiries\":"),
                  json.find("],\"state_reason\"") + 1 - json.find("\"batch_expiries\":"));
  for (const char* bad : {"[\"b2\"]", "{}", "\"x\"", "[[]]", "[{\"batch\":\"b2\"}]",
                          "[{\"batch\":1,\"source\":\"s\",\"policy\":\"p\",\"expires_at\":"
                          "\"2026-11-28T12:00:00Z\"}]",
                          "[{\"batch\":\"b\",\"source\":\"s\",\"policy\":\"p\",\"expires_at\":"
                          "\"yesterday\"}]",
                          "[{\"batch\":\"b\",\"source\":\"s\",\"policy\":{},\"expires_at\":"
                          "\"2026-11-28T12:00:00Z\"}]"}) {
    std::string j = json;
    j.replace(j.find(from), from.size(), std::string("\"batch_expiries\":") + bad);
    auto r = MitigationFromJson(j);
    EXPECT_FALSE(r.ok()) << j;
  }
  // An unknown field of an entry, of any shape, is skipped, as at the top level (a later
  // version may add one).
  std::string extra = json;
  extra.insert(extra.find("\"batch\":\"\""),
               "\"note\":\"n\",\"n\":1,\"x\":null,\"o\":{\"batch\":[1,{\"a\":\"b\"}]},\"l\":[[]],");
  auto back = MitigationFromJson(extra);
  ASSERT_TRUE(back.ok()) << back.status() << extra;
  EXPECT_EQ(*back, m);
}

// An entity hit on every event keeps a record of bounded size: past kMaxListedDetections
// ids, hits are counted; a policy's first hit is still listed (its entry names it).
TEST(MitigationTest, HitsPastTheBoundAreCountedNotListed) {
  Mitigation m = Sample();  // d1 (creation), d2: p's
  for (int i = 3; i <= 150; ++i) AddDetections(m, {absl::StrCat("d", i)}, "p");
  ASSERT_EQ(m.detections.size(), kMaxListedDetections);
  EXPECT_EQ(m.detections.back(), absl::StrCat("d", kMaxListedDetections));
  EXPECT_EQ(m.unlisted_detections, 150 - static_cast<int64_t>(kMaxListedDetections));
  EXPECT_TRUE(m.detection_policies.empty());
  const size_t listed_size = MitigationToJson(m).size();
  AddDetections(m, {"q1", "q2"}, "q");  // q's first is listed, its second counted
  ASSERT_EQ(m.detections.size(), kMaxListedDetections + 1);
  EXPECT_EQ(m.detections.back(), "q1");
  EXPECT_EQ(DetectionPolicy(m, kMaxListedDetections), "q");
  EXPECT_EQ(DetectionPolicy(m, 0), "p");
  EXPECT_EQ(m.unlisted_detections, 150 - static_cast<int64_t>(kMaxListedDetections) + 1);
  for (int i = 0; i < 1000; ++i) AddDetections(m, {absl::StrCat("x", i)}, "p");
  EXPECT_EQ(m.detections.size(), kMaxListedDetections + 1);
  EXPECT_LT(MitigationToJson(m).size(), listed_size + 1000);  // not 1000 ids more
  auto back = MitigationFromJson(MitigationToJson(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(back->unlisted_detections, 1051);
  // Absent (every record before it, and one under the bound) reads as 0; a negative or
  // non-integer count is an error.
  EXPECT_EQ(MitigationToJson(Sample()).find("unlisted_detections"), std::string::npos);
  const std::string json = MitigationToJson(m);
  for (const char* bad : {"-1", "\"3\"", "2.5", "[1]", "{}", "null"}) {
    std::string j = json;
    j.replace(j.find("1051"), 4, bad);
    auto r = MitigationFromJson(j);
    ASSERT_FALSE(r.ok()) << j;
    EXPECT_NE(r.status().message().find("unlisted_detections"), std::string::npos) << r.status();
  }
}

// Each field missing, or of the wrong type, is an error naming it.
TEST(MitigationTest, EveryFieldIsRequiredWithItsType) {
  rapidjson::Document doc;
  doc.Parse(MitigationToJson(Sample()).c_str());
  std::vector<std::string> names;
  for (const auto& mem : doc.GetObject()) names.emplace_back(mem.name.GetString());
  ASSERT_EQ(names.size(), 17u);
  for (const std::string& name : names) {
    const bool number = name == "seq" || name == "policy_version";
    const bool list = name == "detections";
    std::vector<rapidjson::Value> wrong;
    wrong.emplace_back();  // null
    wrong.emplace_back(true);
    wrong.emplace_back(2.5);
    wrong.emplace_back(rapidjson::kObjectType);
    if (!list) wrong.emplace_back(rapidjson::kArrayType);
    if (!number) wrong.emplace_back(7);
    if (number || list) wrong.emplace_back("text");
    for (rapidjson::Value& w : wrong) {
      rapidjson::Document d;
      d.CopyFrom(doc, d.GetAllocator());
      d[name.c_str()] = rapidjson::Value(w, d.GetAllocator());
      auto r = MitigationFromJson(Serialize(d));
      ASSERT_FALSE(r.ok()) << name << " " << Serialize(d);
      const std::string expect = number || list ? "policy_version, seq or detections" : name;
      EXPECT_NE(r.status().message().find(expect), std::string::npos) << r.status();
    }
    rapidjson::Document d;
    d.CopyFrom(doc, d.GetAllocator());
    d.RemoveMember(name.c_str());
    EXPECT_FALSE(MitigationFromJson(Serialize(d)).ok()) << "without " << name;
  }
  for (const char* detections : {"[1]", "[null]", "[[\"a\"]]", "[{}]"}) {
    std::string json = MitigationToJson(Sample());
    const std::string from = "\"detections\":[\"d1\",\"d2\"]";
    json.replace(json.find(from), from.size(), std::string("\"detections\":") + detections);
    EXPECT_FALSE(MitigationFromJson(json).ok()) << json;
  }
  std::string with_nul = MitigationToJson(Sample());
  with_nul.insert(with_nul.find("\"r\""), std::string(1, '\0'));
  EXPECT_FALSE(MitigationFromJson(with_nul).ok());
  EXPECT_FALSE(MitigationFromJson(MitigationToJson(Sample()) + std::string(1, '\0')).ok());
  std::string bad_state = MitigationToJson(Sample());
  bad_state.replace(bad_state.find("\"active\""), 8, "\"dormant\"");
  EXPECT_FALSE(MitigationFromJson(bad_state).ok());
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
