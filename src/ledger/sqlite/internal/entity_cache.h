// What the SQLite store's write connection remembers of entities' mitigations, so that a
// decision on an entity seen recently reads no rows. Reading an entity's mitigations
// walks the changes' (entity, seq) index, fetches each change row and seeks each
// mitigation row (a quarter of the commit thread under detections, more as the file
// outgrows memory); a hit is a hash lookup and a decode.
//
// An entry holds, for one entity, every mitigation that is live or was created at or
// after the entry's `since` (it may hold more: readers filter), as committed and as
// written by the open Txn, in the order the store returns them (by latest change).
// The Txn keeps entries true: a mitigation it writes replaces its copy (Written), and
// when it undoes writes or rolls back it erases the entities it wrote (Erase). Changes
// appended by another process make the store Clear it.
//
// Copies are kept encoded (EncodeMitigation: one string per mitigation, its fields
// length-prefixed, times as microseconds): a policy decision's mitigation takes ~330
// bytes so, against ~750 for a core::Mitigation with its strings, and the same budget
// holds twice as many entities. A decode costs what the copy it replaces did. Copies are
// kept as a read of the store would return them (times to the microsecond, as stored).
//
// Bounded by memory: about `capacity_bytes` (each entry's heap and struct bytes), in two
// generations of half each. A hit in the old generation moves the entry to the new one;
// when the new one is full, the old one is dropped and the new one becomes old. That
// keeps the recently used half at least, at a hash lookup per access and no per-entry
// list. An entity with more than kMaxMitigations mitigations in view is not kept (it
// would pin its memory).
//
// Thread-safety: none. It belongs to the store's write connection, used by the one open
// Txn at a time. EncodeMitigation and DecodeMitigation are thread-safe.
#ifndef QUELL_LEDGER_SQLITE_INTERNAL_ENTITY_CACHE_H_
#define QUELL_LEDGER_SQLITE_INTERNAL_ENTITY_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "core/mitigation.h"

namespace quell::ledger::sqlite_internal {

class EntityCache {
 public:
  static constexpr size_t kMaxMitigations = 32;

  // capacity_bytes 0: keeps nothing.
  explicit EntityCache(size_t capacity_bytes) : half_(capacity_bytes / 2) {}

  // When the entity's entry covers `since` (its own since is not later): appends its
  // mitigations to `out` and returns true. Otherwise false, and `out` is as it was.
  bool Find(std::string_view entity, absl::Time since, std::vector<core::Mitigation>* out);
  // Remembers what a read of the entity's mitigations live or created since `since`
  // returned, replacing any entry.
  void Put(std::string_view entity, absl::Time since, const std::vector<core::Mitigation>& read);
  // `m` was written: its copy in its entity's entry (if any) is replaced and moves to
  // the end, or it is added.
  void Written(const core::Mitigation& m);
  void Erase(std::string_view entity);
  void Clear();

  size_t size() const { return young_.size() + old_.size(); }
  size_t bytes() const { return young_bytes_ + old_bytes_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  struct Entry {
    absl::Time since;
    std::vector<std::string> mitigations;  // EncodeMitigation's
    size_t bytes = 0;                      // estimate, with the key
  };
  using Map = absl::flat_hash_map<std::string, Entry>;

  // The entry of `entity` in the young generation (moved there from the old one), or null.
  Entry* Lookup(std::string_view entity);
  // Makes room for `bytes` more in the young generation.
  void Reserve(size_t bytes);
  // Drops the old generation; the young one becomes old.
  void TurnOver();
  // Sets e's estimate (e is young, `entity`'s) and the young generation's total, turning
  // the generations over if that passes half the budget. May move or drop e.
  void Account(std::string_view entity, Entry& e);

  const size_t half_;
  Map young_;
  Map old_;
  size_t young_bytes_ = 0;
  size_t old_bytes_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

// The cache's own compact copy of `m`, appended to `out` (times to the microsecond, as
// stored). Not a storage format: it lives only in this process's memory.
void EncodeMitigation(const core::Mitigation& m, std::string* out);
// What EncodeMitigation wrote; false (and `m` unspecified) for anything else.
bool DecodeMitigation(std::string_view in, core::Mitigation* m);

}  // namespace quell::ledger::sqlite_internal

#endif  // QUELL_LEDGER_SQLITE_INTERNAL_ENTITY_CACHE_H_
