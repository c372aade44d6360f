// The index's storage engine: a hash table from a byte key to a small list of mitigation
// records, sharded by hash, read without locks.
//
// Each shard is an open-addressing table (linear probing) of 64-bit slots -- a 32-bit hash
// tag and a 32-bit reference -- over an arena of 64-bit words that holds the entries:
//
//   header word: key length (16 bits) | record count (16) | record capacity (16)
//   key words:   the key bytes, zero-padded to whole words
//   records:     4 words each: id (2 words), expires_us, action
//
// Concurrency is a per-shard seqlock. The single writer makes every change that readers can
// reach inside a short write section (one insert, remove or in-place update; or the swap of a
// rebuilt slot array / arena). Readers never block: they read optimistically and retry if
// the shard's sequence moved. Every word that a reader may see while the writer changes it is
// accessed with relaxed atomics, so the scheme is data-race free (and clean under TSan).
// Replaced memory (an old slot array or arena) is never unmapped while the table lives: its
// pages are returned to the kernel (MADV_DONTNEED) and read back as zeros by a late reader,
// whose validation then fails. Readers bound-check every reference, so even a torn read is
// memory-safe.
//
// Space is reused: freed entries go to per-size free lists; tombstoned slots are dropped when
// the slot array is rebuilt; a shard whose arena is mostly free space is compacted.
//
// Thread-safety: Lookup and the counters are thread-safe; Upsert/Remove must be called from one
// thread at a time. Not copyable. Owns all of its memory.
#ifndef QUELL_INDEX_INTERNAL_TABLE_H_
#define QUELL_INDEX_INTERNAL_TABLE_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "index/index.h"

namespace quell::index::internal {

struct Record {
  std::array<uint8_t, 16> id{};
  int64_t expires_us = 0;
  uint16_t action = 0;
};

class Table {
 public:
  // Keys longer than this are refused by Upsert (entities are at most 289 bytes).
  static constexpr size_t kMaxKeyBytes = 4096;
  // Records one key can hold.
  static constexpr size_t kMaxRecords = 0xffff;

  // 2^shard_bits shards.
  explicit Table(int shard_bits = 5);
  ~Table();
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  enum class UpsertResult { kAdded, kUpdated, kUnchanged, kRefused };
  //! Writer only. Adds `r` under `key`, or updates the record with the same id. When
  //! `old_action` is given and the record existed (kUpdated, kUnchanged), it receives the
  //! record's action before the update.
  UpsertResult Upsert(std::string_view key, const Record& r, uint16_t* old_action = nullptr);
  // What upserts made with a `deferred` argument changed in records(), keys() and
  // MemoryBytes() but have not added yet: Publish adds it. (The counters are atomics that
  // every upsert would otherwise update with a locked instruction each, which waits for
  // the upsert's stores to reach the cache: in a bulk load, most of an insert's time.)
  struct Deferred {
    int64_t records = 0;
    int64_t keys = 0;
    std::vector<uint32_t> shards;  // whose memory accounting is behind
  };
  //! Upsert with `hash` = Hash(key) computed before; with `deferred`, the table's counters
  //! are left to Publish(deferred).
  UpsertResult UpsertHashed(std::string_view key, uint64_t hash, const Record& r,
                            uint16_t* old_action = nullptr, Deferred* deferred = nullptr);
  //! Writer only (the thread that made the deferred upserts). Adds what `deferred` holds
  //! to the counters and empties it.
  void Publish(Deferred* deferred);

  // For loading many keys shard by shard:
  //! The hash Upsert takes of `key` (the same for every table of this process).
  static uint64_t Hash(std::string_view key);
  //! Shards, and the shard of a hash.
  size_t shard_count() const { return size_t{1} << shard_bits_; }
  size_t ShardOf(uint64_t hash) const { return hash & (shard_count() - 1); }
  //! An upper bound of the arena words a new key of `key_len` bytes with one record takes.
  static size_t NewKeyWords(size_t key_len);
  //! Writer only. Sizes shard `shard` so that adding `keys` new keys of one record each,
  //! taking at most `words` arena words in all (sum of NewKeyWords), rebuilds no slot
  //! array and grows no arena. Upserts on distinct shards touch nothing in common but
  //! the table's counters, which are atomic: the writer may run the upserts of a bulk
  //! load for different shards on different threads at once (never two on one shard).
  void ReserveShard(size_t shard, size_t keys, size_t words);
  //! Writer only. Removes the record `id` under `key`; false if it was not there. When
  //! `old_action` is given and a record was removed, it receives that record's action.
  bool Remove(std::string_view key, const std::array<uint8_t, 16>& id,
              uint16_t* old_action = nullptr);

  //! Writer only (or with the writer stopped): calls `fn` for every record held with its
  //! key, shard by shard, in no particular order.
  void ForEach(const std::function<void(std::string_view key, const Record& r)>& fn) const;

  //! Appends to `out` the records under `key` with expires_us > now_us, each as a Hit with
  //! `cidr_prefix`. Returns how many were appended. Thread-safe, lock-free.
  size_t Lookup(std::string_view key, int64_t now_us, int16_t cidr_prefix, Hits* out) const;

  //! Prefetch hints for a coming Lookup(key): Prepare pulls the key's home slots toward the
  //! cache and returns the hash; Touch (once those have arrived) pulls the first entry whose
  //! tag matches. Thread-safe; they read nothing that affects results.
  uint64_t Prepare(std::string_view key) const;
  void Touch(uint64_t hash) const;
  //! Lookup with the hash Prepare returned.
  size_t LookupHashed(std::string_view key, uint64_t hash, int64_t now_us, int16_t cidr_prefix,
                      Hits* out) const;

  //! Records held (thread-safe, relaxed).
  size_t records() const { return records_.load(std::memory_order_relaxed); }
  //! Keys held (thread-safe, relaxed).
  size_t keys() const { return keys_.load(std::memory_order_relaxed); }
  //! Bytes of slot arrays and arenas in use or reserved (touched pages), plus free lists.
  size_t MemoryBytes() const { return memory_bytes_.load(std::memory_order_relaxed); }

  //! Test hook: checks the writer-side invariants of every shard (slot counts, free lists);
  //! aborts on a broken one. Writer thread only.
  void CheckInvariantsForTest() const;

  // Implementation detail (defined in table.cc), public only for its helpers there.
  struct Shard;

 private:
  Shard& ShardFor(uint64_t hash) const;
  // Brings MemoryBytes() in line with shard `s` now taking `now_bytes`.
  void Account(Shard& s, size_t now_bytes);

  int shard_bits_;
  std::unique_ptr<Shard[]> shards_;
  std::atomic<size_t> records_{0};
  std::atomic<size_t> keys_{0};
  std::atomic<size_t> memory_bytes_{0};
};

}  // namespace quell::index::internal

#endif  // QUELL_INDEX_INTERNAL_TABLE_H_
