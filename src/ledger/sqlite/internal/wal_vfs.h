// A VFS over SQLite's default one that writes each transaction's WAL frames with a few
// large writes instead of two small ones per frame.
//
// SQLite appends a frame as two writes: its 24-byte header, then its page, so a group
// commit of 3,000 pages made 6,000 pwrite calls, each straddling two kernel pages (a
// frame is 4,120 bytes). Here a WAL file keeps contiguous appends in a buffer (at most
// kMaxBuffer) and writes them in 64 KiB calls when
//   - the page of a commit frame has been appended (its header's "database size after
//     commit" field is non-zero: WAL file format, sqlite.org/fileformat2.html#walformat).
//     This is inside the commit, before the WAL index publishes the frames, and a failed
//     write fails the commit as a failed frame write would;
//   - anything else touches the file: a read, size, truncate, sync or file control (a
//     failure there is reported as SQLITE_IOERR_WRITE, which rolls the transaction back).
// Writes that are not appends (a WAL header after a restart, a page overwritten in place,
// a frame header rewritten with a new checksum) and the padding SQLite may append after a
// commit frame (synchronous=FULL without power-safe overwrite) go out at once. The
// database file is wrapped too, as a pass-through, for one thing: when its connection
// releases the WAL write lock, its transaction is over, and whatever is still buffered
// (frames a rolled-back transaction spilled) is dropped, never written over frames
// another writer may append next. A WAL whose database file was not opened here (an
// unwrappable one) is not buffered. So no connection reads a published frame that is
// still in a buffer, and an fsync of the WAL after a commit covers all of it.
//
// It relies on SQLite writing a frame's header and page in two calls and on shared-memory
// lock 0 being the WAL write lock, as in every version since WAL appeared, and on the
// connection releasing that lock after each transaction: in locking_mode=EXCLUSIVE
// (which Quell never sets) a rolled-back spill stays buffered until the next write, which
// is harmless while exclusive but not after leaving that mode. WalBufferingVfs() returns
// null (use the default) for a library outside the versions
// checked (kMinVersion..kMaxVersion in wal_vfs.cc).
//
// Thread-safety: registration is once per process and thread-safe; the pairing of files
// is under a mutex. A file's buffer is its connection's, and a connection is used by one
// thread at a time (db.h).
#ifndef QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_
#define QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_

#include <cstdint>

namespace quell::ledger::sqlite_internal {

//! Registers the VFS (once) and returns its name for sqlite3_open_v2, or null when the
//! linked SQLite is outside the checked versions.
const char* WalBufferingVfs();

//! Commit frames whose WAL writes went out together so far, in this process. For tests.
int64_t WalCommitFlushesForTest();
//! Bytes of rolled-back transactions dropped at the write lock so far. For tests.
int64_t WalDroppedBytesForTest();

}  // namespace quell::ledger::sqlite_internal

#endif  // QUELL_LEDGER_SQLITE_INTERNAL_WAL_VFS_H_
