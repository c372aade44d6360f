#include "importer/progress.h"

#include "gtest/gtest.h"

namespace quell::importer {
namespace {

TEST(ProgressTest, Render) {
  EXPECT_EQ(WithCommas(1234567), "1,234,567");
  EXPECT_EQ(WithCommas(12), "12");
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  std::string line = Progress::Render(500000, 50 << 20, uint64_t{100} << 20, absl::Seconds(2), 120);
  EXPECT_NE(line.find("500,000 rows"), std::string::npos) << line;
  EXPECT_NE(line.find("250,000 rows/s"), std::string::npos) << line;
  EXPECT_NE(line.find("50.0 MiB / 100.0 MiB"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA 2s"), std::string::npos) << line;
  EXPECT_NE(line.find(" 50%"), std::string::npos) << line;
  std::string unknown = Progress::Render(10, 100, std::nullopt, absl::Seconds(1), 80);
  EXPECT_EQ(unknown.find("ETA"), std::string::npos);
  // Resumed at 400,000 rows and 40 MiB: this run did 100,000 rows and 10 MiB in 2 s, so
  // 50,000 rows/s and 10 s for the 50 MiB left (it said 250,000 rows/s and ETA 2s).
  std::string resumed = Progress::Render(500000, 50 << 20, uint64_t{100} << 20, absl::Seconds(2),
                                         120, 400000, 40 << 20);
  EXPECT_NE(resumed.find("500,000 rows  50,000 rows/s"), std::string::npos) << resumed;
  EXPECT_NE(resumed.find("ETA 10s"), std::string::npos) << resumed;
}

}  // namespace
}  // namespace quell::importer
