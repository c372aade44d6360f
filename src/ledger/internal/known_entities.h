// The entities that have (or had) a mitigation, as hashes of their text, complete up to
// the chain head seq(): a store's Txn answers entity reads (FindLive, CountMitigations,
// EntityMitigations) for every other entity (a new one: most creates) without reading
// anything. Mitigation rows are never deleted, so the set only grows; a hash collision or
// a write that was rolled back only costs a read. A store loads it in one consistent read
// of its mitigations with the head seq, catches it up at each Begin from the kMitigation
// changes after seq() (a change's entity is its mitigation's: Append enforces it), and
// Adds every entity it writes a mitigation for before the write can be read back. Not
// loaded (or disabled past kMaxEntities): every entity may have mitigations. Shared by
// the SQLite and PostgreSQL stores.
//
// Thread-safety: none. Confined to the commit thread (whoever holds the Store's one Txn).
#ifndef QUELL_LEDGER_INTERNAL_KNOWN_ENTITIES_H_
#define QUELL_LEDGER_INTERNAL_KNOWN_ENTITIES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

#include "absl/container/flat_hash_set.h"

namespace quell::ledger::internal {

class KnownEntities {
 public:
  static constexpr size_t kMaxEntities = 4000000;  // ~16 B each; past it: disabled
  static constexpr int64_t kMaxCatchUp = 100000;   // more at one Begin: reload instead

  bool loaded() const { return seq_ >= 0; }
  bool disabled() const { return disabled_; }
  int64_t seq() const { return seq_; }
  void set_seq(int64_t seq) { seq_ = seq; }
  void Reset() {
    hashes_ = absl::flat_hash_set<uint64_t>();
    seq_ = -1;
  }
  void Add(std::string_view entity) {
    if (disabled_) return;
    hashes_.insert(Hash(entity));
    if (hashes_.size() > kMaxEntities) {
      disabled_ = true;
      Reset();
    }
  }
  //! False only if `entity` certainly has no mitigation (as of seq() and this Txn's writes).
  bool MayHave(std::string_view entity) const {
    return !loaded() || hashes_.contains(Hash(entity));
  }

 private:
  static uint64_t Hash(std::string_view entity) { return std::hash<std::string_view>()(entity); }
  absl::flat_hash_set<uint64_t> hashes_;
  int64_t seq_ = -1;  // -1: not loaded
  bool disabled_ = false;
};

}  // namespace quell::ledger::internal

#endif  // QUELL_LEDGER_INTERNAL_KNOWN_ENTITIES_H_
