#include "importer/checkpoint.h"

#include <tuple>

#include "gtest/gtest.h"
#include "importer/test_util.h"

namespace quell::importer {
namespace {

TEST(CheckpointTest, RoundTripAndAtomicReplace) {
  std::string dir = testing::TempDir("checkpoint");
  std::string path = dir + "/cp";
  EXPECT_FALSE(ReadCheckpoint(path)->has_value());
  Checkpoint c;
  c.batch = "b_123";
  c.files = {"a.ndjson", "-"};
  c.sizes = {1000, -1};
  c.file = 1;
  c.offset = 4096;
  c.line = 77;
  c.rows = 70;
  c.rejects_bytes = 12;
  c.counts.read = 70;
  c.counts.accepted = 60;
  c.counts.duplicate = 5;
  c.counts.rejected = 5;
  c.counts.decisions = {{"active", 40}, {"shadow", 3}};
  ASSERT_TRUE(WriteCheckpoint(path, c).ok());
  auto back = ReadCheckpoint(path);
  ASSERT_TRUE(back.ok());
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ(**back, c);  // no crc, no destination: as an older checkpoint reads
  c.crc = 4000000000u;
  c.destination = "server http://127.0.0.1:8080";
  ASSERT_TRUE(WriteCheckpoint(path, c).ok());
  EXPECT_EQ(**ReadCheckpoint(path), c);
  c.offset = 8192;
  ASSERT_TRUE(WriteCheckpoint(path, c).ok());
  EXPECT_EQ((*ReadCheckpoint(path))->offset, 8192u);
  ASSERT_TRUE(RemoveCheckpoint(path).ok());
  EXPECT_FALSE(ReadCheckpoint(path)->has_value());
  testing::WriteFile(path, "{\"x\":1}");
  EXPECT_EQ(ReadCheckpoint(path).status().code(), absl::StatusCode::kInvalidArgument);
  // Positions out of range (a file edited by hand or damaged) are refused, not used as
  // indexes: the file index may be 2 here (both read), not 3 or -1.
  for (auto [file, line, rows, ok] : {std::tuple{2, 0, 0, true},
                                      {3, 0, 0, false},
                                      {-1, 0, 0, false},
                                      {1, -1, 0, false},
                                      {1, 0, -5, false}}) {
    c.file = file;
    c.line = line;
    c.rows = rows;
    ASSERT_TRUE(WriteCheckpoint(path, c).ok());
    EXPECT_EQ(ReadCheckpoint(path).ok(), ok) << file << " " << line << " " << rows;
  }
}

}  // namespace
}  // namespace quell::importer
