#include "importer/reader.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "core/utf8.h"
#include "gtest/gtest.h"
#include "importer/test_util.h"

namespace quell::importer {
namespace {

std::string JsonRow(int i, double score = 0.5) {
  return "{\"id\":\"d" + std::to_string(i) +
         "\",\"source\":\"s\",\"type\":\"t\",\"entity\":\"user:u" + std::to_string(i) +
         "\",\"score\":" + std::to_string(score) + ",\"observed_at\":\"2024-05-01T10:00:00Z\"}";
}

struct Collected {
  std::vector<Row> rows;
  absl::Status status;
};

Collected ReadAllRows(std::unique_ptr<RowReader> r) {
  Collected c;
  Row row;
  for (;;) {
    auto got = r->Next(&row);
    if (!got.ok()) {
      c.status = got.status();
      return c;
    }
    if (!*got) return c;
    c.rows.push_back(row);
  }
}

absl::StatusOr<std::unique_ptr<RowReader>> OpenString(const std::string& data, Format f,
                                                      ReaderOptions o = {}) {
  return RowReader::Open(ByteSource::FromString(data, "test"), f, o);
}

TEST(ReaderTest, NdjsonRowsLinesAndRejects) {
  std::string data =
      JsonRow(1) + "\n\n" + JsonRow(2) + "\r\n{bad json\n" + JsonRow(4, 3.0) + "\n" + JsonRow(5);
  auto r = OpenString(data, Format::kNdjson);
  ASSERT_TRUE(r.ok()) << r.status();
  Collected c = ReadAllRows(*std::move(r));
  ASSERT_TRUE(c.status.ok()) << c.status;
  ASSERT_EQ(c.rows.size(), 5u);  // the blank line is not a row
  EXPECT_EQ(c.rows[0].line, 1);
  EXPECT_EQ(c.rows[1].line, 3);
  ASSERT_TRUE(c.rows[1].detection);
  EXPECT_EQ(c.rows[1].detection->id, "d2");
  EXPECT_EQ(c.rows[2].line, 4);
  EXPECT_FALSE(c.rows[2].detection);
  EXPECT_EQ(c.rows[2].text, "{bad json");
  EXPECT_EQ(c.rows[3].line, 5);
  EXPECT_NE(c.rows[3].error.find("score"), std::string::npos);
  EXPECT_EQ(c.rows[4].line, 6);  // no final newline
  EXPECT_TRUE(c.rows[4].detection);
}

TEST(ReaderTest, HugeLineIsRejectedAndReadingContinues) {
  std::string huge = "{\"id\":\"" + std::string(10 << 20, 'x') + "\"}";
  std::string data = JsonRow(1) + "\n" + huge + "\n" + JsonRow(3) + "\n";
  ReaderOptions o;
  o.max_row_bytes = 1 << 20;
  auto r = OpenString(data, Format::kNdjson, o);
  ASSERT_TRUE(r.ok());
  Collected c = ReadAllRows(*std::move(r));
  ASSERT_TRUE(c.status.ok()) << c.status;
  ASSERT_EQ(c.rows.size(), 3u);
  EXPECT_FALSE(c.rows[1].detection);
  EXPECT_NE(c.rows[1].error.find("longer than the limit of 1048576 bytes"), std::string::npos)
      << c.rows[1].error;
  EXPECT_EQ(c.rows[1].text.size(), kMaxRejectText);
  EXPECT_EQ(c.rows[2].line, 3);
  ASSERT_TRUE(c.rows[2].detection);
  EXPECT_EQ(c.rows[2].detection->id, "d3");
}

TEST(ReaderTest, CsvWithQuotedNewlinesAndWrongColumnCount) {
  std::string data =
      "id,source,type,entity,score,observed_at,evidence,related\n"
      "d1,s,t,user:u1,0.9,2024-05-01T10:00:00Z,\"{\"\"note\"\":\n\"\"two "
      "lines\"\"}\",device:a|device:b\n"
      "d2,s,t,user:u2,0.9,2024-05-01T10:00:00Z\n"
      "d3,s,t,user:u3,0.9,2024-05-01T10:00:00Z,,\n";
  auto r = OpenString(data, Format::kCsv);
  ASSERT_TRUE(r.ok()) << r.status();
  Collected c = ReadAllRows(*std::move(r));
  ASSERT_TRUE(c.status.ok());
  ASSERT_EQ(c.rows.size(), 3u);
  ASSERT_TRUE(c.rows[0].detection) << c.rows[0].error;
  EXPECT_EQ(c.rows[0].detection->related.size(), 2u);
  EXPECT_EQ(c.rows[1].line, 4);
  EXPECT_NE(c.rows[1].error.find("wrong column count"), std::string::npos);
  EXPECT_EQ(c.rows[2].line, 5);
  EXPECT_TRUE(c.rows[2].detection);
}

// A quote inside an unquoted field does not open a quoted section: that row alone is an
// error, and the rows after it are read (they were swallowed into one reject).
TEST(ReaderTest, CsvStrayQuoteRejectsItsRowOnly) {
  std::string data = "id,source,type,entity,score,observed_at\n";
  for (int i = 1; i <= 5; ++i) {
    data +=
        absl::StrCat("s", i, ",s,t,user:a", i == 2 ? "\"" : "", i, ",0.5,2024-05-01T10:00:00Z\n");
  }
  data += "s6,s,t,\"user:q\"\"6\",0.5,2024-05-01T10:00:00Z\n";  // "" inside quotes: a quote
  auto r = OpenString(data, Format::kCsv);
  ASSERT_TRUE(r.ok()) << r.status();
  Collected c = ReadAllRows(*std::move(r));
  ASSERT_TRUE(c.status.ok()) << c.status;
  ASSERT_EQ(c.rows.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(c.rows[i].line, static_cast<int64_t>(i + 2));
    EXPECT_EQ(c.rows[i].detection.has_value(), i != 1) << i << " " << c.rows[i].error;
  }
  EXPECT_NE(c.rows[1].error.find("quote"), std::string::npos) << c.rows[1].error;
  EXPECT_EQ(c.rows[5].detection->entity.str(), "user:q\"6");
}

// A quote opening a field and never closed swallowed the rows after it: up to a later
// quote into one reject (wrong column count), or, with none within --max-row-bytes, a
// megabyte of rows into one "longer than the limit" reject and gone from every count.
// Only its own line is rejected now, and every row after it is read.
TEST(ReaderTest, CsvQuoteLeftOpenRejectsItsLineOnly) {
  for (bool later_quote : {true, false}) {
    std::string data = "id,source,type,entity,score,observed_at,evidence\n";
    const int rows = later_quote ? 50 : 20000;  // the second: ~1 MiB past the open quote
    for (int i = 1; i <= rows; ++i) {
      std::string evidence = later_quote && i == 40 ? "\"{\"\"n\"\":1}\"" : "";
      data += absl::StrCat("s", i, ",s,t,", i == 3 ? "\"" : "", "user:a", i,
                           ",0.5,2024-05-01T10:00:00Z,", evidence, "\n");
    }
    ReaderOptions o;
    o.max_row_bytes = 1 << 20;
    auto r = OpenString(data, Format::kCsv, o);
    ASSERT_TRUE(r.ok()) << r.status();
    Collected c = ReadAllRows(*std::move(r));
    ASSERT_TRUE(c.status.ok()) << c.status;
    ASSERT_EQ(c.rows.size(), static_cast<size_t>(rows)) << later_quote;
    for (int i = 0; i < rows; ++i) {
      EXPECT_EQ(c.rows[i].line, i + 2);
      EXPECT_EQ(c.rows[i].detection.has_value(), i != 2) << i << " " << c.rows[i].error;
      if (c.rows[i].detection) {
        EXPECT_EQ(c.rows[i].detection->id, absl::StrCat("s", i + 1));
      }
    }
    EXPECT_NE(c.rows[2].error.find("unterminated quoted field in column 4"), std::string::npos)
        << c.rows[2].error;
    EXPECT_EQ(c.rows[2].text, "s3,s,t,\"user:a3,0.5,2024-05-01T10:00:00Z,");
  }
}

// A raw NUL ends a JSON parser's input: the row is an error, not its first half.
TEST(ReaderTest, NulByteRejectsTheRow) {
  std::string data = JsonRow(1) + std::string(1, '\0') + JsonRow(2) + "\n" + JsonRow(3) + "\n";
  for (bool as_text : {false, true}) {
    ReaderOptions o;
    o.ndjson_as_text = as_text;
    auto r = OpenString(data, Format::kNdjson, o);
    ASSERT_TRUE(r.ok());
    Collected c = ReadAllRows(*std::move(r));
    ASSERT_EQ(c.rows.size(), 2u);
    EXPECT_NE(c.rows[0].error.find("NUL byte at byte"), std::string::npos) << c.rows[0].error;
    EXPECT_TRUE(c.rows[0].json.empty());
    EXPECT_FALSE(c.rows[0].detection);
  }
}

// --max-row-bytes holds for every row, not only those that cross a read chunk. A CSV row
// still inside a quoted field at the limit, with a newline before it, is taken for a quote
// left open (CsvQuoteLeftOpenRejectsItsLineOnly): its lines are rejected one by one (the
// first unterminated, the long one too long), and the row after them is read.
TEST(ReaderTest, RowLimitHoldsForShortRowsToo) {
  ReaderOptions o;
  o.max_row_bytes = 64;
  auto r = OpenString(JsonRow(1) + "\n" + JsonRow(2) + "\n{}\n", Format::kNdjson, o);
  ASSERT_TRUE(r.ok());
  Collected c = ReadAllRows(*std::move(r));
  ASSERT_EQ(c.rows.size(), 3u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_NE(c.rows[i].error.find("longer than the limit of 64 bytes (" +
                                   std::to_string(JsonRow(i + 1).size()) + " bytes"),
              std::string::npos)
        << c.rows[i].error;
  }
  EXPECT_EQ(c.rows[2].line, 3);

  o.max_row_bytes = 1 << 20;
  std::string data =
      "id,source,type,entity,score,observed_at,evidence\n"
      "c1,s,t,user:a,0.5,2024-05-01T10:00:00Z,\"{\"\"a\"\":\n\"\"" +
      std::string(2 << 20, 'x') + "\"\"}\"\nc2,s,t,user:b,0.5,2024-05-01T10:00:00Z,\n";
  r = OpenString(data, Format::kCsv, o);
  ASSERT_TRUE(r.ok());
  c = ReadAllRows(*std::move(r));
  ASSERT_EQ(c.rows.size(), 3u);
  EXPECT_NE(c.rows[0].error.find("unterminated quoted field"), std::string::npos);
  EXPECT_EQ(c.rows[1].line, 3);
  EXPECT_NE(c.rows[1].error.find("longer than the limit"), std::string::npos);
  EXPECT_EQ(c.rows[2].line, 4);
  ASSERT_TRUE(c.rows[2].detection) << c.rows[2].error;
  EXPECT_EQ(c.rows[2].detection->id, "c2");
}

TEST(ReaderTest, InputErrorsRefuse) {
  EXPECT_NE(std::string(OpenString("", Format::kNdjson).status().message()).find("is empty"),
            std::string::npos);
  // Blank lines or a byte order mark alone are as empty (they were 0 rows and exit 0).
  for (const char* blank : {"\n\n  \n", "\xEF\xBB\xBF", "\xEF\xBB\xBF\r\n"}) {
    EXPECT_NE(std::string(OpenString(blank, Format::kNdjson).status().message()).find("is empty"),
              std::string::npos)
        << blank;
  }
  EXPECT_NE(std::string(OpenString("id,source,colour\n", Format::kCsv).status().message())
                .find("unknown column"),
            std::string::npos);
  EXPECT_EQ(OpenString("{}", Format::kAvro).status().code(), absl::StatusCode::kInvalidArgument);
  // A header alone (with a byte order mark, blank lines after it) was 0 rows, exit 0.
  for (const char* header : {"id,source,type,entity,score,observed_at\n",
                             "\xEF\xBB\xBFid,source,type,entity,score,observed_at\r\n\r\n",
                             "id,source,type,entity,score,observed_at"}) {
    EXPECT_NE(std::string(OpenString(header, Format::kCsv).status().message()).find("no rows"),
              std::string::npos)
        << header;
  }
  EXPECT_TRUE(OpenString("id,source,type,entity,score,observed_at\nd1,s,t,user:u,0.5,"
                         "2024-05-01T10:00:00Z\n",
                         Format::kCsv)
                  .ok());
}

TEST(ReaderTest, TruncatedGzipKeepsTheRowsBefore) {
  std::string text;
  for (int i = 0; i < 50000; ++i) text += JsonRow(i) + "\n";
  std::string gz = testing::Gzip(text);
  auto r = OpenString(gz.substr(0, gz.size() * 3 / 4), Format::kNdjson);
  ASSERT_TRUE(r.ok());
  Collected c = ReadAllRows(*std::move(r));
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_GT(c.rows.size(), 1000u);
  for (const Row& row : c.rows) ASSERT_TRUE(row.detection) << row.line << ": " << row.error;
}

TEST(ReaderTest, SkipToResumesAtTheSameRow) {
  std::string text;
  for (int i = 0; i < 3000; ++i) text += JsonRow(i) + "\n";
  for (const std::string& data : {text, testing::Zstd(text)}) {
    auto r = OpenString(data, Format::kNdjson);
    ASSERT_TRUE(r.ok());
    Row row;
    for (int i = 0; i < 1234; ++i) ASSERT_TRUE(*(*r)->Next(&row));
    Position pos = (*r)->position();
    EXPECT_EQ(pos.rows, 1234);
    EXPECT_EQ(pos.line, 1234);
    auto again = OpenString(data, Format::kNdjson);
    ASSERT_TRUE((*again)->SkipTo(pos).ok());
    ASSERT_TRUE(*(*again)->Next(&row));
    EXPECT_EQ(row.line, 1235);
    EXPECT_EQ(row.detection->id, "d1234");
  }
  // Other bytes before the checkpoint (another export piped in, rows in another order):
  // refused. Only the offset was checked, and rows were skipped that were never read.
  std::string other = text;
  std::swap(other[10], other[11]);
  auto r = OpenString(text, Format::kNdjson);
  Row row;
  for (int i = 0; i < 1234; ++i) ASSERT_TRUE(*(*r)->Next(&row));
  auto differs = OpenString(other, Format::kNdjson);
  absl::Status st = (*differs)->SkipTo((*r)->position());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(std::string(st.message()).find("is it the same input?"), std::string::npos) << st;
}

TEST(ReaderTest, AvroRowsSchemaChecksAndResume) {
  std::string dir = testing::TempDir("avro");
  std::vector<testing::AvroRow> rows;
  for (int i = 0; i < 500; ++i) {
    testing::AvroRow a{absl::StrCat("d", i),      "s",         "t",
                       absl::StrCat("user:u", i), 0.5,         "2024-05-01T10:00:00Z",
                       i % 2 ? "{\"k\":1}" : "",  {"device:x"}};
    rows.push_back(a);
  }
  rows[7].score = 9;      // a row-level error
  rows[9].id = "d9\xc3";  // invalid UTF-8 (Avro does not check it)
  rows[11].evidence = "{\"k\":\"\xff\"}";
  for (const char* codec : {"null", "deflate"}) {
    std::string path = dir + "/d.avro";
    ASSERT_EQ(testing::WriteAvro(path, rows, codec), "");
    std::string bytes = testing::ReadFileOrEmpty(path);
    for (const std::string& data : {bytes, testing::Gzip(bytes)}) {
      auto src = ByteSource::FromString(data);
      auto r = RowReader::Open(std::move(src), Format::kAvro, {});
      ASSERT_TRUE(r.ok()) << r.status();
      Collected c = ReadAllRows(*std::move(r));
      ASSERT_TRUE(c.status.ok()) << c.status;
      ASSERT_EQ(c.rows.size(), 500u);
      EXPECT_EQ(c.rows[1].detection->evidence_json, "{\"k\":1}");
      EXPECT_EQ(c.rows[1].detection->related[0].str(), "device:x");
      EXPECT_FALSE(c.rows[7].detection);
      EXPECT_EQ(c.rows[7].line, 8);
      EXPECT_NE(c.rows[7].text.find("\"score\":9"), std::string::npos) << c.rows[7].text;
      for (size_t i : {size_t{9}, size_t{11}}) {
        EXPECT_FALSE(c.rows[i].detection) << i;
        EXPECT_NE(c.rows[i].error.find("invalid UTF-8"), std::string::npos) << c.rows[i].error;
        // The whole record, its bad bytes replaced: not just the bad field.
        EXPECT_NE(c.rows[i].text.find(absl::StrCat("\"entity\":\"user:u", i, "\"")),
                  std::string::npos)
            << c.rows[i].text;
        EXPECT_FALSE(core::FindInvalidUtf8(c.rows[i].text)) << c.rows[i].text;
      }
      EXPECT_NE(c.rows[9].text.find("\"id\":\"d9\xef\xbf\xbd\""), std::string::npos);
    }
    auto r = RowReader::Open(ByteSource::FromString(bytes), Format::kAvro, {});
    Position p;
    p.rows = 300;
    ASSERT_TRUE((*r)->SkipTo(p).ok());
    Row row;
    ASSERT_TRUE(*(*r)->Next(&row));
    EXPECT_EQ(row.detection->id, "d300");
    // A resume checks the records it skips by their keys: the same file resumes, and so
    // does another one with the same keys in the same order (its other fields would have
    // been duplicates); the same rows in another order (same size) are refused.
    Position at = (*r)->position();
    auto same = RowReader::Open(ByteSource::FromString(bytes), Format::kAvro, {});
    ASSERT_TRUE((*same)->SkipTo(at).ok());
    ASSERT_TRUE(*(*same)->Next(&row));
    EXPECT_EQ(row.detection->id, "d301");
    std::vector<testing::AvroRow> swapped = rows;
    std::swap(swapped[100], swapped[101]);
    ASSERT_EQ(testing::WriteAvro(path, swapped, codec), "");
    std::string reordered = testing::ReadFileOrEmpty(path);
    if (std::string_view(codec) == "null") {
      ASSERT_EQ(reordered.size(), bytes.size());
    }
    auto other = RowReader::Open(ByteSource::FromString(reordered), Format::kAvro, {});
    absl::Status st = (*other)->SkipTo(at);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find("its first 301 records differ"), std::string::npos) << st;
    std::vector<testing::AvroRow> rescored = rows;
    rescored[100].score = 0.25;
    ASSERT_EQ(testing::WriteAvro(path, rescored, codec), "");
    auto rewritten =
        RowReader::Open(ByteSource::FromString(testing::ReadFileOrEmpty(path)), Format::kAvro, {});
    ASSERT_TRUE((*rewritten)->SkipTo(at).ok());
  }
  // Wrong schemas are refused with the reason.
  std::string path = dir + "/bad.avro";
  ASSERT_EQ(
      testing::WriteAvroSchemaOnly(
          path,
          R"({"type":"record","name":"X","fields":[{"name":"id","type":"string"},{"name":"score","type":"string"}]})"),
      "");
  auto bad = RowReader::Open(*ByteSource::Open(path), Format::kAvro, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("\"score\" must be a double"),
            std::string::npos)
      << bad.status();
  ASSERT_EQ(
      testing::WriteAvroSchemaOnly(
          path,
          R"({"type":"record","name":"X","fields":[{"name":"id","type":"string"},{"name":"source","type":"string"},{"name":"type","type":"string"},{"name":"entity","type":"string"},{"name":"score","type":"double"},{"name":"observed_at","type":"string"},{"name":"country","type":"string"}]})"),
      "");
  bad = RowReader::Open(*ByteSource::Open(path), Format::kAvro, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("unknown field \"country\""),
            std::string::npos)
      << bad.status();
  // A header with the right schema and no records is empty: refused, as an empty NDJSON
  // file is (it had imported 0 rows with exit 0).
  ASSERT_EQ(testing::WriteAvroSchemaOnly(path, testing::kAvroSchema), "");
  bad = RowReader::Open(*ByteSource::Open(path), Format::kAvro, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("bad.avro is empty: no rows to import"),
            std::string::npos)
      << bad.status();
  // A text file given as Avro, and an Avro file given as CSV.
  EXPECT_FALSE(RowReader::Open(ByteSource::FromString("id,source\n"), Format::kAvro, {}).ok());
  EXPECT_FALSE(RowReader::Open(ByteSource::FromString(testing::ReadFileOrEmpty(dir + "/d.avro")),
                               Format::kCsv, {})
                   .ok());
}

// 1,000 valid rows: several of libavro's 16 KiB blocks.
std::vector<testing::AvroRow> ThousandAvroRows() {
  std::vector<testing::AvroRow> rows;
  for (int i = 0; i < 1000; ++i) {
    rows.push_back({absl::StrCat("d", i),
                    "s",
                    "t",
                    absl::StrCat("user:u", i),
                    0.5,
                    "2024-05-01T10:00:00Z",
                    absl::StrCat("{\"plays\":", i, "}"),
                    {}});
  }
  return rows;
}

// A file cut anywhere (a transfer that stopped): opening it is refused with libavro's
// reason, or the rows before the cut come and then an input error; never a crash
// (closing libavro's FILE a second time after a failed open was a double free). The
// format has no end marker: a cut right after a block's sync marker is a valid, shorter
// file (docs/import.md).
TEST(ReaderTest, TruncatedAvroIsAnErrorAtEveryLength) {
  std::string dir = testing::TempDir("avro_cut");
  const std::vector<testing::AvroRow> rows = ThousandAvroRows();
  for (const char* codec : {"null", "deflate"}) {
    ASSERT_EQ(testing::WriteAvro(dir + "/d.avro", rows, codec), "");
    const std::string bytes = testing::ReadFileOrEmpty(dir + "/d.avro");
    ASSERT_GT(bytes.size(), 2000u);
    const std::string sync = bytes.substr(bytes.size() - 16);  // ends the header and each block
    // Every length through the header and into the first block, then every 31st; and at
    // each block's end, one byte more (inside the next block's record count, which libavro
    // reads as the end of the file) and two (inside its size).
    std::set<size_t> lengths;
    for (size_t n = 4; n < bytes.size(); n += n < 1200 ? 1 : 31) lengths.insert(n);
    std::set<size_t> in_count;
    for (size_t at = bytes.find(sync); at != std::string::npos; at = bytes.find(sync, at + 1)) {
      if (at + 18 < bytes.size()) {  // counts of 64 records and more take two bytes
        lengths.insert({at + 17, at + 18});
        in_count.insert(at + 17);
      }
    }
    ASSERT_GE(in_count.size(), 3u) << codec;  // the header and two blocks at least
    int refused = 0, cut_in_rows = 0, boundaries = 0;
    for (size_t n : lengths) {
      auto r = RowReader::Open(ByteSource::FromString(bytes.substr(0, n), "cut.avro"),
                               Format::kAvro, {});
      if (!r.ok()) {
        ++refused;
        // Cut right after the header: a whole file with no records, refused as empty.
        const bool header_only = n == bytes.find(sync) + 16;
        EXPECT_NE(std::string(r.status().message())
                      .find(header_only ? "cut.avro is empty: no rows to import"
                                        : "cut.avro: not a readable Avro container"),
                  std::string::npos)
            << n << ": " << r.status();
        continue;
      }
      Collected c = ReadAllRows(*std::move(r));
      for (size_t i = 0; i < c.rows.size(); ++i) {
        ASSERT_TRUE(c.rows[i].detection) << n;
        ASSERT_EQ(c.rows[i].detection->id, rows[i].id) << n;
      }
      if (c.status.ok()) {
        const bool at_boundary = n >= 16 && bytes.compare(n - 16, 16, sync) == 0;
        EXPECT_TRUE(at_boundary) << codec << " cut at " << n << " read " << c.rows.size()
                                 << " rows as a whole file";
        boundaries += at_boundary;
        continue;
      }
      EXPECT_EQ(c.status.code(), absl::StatusCode::kDataLoss) << n << ": " << c.status;
      EXPECT_NE(std::string(c.status.message()).find("corrupt Avro data after record"),
                std::string::npos)
          << c.status;
      // Cut in a block's count (libavro reads that as the end) or in its records (libavro:
      // "Cannot read file block"): the same words.
      EXPECT_NE(std::string(c.status.message()).find("the data ends inside a block"),
                std::string::npos)
          << n << (in_count.contains(n) ? " (in a count)" : "") << ": " << c.status;
      ++cut_in_rows;
    }
    EXPECT_GT(refused, 0) << codec;
    EXPECT_GT(cut_in_rows, 0) << codec;
    // The header's end; the blocks' ends are seen only where the stride lands on one.
    EXPECT_GE(boundaries, 1) << codec;
  }
}

// A block read whole but not decodable is corrupt data, not a cut: the message is
// libavro's, even when the input was read to its end before (the last block; a small
// file). And a resume over a stream cut inside the records it skips says it is cut.
TEST(ReaderTest, AvroCorruptLastBlockIsNotACutAndASkipOverACutIs) {
  std::string dir = testing::TempDir("avro_bad");
  const std::vector<testing::AvroRow> rows = ThousandAvroRows();
  ASSERT_EQ(testing::WriteAvro(dir + "/d.avro", rows), "");
  const std::string bytes = testing::ReadFileOrEmpty(dir + "/d.avro");
  const std::string sync = bytes.substr(bytes.size() - 16);
  // The last block: after the sync marker before the file's last one, its record count
  // and byte size (varints), then its first record, whose id's length becomes -1.
  const size_t last = bytes.rfind(sync, bytes.size() - 17) + 16;
  size_t at = last;
  for (int varint = 0; varint < 2; ++varint) {
    while (static_cast<unsigned char>(bytes[at]) & 0x80) ++at;
    ++at;
  }
  std::string corrupt = bytes;
  corrupt[at] = 0x01;
  auto r = RowReader::Open(ByteSource::FromString(corrupt, "bad.avro"), Format::kAvro, {});
  ASSERT_TRUE(r.ok()) << r.status();
  Collected c = ReadAllRows(*std::move(r));
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDataLoss) << c.status;
  EXPECT_NE(std::string(c.status.message()).find("bad.avro: corrupt Avro data after record"),
            std::string::npos)
      << c.status;
  EXPECT_EQ(std::string(c.status.message()).find("ends inside a block"), std::string::npos)
      << c.status;

  Position p;
  p.rows = 999;  // in the last block
  auto cut = RowReader::Open(ByteSource::FromString(bytes.substr(0, at + 100), "cut.avro"),
                             Format::kAvro, {});
  ASSERT_TRUE(cut.ok()) << cut.status();
  absl::Status st = (*cut)->SkipTo(p);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(std::string(st.message()).find("the data ends inside a block"), std::string::npos)
      << st;
  // Cut inside a later block's record count (two bytes: over 63 records), which libavro
  // reads as the end of the file: the same words, not "fewer records than the checkpoint".
  const size_t second = bytes.find(sync, bytes.find(sync) + 16) + 16;  // the second block
  ASSERT_GT(static_cast<unsigned char>(bytes[second]) & 0x80, 0);
  cut = RowReader::Open(ByteSource::FromString(bytes.substr(0, second + 1), "cut.avro"),
                        Format::kAvro, {});
  ASSERT_TRUE(cut.ok()) << cut.status();
  st = (*cut)->SkipTo(p);
  EXPECT_NE(std::string(st.message()).find("the data ends inside a block"), std::string::npos)
      << st;
}

// A source that hands out at most `step` bytes a read, so that every field of the
// container's framing is split across reads somewhere.
class TrickleSource : public ByteSource {
 public:
  TrickleSource(std::string data, size_t step)
      : inner_(ByteSource::FromString(std::move(data), "trickle.avro")), step_(step) {
    name_ = inner_->name();
  }
  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    return inner_->Read(buf, std::min(n, step_));
  }
  absl::StatusOr<std::string_view> Peek(size_t n) override { return inner_->Peek(n); }

 private:
  std::unique_ptr<ByteSource> inner_;
  size_t step_;
};

// A block of 0 records is legal Avro. libavro 1.11 decoded the block before it once more
// as a record (a duplicate) and then reported the end of the file: the records after it
// were lost (exit 0 on a file read ahead to its end), and a file starting with one was
// refused as empty.
TEST(ReaderTest, AvroEmptyBlocksAreSkipped) {
  std::string dir = testing::TempDir("avro_empty_blocks");
  const std::vector<testing::AvroRow> rows = ThousandAvroRows();
  for (const std::string codec : {"null", "deflate"}) {
    ASSERT_EQ(testing::WriteAvro(dir + "/d.avro", rows, codec.c_str()), "");
    const std::string bytes = testing::ReadFileOrEmpty(dir + "/d.avro");
    const std::string sync = bytes.substr(bytes.size() - 16);
    // Count 0, then the byte size and bytes (deflate's empty stream is 2 bytes, the null
    // codec's none), then the sync marker: after the header and after every block.
    const std::string empty =
        std::string(1, '\0') +
        (codec == "null" ? std::string(1, '\0') : std::string("\x04\x03\x00", 3)) + sync;
    std::string with;
    size_t from = 0, blocks = 0;
    for (size_t at = bytes.find(sync); at != std::string::npos; at = bytes.find(sync, at + 16)) {
      with += bytes.substr(from, at + 16 - from) + empty;
      from = at + 16;
      ++blocks;
    }
    ASSERT_GE(blocks, 4u) << codec;  // the header and three blocks at least
    for (size_t step : {size_t{1}, size_t{7}, size_t{1} << 20}) {
      auto r = RowReader::Open(std::make_unique<TrickleSource>(with, step), Format::kAvro, {});
      ASSERT_TRUE(r.ok()) << codec << " " << step << ": " << r.status();
      Collected c = ReadAllRows(*std::move(r));
      ASSERT_TRUE(c.status.ok()) << codec << " " << step << ": " << c.status;
      ASSERT_EQ(c.rows.size(), rows.size()) << codec << " " << step;
      for (size_t i = 0; i < rows.size(); ++i) {
        ASSERT_TRUE(c.rows[i].detection) << i;
        ASSERT_EQ(c.rows[i].detection->id, rows[i].id) << codec << " " << step << ": " << i;
        ASSERT_EQ(c.rows[i].line, static_cast<int64_t>(i + 1));
      }
    }
    // A resume counts the same records.
    auto r = RowReader::Open(ByteSource::FromString(with), Format::kAvro, {});
    Position p;
    p.rows = 700;
    ASSERT_TRUE((*r)->SkipTo(p).ok());
    Row row;
    ASSERT_TRUE(*(*r)->Next(&row));
    EXPECT_EQ(row.detection->id, "d700");
    // A header and empty blocks only: no records, refused as empty.
    const std::string header = bytes.substr(0, bytes.find(sync) + 16);
    auto none = RowReader::Open(ByteSource::FromString(header + empty + empty, "none.avro"),
                                Format::kAvro, {});
    ASSERT_FALSE(none.ok());
    EXPECT_NE(std::string(none.status().message()).find("none.avro is empty"), std::string::npos)
        << none.status();
  }
}

}  // namespace
}  // namespace quell::importer
