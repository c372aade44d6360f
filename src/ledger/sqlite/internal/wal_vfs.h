// A VFS over SQLite's default one that writes each transaction's WAL frames with a few
// large writes instead of two small ones per frame.
//
// SQLite appends a frame as two writes: its 24-byte header, then its page, so a group
// commit of 3,000 pages made 6,000 pwrite calls, each straddling two kernel pages (a
// frame is 4,120 bytes). Here a WAL file keeps contiguous appends in a buffer (at most
// kMaxBuffer) and writes them in 64 KiB calls when
//   - the page of a commit frame has been appended (its header's "database size after
//     commit" field is non-zero: WAL file format, sqlite.org/fileformat2.html#walformat);
//     this is inside the commit, before the WAL index publishes the frames, and a failed
//     write fails the commit, as a failed frame write would;
//   - anything else touches the file: a read, a write elsewhere, sync, size, truncate,
//     file control, close.
// So another connection never reads a published frame that is still in a buffer, and a
// crash loses only what was not committed yet (the fsync comes after, as before).
// Database files, journals and everything else pass straight through.
//
// It relies on SQLite writing a frame's header and page in two calls, which is how every
// version since WAL appeared does it; WalBufferingVfs() returns null (use the default)
// for a library outside the versions checked (kMinVersion..kMaxVersion).
//
// Thread-safety: registration is once per process and thread-safe. A file's buffer is
// its connection's, and a connection is used by one thread at a time (db.h).
#ifndef QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_
#define QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_

#include <cstdint>

namespace quell::ledger::sqlite_internal {

//! Registers the VFS (once) and returns its name for sqlite3_open_v2, or null when the
//! linked SQLite is outside the checked versions.
const char* WalBufferingVfs();

//! Commit frames whose WAL writes went out together so far, in this process. For tests.
int64_t WalCommitFlushesForTest();

}  // namespace quell::ledger::sqlite_internal

#endif  // QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_
