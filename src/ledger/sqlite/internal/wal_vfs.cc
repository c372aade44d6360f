#include "ledger/sqlite/internal/wal_vfs.h"

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>

namespace quell::ledger::sqlite_internal {
namespace {

constexpr int kFrameHeader = 24;                // a WAL frame's header, before its page
constexpr size_t kMaxBuffer = size_t{8} << 20;  // written earlier past this
// The unix VFS writes at most 128 KiB - 1 per call (it masks the length): chunks of this.
constexpr size_t kChunk = size_t{64} << 10;
// Versions whose wal.c was read for this: walWriteOneFrame writes header, then page.
constexpr int kMinVersion = 3031000;
constexpr int kMaxVersion = 3046999;

sqlite3_vfs* g_default = nullptr;
sqlite3_vfs g_vfs;
sqlite3_io_methods g_wal_methods;
std::atomic<int64_t> g_commit_flushes{0};

// A WAL file: the default VFS's file (right after this struct) and the appends not yet
// written.
struct WalFile {
  sqlite3_file base;
  sqlite3_file* real;
  std::string* pending;  // bytes for offsets [start, start + size)
  sqlite3_int64 start;
  sqlite3_int64 next;     // the offset right after the last write
  bool commit_page_next;  // the last write was a commit frame's header
};

WalFile* W(sqlite3_file* f) { return reinterpret_cast<WalFile*>(f); }

// Writes what is pending. On failure what was pending is dropped, as a failed write
// would have left it: SQLite fails the transaction and rewrites those frames later.
int Flush(WalFile* f) {
  if (f->pending->empty()) return SQLITE_OK;
  int rc = SQLITE_OK;
  for (size_t done = 0; done < f->pending->size() && rc == SQLITE_OK; done += kChunk) {
    const size_t n = std::min(kChunk, f->pending->size() - done);
    rc = f->real->pMethods->xWrite(f->real, f->pending->data() + done, static_cast<int>(n),
                                   f->start + static_cast<sqlite3_int64>(done));
  }
  f->pending->clear();
  return rc;
}

int Close(sqlite3_file* pf) {
  WalFile* f = W(pf);
  const int rc = Flush(f);
  const int closed = f->real->pMethods->xClose(f->real);
  delete f->pending;
  f->pending = nullptr;
  return rc != SQLITE_OK ? rc : closed;
}

int Read(sqlite3_file* pf, void* out, int n, sqlite3_int64 off) {
  if (int rc = Flush(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->real->pMethods->xRead(W(pf)->real, out, n, off);
}

bool IsCommitFrameHeader(const void* data, int n) {
  if (n != kFrameHeader) return false;
  // Bytes 4..7: the database size in pages after the commit, zero unless it commits.
  const auto* h = static_cast<const unsigned char*>(data);
  return (h[4] | h[5] | h[6] | h[7]) != 0;
}

int Write(sqlite3_file* pf, const void* data, int n, sqlite3_int64 off) {
  WalFile* f = W(pf);
  std::string& pending = *f->pending;
  const bool append = off == f->next;  // right after the previous write
  f->next = off + n;
  const bool page_of_commit = append && f->commit_page_next;
  f->commit_page_next = IsCommitFrameHeader(data, n);
  if (!append) {
    // A WAL header after a restart, a frame header rewritten with a new checksum: out
    // at once, after what is pending.
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
    return f->real->pMethods->xWrite(f->real, data, n, off);
  }
  if (pending.size() + n > kMaxBuffer) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  }
  if (pending.empty()) f->start = off;
  pending.append(static_cast<const char*>(data), n);
  if (page_of_commit) {  // the commit's last frame: all of it goes out before it is published
    g_commit_flushes.fetch_add(1, std::memory_order_relaxed);
    return Flush(f);
  }
  return SQLITE_OK;
}

int Truncate(sqlite3_file* pf, sqlite3_int64 size) {
  if (int rc = Flush(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->real->pMethods->xTruncate(W(pf)->real, size);
}
int Sync(sqlite3_file* pf, int flags) {
  if (int rc = Flush(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->real->pMethods->xSync(W(pf)->real, flags);
}
int FileSize(sqlite3_file* pf, sqlite3_int64* size) {
  if (int rc = Flush(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->real->pMethods->xFileSize(W(pf)->real, size);
}
int FileControl(sqlite3_file* pf, int op, void* arg) {
  if (int rc = Flush(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->real->pMethods->xFileControl(W(pf)->real, op, arg);
}
int Lock(sqlite3_file* pf, int level) { return W(pf)->real->pMethods->xLock(W(pf)->real, level); }
int Unlock(sqlite3_file* pf, int level) {
  return W(pf)->real->pMethods->xUnlock(W(pf)->real, level);
}
int CheckReservedLock(sqlite3_file* pf, int* out) {
  return W(pf)->real->pMethods->xCheckReservedLock(W(pf)->real, out);
}
int SectorSize(sqlite3_file* pf) { return W(pf)->real->pMethods->xSectorSize(W(pf)->real); }
int DeviceCharacteristics(sqlite3_file* pf) {
  return W(pf)->real->pMethods->xDeviceCharacteristics(W(pf)->real);
}

// Every file but a WAL is the default VFS's own, opened in place (szOsFile covers both).
int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* pf, int flags, int* out_flags) {
  if ((flags & SQLITE_OPEN_WAL) == 0)
    return g_default->xOpen(g_default, name, pf, flags, out_flags);
  WalFile* f = W(pf);
  f->base.pMethods = nullptr;  // until open: SQLite closes only files with methods
  f->real = reinterpret_cast<sqlite3_file*>(f + 1);
  const int rc = g_default->xOpen(g_default, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (f->real->pMethods != nullptr) f->real->pMethods->xClose(f->real);
    return rc;
  }
  f->pending = new std::string();
  f->start = 0;
  f->next = -1;
  f->commit_page_next = false;
  f->base.pMethods = &g_wal_methods;
  return SQLITE_OK;
}

}  // namespace

const char* WalBufferingVfs() {
  static const char* name = []() -> const char* {
    const int version = sqlite3_libversion_number();
    if (version < kMinVersion || version > kMaxVersion) return nullptr;
    g_default = sqlite3_vfs_find(nullptr);
    if (g_default == nullptr) return nullptr;
    g_vfs = *g_default;
    g_vfs.zName = "quell-wal";
    g_vfs.szOsFile =
        std::max(g_default->szOsFile, static_cast<int>(sizeof(WalFile)) + g_default->szOsFile);
    g_vfs.xOpen = Open;
    g_vfs.pNext = nullptr;
    g_vfs.pAppData = g_default->pAppData;
    g_wal_methods = {};
    g_wal_methods.iVersion = 1;  // no shared memory or memory map: those are the database's
    g_wal_methods.xClose = Close;
    g_wal_methods.xRead = Read;
    g_wal_methods.xWrite = Write;
    g_wal_methods.xTruncate = Truncate;
    g_wal_methods.xSync = Sync;
    g_wal_methods.xFileSize = FileSize;
    g_wal_methods.xLock = Lock;
    g_wal_methods.xUnlock = Unlock;
    g_wal_methods.xCheckReservedLock = CheckReservedLock;
    g_wal_methods.xFileControl = FileControl;
    g_wal_methods.xSectorSize = SectorSize;
    g_wal_methods.xDeviceCharacteristics = DeviceCharacteristics;
    if (sqlite3_vfs_register(&g_vfs, /*makeDflt=*/0) != SQLITE_OK) return nullptr;
    return g_vfs.zName;
  }();
  return name;
}

int64_t WalCommitFlushesForTest() { return g_commit_flushes.load(std::memory_order_relaxed); }

}  // namespace quell::ledger::sqlite_internal
