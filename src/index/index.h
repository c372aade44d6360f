// The enforcement index: entity -> active mitigations, in memory, answering `check`
// without touching storage (ARCHITECTURE rule 3).
//
// It is a view of the ledger: only the applier (the ledger's commit thread, through
// Applier below) writes it, in seq order. Readers run on any thread and never wait for
// the writer for more than one short critical section.
//
// `ip:` lookups also return every active `cidr:` mitigation whose network covers the
// address (all of them, not only the longest prefix). Expiry: a mitigation whose
// expires_at has passed is never returned, even before its `expired` change is applied.
//
// Thread-safety: Lookup/size/seq/MemoryBytes/CountsByAction are thread-safe; Upsert/Remove/set_seq
// must be called from one thread at a time (the applier).
#ifndef QUELL_INDEX_INDEX_H_
#define QUELL_INDEX_INDEX_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/entity.h"
#include "core/mitigation.h"

namespace quell::index {

// One active mitigation that applies, as `check` reports it. Plain data, no heap.
struct Hit {
  std::array<uint8_t, 16> id;  // binary form of the mitigation id (see EncodeId/DecodeId)
  uint16_t action = 0;         // the index's own id for the action name: see ActionName()
  int64_t expires_us = 0;      // expires_at, microseconds since the epoch
  int16_t cidr_prefix = -1;    // -1: matched the entity itself; else the covering network's
                               // prefix length within its family (0..32 or 0..128; the
                               // network is the queried ip masked to it)
};
using Hits = absl::InlinedVector<Hit, 4>;

// Mitigation ids are "m_" + 26 Crockford base32 characters (upper case, as core::NewId
// writes them) = 128 bits, stored big-endian so byte order is id order. EncodeId fails
// (returns false) on any other shape, including a first character above '7' (more than
// 128 bits). DecodeId(EncodeId(x)) == x for every accepted x.
bool EncodeId(std::string_view id, std::array<uint8_t, 16>* out);
std::string DecodeId(const std::array<uint8_t, 16>& id);

class Index {
 public:
  Index();
  ~Index();
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  //! Appends to `out` the active mitigations that apply to `entity` at `now` (expires_at
  //! > now). No allocation for up to 4 hits. The caller filters by surface and verdict
  //! with the current action catalog (the catalog can change; the index keeps names).
  //! An `ip:` entity also gets every covering `cidr:` mitigation (cidr_prefix >= 0); a
  //! `cidr:` entity gets the mitigations on exactly that network (cidr_prefix -1).
  //! Lock-free: never waits for the writer beyond one in-flight insert/remove of the shard.
  void Lookup(const core::Entity& entity, absl::Time now, Hits* out) const;
  //! The same as calling Lookup(entities[i], now, &out[i]) for each i (`out` has
  //! entities.size() elements), but faster: it overlaps the memory accesses of up to 16
  //! lookups, which at millions of entries are cache misses. Thread-safe, lock-free.
  void LookupBatch(std::span<const core::Entity> entities, absl::Time now, Hits* out) const;
  //! The action name behind Hit::action. Action names are interned forever (a handful).
  std::string_view ActionName(uint16_t action) const;

  //! Applier only. Makes the index reflect `m`: present if m.state is active, absent
  //! otherwise (expired, revoked, pending...). Idempotent; a re-applied active mitigation
  //! takes the new expires_at and action. Errors (nothing changed): kInvalidArgument if
  //! m.id is not a mitigation id or m.entity is empty; kResourceExhausted past 65536
  //! distinct action names or 65535 mitigations on one entity.
  absl::Status Apply(const core::Mitigation& m);
  //! Applier only. The id Hit::action carries for `name` (interned as Apply interns it; an
  //! interned name shows in CountsByAction with 0 until something holds it).
  //! kResourceExhausted past 65536 distinct names.
  absl::StatusOr<uint16_t> InternAction(std::string_view name);

  // An active mitigation for BulkLoader: what Apply takes of one, pre-digested.
  struct ActiveEntry {
    std::array<uint8_t, 16> id{};  // EncodeId of the mitigation id
    std::string_view entity;       // canonical "type:id", as core::Entity::str() gives it
    uint16_t action = 0;           // from InternAction
    int64_t expires_us = 0;        // expires_at, microseconds since the epoch
  };

  // Loads many active mitigations as they arrive (a snapshot being read): Add hashes and
  // groups each as it comes, so that Finish is left with the inserts, shard by shard
  // (each shard sized once), which it may spread over threads. The index ends as Apply of
  // each entry in order (as an active mitigation) would leave it. Applier thread only, one
  // loader at a time per index; the index sees nothing of a load before Finish, and then
  // readers see the entries appear one by one, as with Apply.
  class BulkLoader {
   public:
    explicit BulkLoader(Index* index);
    ~BulkLoader();
    BulkLoader(const BulkLoader&) = delete;
    BulkLoader& operator=(const BulkLoader&) = delete;

    //! Buffers `e`, whose entity text must stay valid until Finish. kInvalidArgument
    //! (nothing buffered) for an empty entity, an action id InternAction did not give, or
    //! a cidr: entity that is not a network.
    absl::Status Add(const ActiveEntry& e);
    //! Entries buffered.
    size_t size() const;
    //! Applies what was buffered and empties the loader. `threads` (clamped to 1..16)
    //! threads insert into distinct shards at once, the calling one among them. size(),
    //! MemoryBytes() and CountsByAction() catch up shard by shard. Errors as Apply's;
    //! after one, some entries may have been applied and others not.
    absl::Status Finish(int threads = 1);

   private:
    struct State;
    std::unique_ptr<State> state_;
  };

  //! Applier only (or while no Apply runs): calls `fn` for every mitigation held with its
  //! entity (canonical text), action name and expiry, in no particular order.
  void ForEach(const std::function<void(const std::array<uint8_t, 16>& id, std::string_view entity,
                                        std::string_view action, int64_t expires_us)>& fn) const;

  //! Applier only. The seq of the last applied change.
  void set_seq(int64_t seq);
  int64_t seq() const;

  //! Active mitigations held.
  size_t size() const;
  //! Approximate heap bytes used by the index.
  size_t MemoryBytes() const;
  //! Mitigations held per action name, for every action name ever applied (0 when none
  //! is held now), in first-applied order. Thread-safe; each count is exact at some
  //! instant during the call, and they sum to size() when no write runs meanwhile.
  std::vector<std::pair<std::string, int64_t>> CountsByAction() const;

  //! Test hook: aborts if an internal invariant is broken. Applier thread only.
  void CheckInvariantsForTest() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace quell::index

#endif  // QUELL_INDEX_INDEX_H_
