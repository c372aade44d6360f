// The WAL VFS driven directly, with the write sequences SQLite makes, reading the file
// as the kernel has it (not through the VFS, whose reads would flush).
#include "ledger/sqlite/internal/wal_vfs.h"

#include <sqlite3.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace quell::ledger::sqlite_internal {
namespace {

// A 24-byte frame header: page number, then the database size after a commit (0: not one).
std::string FrameHeader(int page, int db_pages_after_commit) {
  std::string h(24, '\0');
  h[3] = static_cast<char>(page);
  h[7] = static_cast<char>(db_pages_after_commit);
  return h;
}

class WalVfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* name = WalBufferingVfs();
    if (name == nullptr) GTEST_SKIP() << "SQLite version unchecked";
    vfs_ = sqlite3_vfs_find(name);
    ASSERT_NE(vfs_, nullptr);
    dir_ = std::filesystem::temp_directory_path() /
           ("quell-walvfs-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const std::string db = (dir_ / "t.db").string();
    name_ = sqlite3_create_filename(db.c_str(), (db + "-journal").c_str(), (db + "-wal").c_str(), 0,
                                    nullptr);
    db_ = Allocate();
    wal_ = Allocate();
    int out = 0;
    ASSERT_EQ(vfs_->xOpen(vfs_, name_, db_,
                          SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &out),
              SQLITE_OK);
    ASSERT_EQ(vfs_->xOpen(vfs_, sqlite3_filename_wal(name_), wal_,
                          SQLITE_OPEN_WAL | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &out),
              SQLITE_OK);
  }
  void TearDown() override {
    if (wal_ != nullptr && wal_->pMethods != nullptr) wal_->pMethods->xClose(wal_);
    if (db_ != nullptr && db_->pMethods != nullptr) db_->pMethods->xClose(db_);
    if (name_ != nullptr) sqlite3_free_filename(name_);
    std::filesystem::remove_all(dir_);
  }

  sqlite3_file* Allocate() {
    const size_t n = (vfs_->szOsFile + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    files_.push_back(std::make_unique<std::max_align_t[]>(n));
    return reinterpret_cast<sqlite3_file*>(files_.back().get());
  }
  int Write(const std::string& bytes, sqlite3_int64 offset) {
    return wal_->pMethods->xWrite(wal_, bytes.data(), static_cast<int>(bytes.size()), offset);
  }
  // The WAL file's bytes as the kernel has them.
  std::string OnFile() {
    std::ifstream in(dir_ / "t.db-wal", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  sqlite3_vfs* vfs_ = nullptr;
  std::filesystem::path dir_;
  sqlite3_filename name_ = nullptr;
  std::vector<std::unique_ptr<std::max_align_t[]>> files_;
  sqlite3_file* db_ = nullptr;
  sqlite3_file* wal_ = nullptr;
};

TEST_F(WalVfsTest, FramesWaitForTheCommitFrameThenEverythingAfterItGoesOutAtOnce) {
  const std::string wal_header(32, 'W');
  const std::string page1(4096, '1'), page2(4096, '2');
  std::string expected = wal_header;
  ASSERT_EQ(Write(wal_header, 0), SQLITE_OK);  // not an append: out at once
  EXPECT_EQ(OnFile(), expected);

  // A frame that does not commit: kept.
  ASSERT_EQ(Write(FrameHeader(1, 0), 32), SQLITE_OK);
  ASSERT_EQ(Write(page1, 56), SQLITE_OK);
  EXPECT_EQ(OnFile().size(), 32u);
  expected += FrameHeader(1, 0) + page1;

  // The commit frame: its page sends both frames.
  const int64_t commits = WalCommitFlushesForTest();
  ASSERT_EQ(Write(FrameHeader(2, 2), 4152), SQLITE_OK);
  EXPECT_EQ(OnFile().size(), 32u);
  ASSERT_EQ(Write(page2, 4176), SQLITE_OK);
  expected += FrameHeader(2, 2) + page2;
  EXPECT_EQ(OnFile(), expected);
  EXPECT_EQ(WalCommitFlushesForTest() - commits, 1);

  // Padding to a sector boundary (synchronous=FULL without power-safe overwrite): a copy
  // of the commit frame whose page is split around a sync, the last piece 24 bytes whose
  // bytes 4..7 are zero, as a frame header that commits nothing would be. Each is on file
  // when written.
  ASSERT_EQ(Write(FrameHeader(2, 2), 8272), SQLITE_OK);
  expected += FrameHeader(2, 2);
  EXPECT_EQ(OnFile(), expected);
  const std::string head(page2.data(), 4096 - 24);
  ASSERT_EQ(Write(head, 8296), SQLITE_OK);
  expected += head;
  EXPECT_EQ(OnFile(), expected);
  const std::string tail(24, '\0');
  ASSERT_EQ(Write(tail, 8296 + 4096 - 24), SQLITE_OK);
  expected += tail;
  EXPECT_EQ(OnFile(), expected);
}

TEST_F(WalVfsTest, AnyOtherUseOfTheFileSendsWhatIsKeptFirst) {
  ASSERT_EQ(Write(std::string(32, 'W'), 0), SQLITE_OK);
  ASSERT_EQ(Write(FrameHeader(1, 0), 32), SQLITE_OK);
  ASSERT_EQ(Write(std::string(4096, 'p'), 56), SQLITE_OK);
  ASSERT_EQ(OnFile().size(), 32u);
  char byte = 0;
  ASSERT_EQ(wal_->pMethods->xRead(wal_, &byte, 1, 100), SQLITE_OK);  // a read flushes
  EXPECT_EQ(byte, 'p');
  EXPECT_EQ(OnFile().size(), 4152u);
  // A rewrite of an earlier frame header (new checksums) is not an append: out at once.
  ASSERT_EQ(Write(FrameHeader(1, 0), 4152), SQLITE_OK);
  ASSERT_EQ(Write(FrameHeader(7, 0), 32), SQLITE_OK);
  const std::string file = OnFile();
  ASSERT_EQ(file.size(), 4176u);  // the append before it went out first
  EXPECT_EQ(file.substr(32, 24), FrameHeader(7, 0));
}

}  // namespace
}  // namespace quell::ledger::sqlite_internal
