#include "ledger/sqlite/internal/wal_vfs.h"

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <new>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace quell::ledger::sqlite_internal {
namespace {

constexpr int kFrameHeader = 24;                // a WAL frame's header, before its page
constexpr size_t kMaxBuffer = size_t{8} << 20;  // written earlier past this
// The unix VFS writes at most 128 KiB - 1 per call (it masks the length): chunks of this.
constexpr size_t kChunk = size_t{64} << 10;
// Versions whose wal.c was read for this: walWriteOneFrame writes header, then page;
// WAL_WRITE_LOCK is shared-memory lock 0.
constexpr int kMinVersion = 3031000;
constexpr int kMaxVersion = 3046999;
constexpr int kWalWriteLock = 0;

sqlite3_vfs* g_default = nullptr;
sqlite3_vfs g_vfs;
sqlite3_io_methods g_db_methods;
sqlite3_io_methods g_wal_methods;
std::atomic<int64_t> g_commit_flushes{0};
std::atomic<int64_t> g_dropped_bytes{0};

struct WalFile;

// What both kinds of wrapped file start with: SQLite's handle, then the default VFS's
// file, which lives right after the wrapper.
struct Wrapped {
  sqlite3_file base;
  sqlite3_file* real;
};

// A database file: the default VFS's (right after this struct), and its connection's WAL
// while that is open, found through the database name pointer the two share.
struct DbFile {
  Wrapped w;
  sqlite3_filename name;
  WalFile* wal;
};

// A WAL file: the default VFS's (right after this struct) and the appends not yet
// written. Buffers only when paired with its database file (db), whose write-lock
// release ends the transaction.
struct WalFile {
  Wrapped w;
  DbFile* db;
  std::string* pending;  // bytes for offsets [start, start + size)
  sqlite3_int64 start;
  sqlite3_int64 next;     // the offset right after the last write
  bool commit_page_next;  // the last write was a commit frame's header
  bool after_commit;      // a commit frame is out: what follows it (padding) goes out too
};

// Database files by their name pointer, so that a WAL finds its connection's.
std::mutex g_mu;
absl::flat_hash_map<const char*, DbFile*>& Databases() {
  static auto* m = new absl::flat_hash_map<const char*, DbFile*>();
  return *m;
}

DbFile* D(sqlite3_file* f) { return reinterpret_cast<DbFile*>(f); }
WalFile* W(sqlite3_file* f) { return reinterpret_cast<WalFile*>(f); }

// Writes what is pending. On failure what was pending is dropped: inside xWrite the error
// fails the frames' write and SQLite rolls back or rewrites them; elsewhere callers
// report SQLITE_IOERR_WRITE, which makes SQLite roll the whole transaction back.
int Flush(WalFile* f) {
  if (f->pending == nullptr || f->pending->empty()) return SQLITE_OK;
  int rc = SQLITE_OK;
  for (size_t done = 0; done < f->pending->size() && rc == SQLITE_OK; done += kChunk) {
    const size_t n = std::min(kChunk, f->pending->size() - done);
    rc = f->w.real->pMethods->xWrite(f->w.real, f->pending->data() + done, static_cast<int>(n),
                                     f->start + static_cast<sqlite3_int64>(done));
  }
  f->pending->clear();
  return rc;
}
// Flush for calls other than xWrite.
int FlushOrFail(WalFile* f) { return Flush(f) == SQLITE_OK ? SQLITE_OK : SQLITE_IOERR_WRITE; }

bool IsCommitFrameHeader(const void* data, int n) {
  if (n != kFrameHeader) return false;
  // Bytes 4..7: the database size in pages after the commit, zero unless it commits.
  const auto* h = static_cast<const unsigned char*>(data);
  return (h[4] | h[5] | h[6] | h[7]) != 0;
}

int WalWrite(sqlite3_file* pf, const void* data, int n, sqlite3_int64 off) {
  WalFile* f = W(pf);
  const bool append = off == f->next;  // right after the previous write
  const bool page_of_commit = append && f->commit_page_next;
  f->next = off + n;
  f->commit_page_next = IsCommitFrameHeader(data, n);
  // after_commit lasts until the write lock's release: in a transaction, only padding
  // (copies of the commit frame, a page possibly split around a sync) follows a commit.
  if (f->pending == nullptr || !append || f->after_commit) {
    // Unpaired; or a WAL header after a restart, a page overwritten in place, a frame
    // header rewritten with a new checksum; or padding after a commit: out at once,
    // after what is pending.
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
    return f->w.real->pMethods->xWrite(f->w.real, data, n, off);
  }
  std::string& pending = *f->pending;
  if (pending.size() + n > kMaxBuffer) {
    if (int rc = Flush(f); rc != SQLITE_OK) return rc;
  }
  if (pending.empty()) f->start = off;
  try {
    pending.append(static_cast<const char*>(data), n);
  } catch (const std::bad_alloc&) {
    f->next = -1;  // nothing after this can be an append
    return SQLITE_IOERR_NOMEM;
  }
  if (page_of_commit) {  // the commit's frames are all here: out before they are published
    f->after_commit = true;
    g_commit_flushes.fetch_add(1, std::memory_order_relaxed);
    return Flush(f);
  }
  return SQLITE_OK;
}

int WalClose(sqlite3_file* pf) {
  WalFile* f = W(pf);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (f->db != nullptr) f->db->wal = nullptr;
  }
  // Whatever is pending belongs to no commit (commits are written, and the write lock's
  // release drops the rest): nothing to write.
  delete f->pending;
  f->pending = nullptr;
  return f->w.real->pMethods->xClose(f->w.real);
}
int WalRead(sqlite3_file* pf, void* out, int n, sqlite3_int64 off) {
  if (int rc = FlushOrFail(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->w.real->pMethods->xRead(W(pf)->w.real, out, n, off);
}
int WalTruncate(sqlite3_file* pf, sqlite3_int64 size) {
  if (int rc = FlushOrFail(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->w.real->pMethods->xTruncate(W(pf)->w.real, size);
}
int WalSync(sqlite3_file* pf, int flags) {
  if (int rc = FlushOrFail(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->w.real->pMethods->xSync(W(pf)->w.real, flags);
}
int WalFileSize(sqlite3_file* pf, sqlite3_int64* size) {
  if (int rc = FlushOrFail(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->w.real->pMethods->xFileSize(W(pf)->w.real, size);
}
int WalFileControl(sqlite3_file* pf, int op, void* arg) {
  if (int rc = FlushOrFail(W(pf)); rc != SQLITE_OK) return rc;
  return W(pf)->w.real->pMethods->xFileControl(W(pf)->w.real, op, arg);
}

// The methods both kinds of file forward as they are.
sqlite3_file* R(sqlite3_file* f) { return reinterpret_cast<Wrapped*>(f)->real; }
int Lock(sqlite3_file* pf, int level) { return R(pf)->pMethods->xLock(R(pf), level); }
int Unlock(sqlite3_file* pf, int level) { return R(pf)->pMethods->xUnlock(R(pf), level); }
int CheckReservedLock(sqlite3_file* pf, int* out) {
  return R(pf)->pMethods->xCheckReservedLock(R(pf), out);
}
int SectorSize(sqlite3_file* pf) { return R(pf)->pMethods->xSectorSize(R(pf)); }
int DeviceCharacteristics(sqlite3_file* pf) {
  return R(pf)->pMethods->xDeviceCharacteristics(R(pf));
}

int DbClose(sqlite3_file* pf) {
  DbFile* d = D(pf);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    Databases().erase(d->name);
    if (d->wal != nullptr) {  // SQLite closes the WAL first; a WAL left over buffers no more
      d->wal->db = nullptr;
      delete d->wal->pending;
      d->wal->pending = nullptr;
    }
  }
  return d->w.real->pMethods->xClose(d->w.real);
}
int DbRead(sqlite3_file* pf, void* out, int n, sqlite3_int64 off) {
  return R(pf)->pMethods->xRead(R(pf), out, n, off);
}
int DbWrite(sqlite3_file* pf, const void* data, int n, sqlite3_int64 off) {
  return R(pf)->pMethods->xWrite(R(pf), data, n, off);
}
int DbTruncate(sqlite3_file* pf, sqlite3_int64 size) {
  return R(pf)->pMethods->xTruncate(R(pf), size);
}
int DbSync(sqlite3_file* pf, int flags) { return R(pf)->pMethods->xSync(R(pf), flags); }
int DbFileSize(sqlite3_file* pf, sqlite3_int64* size) {
  return R(pf)->pMethods->xFileSize(R(pf), size);
}
int DbFileControl(sqlite3_file* pf, int op, void* arg) {
  return R(pf)->pMethods->xFileControl(R(pf), op, arg);
}
int DbShmMap(sqlite3_file* pf, int page, int size, int extend, void volatile** out) {
  return R(pf)->pMethods->xShmMap(R(pf), page, size, extend, out);
}
// Releasing the WAL write lock ends the connection's write transaction: a commit has
// written its frames already, so what is pending is a rolled-back transaction's spilled
// frames, which must not reach the file once another writer may append. Taking it starts
// one: nothing from before counts.
int DbShmLock(sqlite3_file* pf, int offset, int n, int flags) {
  DbFile* d = D(pf);
  if (d->wal != nullptr && offset == kWalWriteLock && n == 1 &&
      (flags & SQLITE_SHM_EXCLUSIVE) != 0) {
    WalFile* f = d->wal;
    if (f->pending != nullptr) {
      g_dropped_bytes.fetch_add(static_cast<int64_t>(f->pending->size()),
                                std::memory_order_relaxed);
      f->pending->clear();
    }
    f->commit_page_next = false;
    f->after_commit = false;
  }
  return d->w.real->pMethods->xShmLock(d->w.real, offset, n, flags);
}
void DbShmBarrier(sqlite3_file* pf) { R(pf)->pMethods->xShmBarrier(R(pf)); }
int DbShmUnmap(sqlite3_file* pf, int del) { return R(pf)->pMethods->xShmUnmap(R(pf), del); }
int DbFetch(sqlite3_file* pf, sqlite3_int64 off, int amt, void** out) {
  return R(pf)->pMethods->xFetch(R(pf), off, amt, out);
}
int DbUnfetch(sqlite3_file* pf, sqlite3_int64 off, void* p) {
  return R(pf)->pMethods->xUnfetch(R(pf), off, p);
}

int OpenDb(sqlite3_filename name, sqlite3_file* pf, int flags, int* out_flags) {
  DbFile* d = D(pf);
  d->w.base.pMethods = nullptr;  // until open: SQLite closes only files with methods
  d->w.real = reinterpret_cast<sqlite3_file*>(d + 1);
  d->name = name;
  d->wal = nullptr;
  int rc = g_default->xOpen(g_default, name, d->w.real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (d->w.real->pMethods != nullptr) d->w.real->pMethods->xClose(d->w.real);
    return rc;
  }
  if (d->w.real->pMethods->iVersion < 3) {
    // Not wrappable as version 3 (not the unix VFS's): the default VFS's own file, in
    // place; its WAL (if any) finds no database and is not buffered.
    d->w.real->pMethods->xClose(d->w.real);
    return g_default->xOpen(g_default, name, pf, flags, out_flags);
  }
  {
    std::lock_guard<std::mutex> lock(g_mu);
    Databases()[name] = d;
  }
  d->w.base.pMethods = &g_db_methods;
  return SQLITE_OK;
}

int OpenWal(sqlite3_filename name, sqlite3_file* pf, int flags, int* out_flags) {
  WalFile* f = W(pf);
  f->w.base.pMethods = nullptr;
  f->w.real = reinterpret_cast<sqlite3_file*>(f + 1);
  const int rc = g_default->xOpen(g_default, name, f->w.real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (f->w.real->pMethods != nullptr) f->w.real->pMethods->xClose(f->w.real);
    return rc;
  }
  f->db = nullptr;
  f->pending = nullptr;
  f->start = 0;
  f->next = -1;
  f->commit_page_next = false;
  f->after_commit = false;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = Databases().find(sqlite3_filename_database(name));
    if (it != Databases().end() && it->second->wal == nullptr) {
      f->db = it->second;
      f->db->wal = f;
      f->pending = new (std::nothrow) std::string();
    }
  }
  f->w.base.pMethods = &g_wal_methods;
  return SQLITE_OK;
}

// Database and WAL files are wrapped; the rest are the default VFS's own, in place.
int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* pf, int flags, int* out_flags) {
  if ((flags & SQLITE_OPEN_MAIN_DB) != 0) return OpenDb(name, pf, flags, out_flags);
  if ((flags & SQLITE_OPEN_WAL) != 0) return OpenWal(name, pf, flags, out_flags);
  return g_default->xOpen(g_default, name, pf, flags, out_flags);
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
        static_cast<int>(std::max(sizeof(DbFile), sizeof(WalFile))) + g_default->szOsFile;
    g_vfs.xOpen = Open;
    g_vfs.pNext = nullptr;

    g_db_methods = {};
    g_db_methods.iVersion = 3;
    g_db_methods.xClose = DbClose;
    g_db_methods.xRead = DbRead;
    g_db_methods.xWrite = DbWrite;
    g_db_methods.xTruncate = DbTruncate;
    g_db_methods.xSync = DbSync;
    g_db_methods.xFileSize = DbFileSize;
    g_db_methods.xLock = Lock;
    g_db_methods.xUnlock = Unlock;
    g_db_methods.xCheckReservedLock = CheckReservedLock;
    g_db_methods.xFileControl = DbFileControl;
    g_db_methods.xSectorSize = SectorSize;
    g_db_methods.xDeviceCharacteristics = DeviceCharacteristics;
    g_db_methods.xShmMap = DbShmMap;
    g_db_methods.xShmLock = DbShmLock;
    g_db_methods.xShmBarrier = DbShmBarrier;
    g_db_methods.xShmUnmap = DbShmUnmap;
    g_db_methods.xFetch = DbFetch;
    g_db_methods.xUnfetch = DbUnfetch;

    g_wal_methods = {};
    g_wal_methods.iVersion = 1;  // no shared memory or memory map: those are the database's
    g_wal_methods.xClose = WalClose;
    g_wal_methods.xRead = WalRead;
    g_wal_methods.xWrite = WalWrite;
    g_wal_methods.xTruncate = WalTruncate;
    g_wal_methods.xSync = WalSync;
    g_wal_methods.xFileSize = WalFileSize;
    g_wal_methods.xLock = Lock;
    g_wal_methods.xUnlock = Unlock;
    g_wal_methods.xCheckReservedLock = CheckReservedLock;
    g_wal_methods.xFileControl = WalFileControl;
    g_wal_methods.xSectorSize = SectorSize;
    g_wal_methods.xDeviceCharacteristics = DeviceCharacteristics;
    if (sqlite3_vfs_register(&g_vfs, /*makeDflt=*/0) != SQLITE_OK) return nullptr;
    return g_vfs.zName;
  }();
  return name;
}

int64_t WalCommitFlushesForTest() { return g_commit_flushes.load(std::memory_order_relaxed); }
int64_t WalDroppedBytesForTest() { return g_dropped_bytes.load(std::memory_order_relaxed); }

}  // namespace quell::ledger::sqlite_internal
