#include "importer/input.h"

#include <zlib.h>
#include <zstd.h>

#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "importer/test_util.h"

namespace quell::importer {
namespace {

std::string ReadAll(ByteSource& s, absl::Status* status) {
  std::string out;
  char buf[7];  // small reads exercise the stream state
  for (;;) {
    auto n = s.Read(buf, sizeof buf);
    if (!n.ok()) {
      *status = n.status();
      return out;
    }
    if (*n == 0) break;
    out.append(buf, *n);
  }
  *status = absl::OkStatus();
  return out;
}

std::string Text(size_t n) {
  std::string s;
  for (size_t i = 0; s.size() < n; ++i) s += "{\"id\":\"d" + std::to_string(i) + "\"}\n";
  return s;
}

TEST(ByteSourceTest, PlainGzipZstdAndConcatenatedMembers) {
  const std::string text = Text(300000);
  for (const std::string& data :
       {text, testing::Gzip(text), testing::Zstd(text),
        testing::Gzip(text.substr(0, 1000)) + testing::Gzip(text.substr(1000))}) {
    auto src = ByteSource::FromString(data);
    absl::Status st;
    EXPECT_EQ(ReadAll(*src, &st), text);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(src->offset(), text.size());
    EXPECT_EQ(src->raw_bytes(), data.size());
  }
  EXPECT_EQ(ByteSource::FromString(testing::Gzip(text))->compression(), Compression::kGzip);
  EXPECT_EQ(ByteSource::FromString(testing::Zstd(text))->compression(), Compression::kZstd);
  EXPECT_EQ(ByteSource::FromString(text)->compression(), Compression::kNone);
}

TEST(ByteSourceTest, TruncatedGzipIsDataLossAfterTheGoodBytes) {
  const std::string text = Text(200000);
  std::string gz = testing::Gzip(text);
  auto src = ByteSource::FromString(gz.substr(0, gz.size() / 2), "day.ndjson.gz");
  absl::Status st;
  std::string got = ReadAll(*src, &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(st.message()).find("truncated gzip"), std::string::npos) << st;
  EXPECT_GT(got.size(), 0u);
  EXPECT_EQ(got, text.substr(0, got.size()));
}

TEST(ByteSourceTest, TruncatedAndCorruptZstd) {
  const std::string text = Text(200000);
  std::string z = testing::Zstd(text);
  absl::Status st;
  ReadAll(*ByteSource::FromString(z.substr(0, z.size() - 10)), &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(st.message()).find("truncated zstd"), std::string::npos) << st;
  std::string bad = z;
  bad[bad.size() / 2] ^= 0x55;
  bad[bad.size() / 2 + 1] ^= 0x55;
  ReadAll(*ByteSource::FromString(bad), &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
}

// A .gz or .zst file cut inside its magic number was read as plain text: one rejected
// row "\u001f" and exit 0, where a cut anywhere later is a truncated stream.
TEST(ByteSourceTest, ACompressedFileCutInsideItsMagicIsTruncated) {
  const std::string dir = ::testing::TempDir();
  for (const auto& [name, bytes, kind] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"cut1.ndjson.gz", std::string("\x1f", 1), "gzip"},
           {"cut3.ndjson.zst", std::string("\x28\xb5\x2f", 3), "zstd"}}) {
    const std::string path = dir + "/" + name;
    {
      std::ofstream f(path, std::ios::binary);
      f << bytes;
    }
    auto src = ByteSource::Open(path);
    ASSERT_FALSE(src.ok()) << name;
    EXPECT_EQ(src.status().code(), absl::StatusCode::kDataLoss) << src.status();
    EXPECT_NE(std::string(src.status().message()).find("truncated " + kind + " stream"),
              std::string::npos)
        << src.status();
  }
  // The same byte in a file not named as compressed is text (the reader judges it).
  const std::string plain = dir + "/one-byte.ndjson";
  {
    std::ofstream f(plain, std::ios::binary);
    f << '\x1f';
  }
  EXPECT_TRUE(ByteSource::Open(plain).ok());
}

TEST(ByteSourceTest, PeekDoesNotConsume) {
  auto src = ByteSource::FromString(testing::Gzip("hello world\n"));
  auto head = src->Peek(5);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*head, "hello");
  absl::Status st;
  EXPECT_EQ(ReadAll(*src, &st), "hello world\n");
}

TEST(ByteSourceTest, MissingFileIsNotFound) {
  auto src = ByteSource::Open("/nonexistent/quell-import-test");
  EXPECT_EQ(src.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quell::importer
