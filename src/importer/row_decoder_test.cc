#include "importer/row_decoder.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quell::importer {
namespace {

constexpr char kRow[] =
    R"({"id":"d1","source":"bot-model-v3","type":"artificial_streaming","entity":"user:u1",)"
    R"("score":0.95,"observed_at":"2024-05-01T10:00:00Z","evidence":{"plays":900},"related":["device:a"]})";

TEST(RowDecoderTest, JsonRowLikeTheApi) {
  auto d = DecodeJsonRow(kRow, {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->id, "d1");
  EXPECT_EQ(d->entity.str(), "user:u1");
  EXPECT_DOUBLE_EQ(d->score, 0.95);
  EXPECT_EQ(d->evidence_json, R"({"plays":900})");
  ASSERT_EQ(d->related.size(), 1u);
  EXPECT_EQ(d->related[0].str(), "device:a");
}

TEST(RowDecoderTest, JsonRowErrorsNameTheField) {
  auto d = DecodeJsonRow(
      R"({"id":"d1","source":"s","type":"t","entity":"user:u1","score":7,"observed_at":"2024-05-01T10:00:00Z"})",
      {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("score: must be between 0 and 1"),
            std::string::npos)
      << d.status();
  d = DecodeJsonRow(R"({"id":"d1","nope":1})", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("nope"), std::string::npos) << d.status();
  d = DecodeJsonRow(R"({"id":)", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("invalid JSON at byte"), std::string::npos);
  d = DecodeJsonRow("[1,2]", {});
  EXPECT_FALSE(d.ok());
  // Nesting past core::kMaxJsonDepth is refused before rapidjson recurses into it (a
  // 200,000-deep line overflowed the stack).
  d = DecodeJsonRow(std::string(200000, '[') + std::string(200000, ']'), {});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().message(), "JSON nested deeper than 100 levels at byte 101");
}

// A key repeated anywhere in evidence is refused, as at the top level: the policy engine
// read the first value, a reviewer's JSON tool shows the last.
TEST(RowDecoderTest, EvidenceKeyGivenTwice) {
  const std::string head = R"({"id":"d1","source":"s","type":"t","entity":"user:u1","score":0.9,)"
                           R"("observed_at":"2024-05-01T10:00:00Z","evidence":)";
  for (const auto& [evidence, path] : std::vector<std::pair<std::string, std::string>>{
           {R"({"k":1,"k":2})", "evidence.k"},
           {R"({"a":{"b":[{"c":1},{"c":1,"c":2}]}})", "evidence.a.b[1].c"},
           {R"({"":1,"":2})", R"(evidence."")"}}) {
    auto d = DecodeJsonRow(head + evidence + "}", {});
    ASSERT_FALSE(d.ok()) << evidence;
    EXPECT_NE(std::string(d.status().message()).find(path + ": given twice"), std::string::npos)
        << d.status();
  }
  // The same key in two objects is no repeat.
  auto d = DecodeJsonRow(head + R"({"a":{"k":1},"b":{"k":1}})" + "}", {});
  EXPECT_TRUE(d.ok()) << d.status();
}

// A number is the double nearest its text: 0.99999999999999999 is 1 (in range), as
// strtod, Python and the CSV path read it; rapidjson's fast path made it 1.0000000000000002.
TEST(RowDecoderTest, ScoresAreReadAtFullPrecision) {
  std::string row = kRow;
  row.replace(row.find("0.95"), 4, "0.99999999999999999");
  auto d = DecodeJsonRow(row, {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->score, 1.0);
}

// A CSV score is a decimal number (surrounding spaces aside): strtod also took hex
// ("0x1" was a score of 1), "nan" and "inf".
TEST(RowDecoderTest, CsvScoreIsADecimalNumber) {
  auto h = CsvHeader::Parse("id,source,type,entity,score,observed_at");
  ASSERT_TRUE(h.ok()) << h.status();
  for (const char* score : {"0x1", "0x0.8p0", "nan", "inf", "1e", ""}) {
    auto d = DecodeCsvRow(*h, absl::StrCat("d1,s,t,user:u1,", score, ",2024-05-01T10:00:00Z"), {});
    EXPECT_FALSE(d.ok()) << score;
  }
  for (const char* score : {"0.5", " 0.5 ", "5e-1", "1"}) {
    auto d = DecodeCsvRow(*h, absl::StrCat("d1,s,t,user:u1,", score, ",2024-05-01T10:00:00Z"), {});
    EXPECT_TRUE(d.ok()) << score << ": " << d.status();
  }
}

TEST(RowDecoderTest, InvalidUtf8) {
  std::string row = kRow;
  row.insert(row.begin() + 20, '\xfe');
  auto d = DecodeJsonRow(row, {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("invalid UTF-8 at byte 21"), std::string::npos)
      << d.status();
}

TEST(RowDecoderTest, FutureObservedAtIsRejected) {
  DecodeOptions o;
  o.now = absl::FromUnixSeconds(1700000000);
  auto d = DecodeJsonRow(kRow, o);  // 2024 is after 2023-11
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("observed_at"), std::string::npos);
}

TEST(RowDecoderTest, CsvHeaderChecks) {
  EXPECT_TRUE(CsvHeader::Parse("id,source,type,entity,score,observed_at").ok());
  auto h =
      CsvHeader::Parse("\xEF\xBB\xBFid,source,type,entity,score,observed_at,evidence,related\r");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->columns(), 8u);
  EXPECT_NE(std::string(CsvHeader::Parse("id,source,type,entity,score").status().message())
                .find("missing required column \"observed_at\""),
            std::string::npos);
  EXPECT_NE(
      std::string(
          CsvHeader::Parse("id,source,type,entity,score,observed_at,colour").status().message())
          .find("unknown column \"colour\""),
      std::string::npos);
  EXPECT_FALSE(CsvHeader::Parse("id,id,source,type,entity,score,observed_at").ok());
}

TEST(RowDecoderTest, CsvSplitting) {
  std::vector<std::string> f;
  ASSERT_TRUE(SplitCsvRecord(R"(a,"b,c","say ""hi""",,"multi
line")",
                             &f)
                  .ok());
  EXPECT_EQ(f, (std::vector<std::string>{"a", "b,c", "say \"hi\"", "", "multi\nline"}));
  ASSERT_TRUE(SplitCsvRecord("a,", &f).ok());
  EXPECT_EQ(f, (std::vector<std::string>{"a", ""}));
  EXPECT_FALSE(SplitCsvRecord(R"(a,"open)", &f).ok());
  EXPECT_FALSE(SplitCsvRecord(R"(a,"x"y)", &f).ok());
  EXPECT_FALSE(SplitCsvRecord(R"(a,b"c)", &f).ok());
}

TEST(RowDecoderTest, CsvRows) {
  auto h = CsvHeader::Parse("id,source,type,entity,score,observed_at,evidence,related");
  ASSERT_TRUE(h.ok());
  auto d = DecodeCsvRow(
      *h,
      R"(d1,bot-model-v3,artificial_streaming,user:u1,0.95,2024-05-01T10:00:00Z,"{""plays"":900}",device:a|ip:10.0.0.1)",
      {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->evidence_json, R"({"plays":900})");
  ASSERT_EQ(d->related.size(), 2u);
  EXPECT_EQ(d->related[1].str(), "ip:10.0.0.1");
  d = DecodeCsvRow(*h, "d2,s,t,user:u2,0.5,2024-05-01T10:00:00Z,,", {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->related.empty());

  d = DecodeCsvRow(*h, "d3,s,t,user:u2,0.5,2024-05-01T10:00:00Z", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message())
                .find("wrong column count: the header has 8 columns, this row 6"),
            std::string::npos)
      << d.status();
  d = DecodeCsvRow(*h, "d4,s,t,user:u2,high,2024-05-01T10:00:00Z,,", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("score"), std::string::npos) << d.status();
  d = DecodeCsvRow(*h, "d5,s,t,user:u2,0.5,2024-05-01T10:00:00Z,{not json},", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("evidence: not valid JSON"), std::string::npos);
  d = DecodeCsvRow(*h, "d6,s,t,nocolon,0.5,2024-05-01T10:00:00Z,,", {});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(std::string(d.status().message()).find("entity"), std::string::npos);
}

TEST(RowDecoderTest, Formats) {
  EXPECT_EQ(FormatFromName("a/day.ndjson.zst"), Format::kNdjson);
  EXPECT_EQ(FormatFromName("x.jsonl.gz"), Format::kNdjson);
  EXPECT_EQ(FormatFromName("x.csv"), Format::kCsv);
  EXPECT_EQ(FormatFromName("x.avro"), Format::kAvro);
  EXPECT_EQ(FormatFromName("-"), std::nullopt);
  EXPECT_EQ(FormatFromContent(std::string("Obj\x01rest", 8)), Format::kAvro);
  EXPECT_EQ(FormatFromContent("  {\"id\""), Format::kNdjson);
  EXPECT_EQ(FormatFromContent("id,source"), Format::kCsv);
  EXPECT_FALSE(ParseFormat("xml").ok());
}

}  // namespace
}  // namespace quell::importer
