#include "index/internal/table.h"

#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "absl/time/clock.h"
#include "core/status.h"

namespace quell::index::internal {
namespace {

// Keys are compared as words whose bytes are the key's bytes in memory order.
static_assert(std::endian::native == std::endian::little);

constexpr uint32_t kEmpty = 0;
constexpr uint32_t kTomb = 0xffffffffu;
constexpr size_t kRecordWords = 4;
constexpr size_t kMinSlots = 16;
constexpr size_t kMinArenaWords = 512;
// Regions this large ask for transparent huge pages: at 10M entries every lookup would be a
// TLB miss otherwise (and a costly one under virtualisation). Smaller regions stay on 4 KiB
// pages so a small index stays small.
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kHugePageRegionBytes = size_t{4} << 20;
// Compact a shard's arena when free space exceeds half of it (and this many words).
constexpr size_t kCompactMinFreeWords = 4096;

// Every word a reader can see while the writer changes it goes through these.
inline uint64_t Ld(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline void St(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

// Regions are reused while a late reader may still read them, so even the writer's bulk
// copies into a region that is not yet published are atomic stores.
inline void CopyWords(uint64_t* to, const uint64_t* from, size_t n) {
  for (size_t i = 0; i < n; ++i) St(to + i, from[i]);
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// The key hash: a multiply-fold mixer over 16-byte chunks with per-process random seeds (so
// that colliding keys cannot be prepared in advance). Inline: it is a good part of a lookup.
struct HashSeeds {
  uint64_t a, b, c;
};

const HashSeeds& Seeds() {
  static const HashSeeds seeds = [] {
    uint64_t v[3] = {0x243f6a8885a308d3, 0x13198a2e03707344, 0xa4093822299f31d0};
    uint64_t r[3];
    if (getrandom(r, sizeof(r), 0) == static_cast<ssize_t>(sizeof(r))) {
      for (int i = 0; i < 3; ++i) v[i] ^= r[i];
    } else {
      v[0] ^= static_cast<uint64_t>(absl::GetCurrentTimeNanos());
    }
    return HashSeeds{v[0], v[1], v[2]};
  }();
  return seeds;
}

inline uint64_t Mix(uint64_t a, uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

inline uint64_t HashKey(std::string_view key) {
  const HashSeeds& s = Seeds();
  const char* p = key.data();
  size_t n = key.size();
  uint64_t h = s.a ^ (n * 0x9e3779b97f4a7c15);
  while (n >= 16) {
    uint64_t x, y;
    std::memcpy(&x, p, 8);
    std::memcpy(&y, p + 8, 8);
    h = Mix(x ^ s.b ^ h, y ^ s.c);
    p += 16;
    n -= 16;
  }
  uint64_t tail[2] = {0, 0};
  for (size_t i = 0; i < n; ++i) {
    tail[i / 8] |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * (i % 8));
  }
  h = Mix(tail[0] ^ s.b ^ h, tail[1] ^ s.c);
  return Mix(h ^ s.a, 0xbf58476d1ce4e5b9);
}

inline size_t KeyWords(size_t len) { return (len + 7) / 8; }
inline size_t EntryWords(size_t key_len, size_t capacity) {
  return 1 + KeyWords(key_len) + kRecordWords * capacity;
}
// Arena word 0 holds the capacity; entries start on the next cache line, and an entry of up
// to one line never straddles two (a "user:" entry with one mitigation is exactly one line),
// so a hit costs one miss for the slot and one for the entry.
constexpr size_t kLineWords = 8;
constexpr size_t kArenaStart = kLineWords;
inline size_t AlignEntry(size_t used, size_t words) {
  if (words > kLineWords) return used;
  const size_t off = used % kLineWords;
  return off + words > kLineWords ? used + (kLineWords - off) : used;
}
inline uint64_t MakeHeader(size_t key_len, size_t count, size_t capacity) {
  return static_cast<uint64_t>(key_len) | (static_cast<uint64_t>(count) << 16) |
         (static_cast<uint64_t>(capacity) << 32);
}
inline size_t HeaderKeyLen(uint64_t h) { return h & 0xffff; }
inline size_t HeaderCount(uint64_t h) { return (h >> 16) & 0xffff; }
inline size_t HeaderCapacity(uint64_t h) { return (h >> 32) & 0xffff; }
inline uint64_t MakeSlot(uint32_t tag, uint32_t ref) {
  return (static_cast<uint64_t>(tag) << 32) | ref;
}

size_t RoundUpPow2(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

size_t PageRound(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// The key seen as zero-padded words, so both sides compare words. Whole words are loaded
// from the key itself (no copy: a copy loop became `rep movs`, slow for short keys); only
// the partial last word is assembled.
class KeyWordsBuf {
 public:
  explicit KeyWordsBuf(std::string_view key)
      : p_(key.data()), len_(key.size()), n_(KeyWords(key.size())), full_(key.size() / 8) {
    for (size_t i = 8 * full_; i < len_; ++i) {
      tail_ |= static_cast<uint64_t>(static_cast<unsigned char>(key[i])) << (8 * (i % 8));
    }
  }
  uint64_t word(size_t i) const {
    if (i >= full_) return tail_;
    uint64_t w;
    std::memcpy(&w, p_ + 8 * i, 8);
    return w;
  }
  size_t len() const { return len_; }
  size_t n() const { return n_; }

 private:
  const char* p_;
  size_t len_;
  size_t n_;
  size_t full_;
  uint64_t tail_ = 0;
};

}  // namespace

struct alignas(64) Table::Shard {
  // Read by readers. slots[0] holds the mask, slot i is slots[1 + i]; arena[0] holds the
  // arena's capacity in words and entries start at word 1 (so reference 0 means "empty").
  std::atomic<uint64_t> seq{0};
  std::atomic<uint64_t*> slots{nullptr};
  std::atomic<uint64_t*> arena{nullptr};

  // Writer only, on its own cache line so bookkeeping does not disturb readers.
  alignas(64) size_t slot_count = 0;
  size_t live = 0;
  size_t tombs = 0;
  size_t arena_cap = 0;
  size_t arena_used = kArenaStart;
  size_t free_words = 0;
  size_t free_entries = 0;
  std::vector<std::vector<uint32_t>> free_lists;  // by entry size in words
  // Every region this shard mapped. A replaced region is not unmapped while the table lives
  // (a late reader may still be reading it, and then fails validation): its pages go back to
  // the kernel and read as zeros, and it is kept for reuse by a later region of its kind
  // (reusing is safe for the same reason), so the address space stays bounded under churn.
  // Slot arrays and arenas are pooled apart: a late reader takes word 0 of a region as the
  // bound of the kind it expects, and each kind's layout keeps that bound inside the region.
  enum class Kind { kSlots, kArena };
  struct Region {
    void* p;
    size_t bytes;
    Kind kind;
    bool in_use;
  };
  std::vector<Region> regions;
  size_t accounted_bytes = 0;

  ~Shard() {
    for (const Region& r : regions) munmap(r.p, r.bytes);
  }

  uint64_t* Map(size_t words, Kind kind) {
    const size_t bytes = PageRound(words * 8);
    Region* best = nullptr;
    for (Region& r : regions) {
      if (!r.in_use && r.kind == kind && r.bytes >= bytes && (!best || r.bytes < best->bytes)) {
        best = &r;
      }
    }
    if (best != nullptr) {
      best->in_use = true;
      return static_cast<uint64_t*>(best->p);
    }
    regions.push_back(Region{MapAligned(bytes), bytes, kind, true});
    return static_cast<uint64_t*>(regions.back().p);
  }

  // Large regions start on a huge-page boundary and ask for transparent huge pages.
  static void* MapAligned(size_t bytes) {
    const bool huge = bytes >= kHugePageRegionBytes;
    const size_t slack = huge ? kHugePageBytes : 0;
    void* p =
        mmap(nullptr, bytes + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // Like std::bad_alloc: nothing sensible to do without memory.
    QUELL_CHECK(p != MAP_FAILED);
    if (!huge) return p;
    const auto start = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (start + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
    if (aligned > start) munmap(p, aligned - start);
    if (start + slack > aligned) {
      munmap(reinterpret_cast<void*>(aligned + bytes), start + slack - aligned);
    }
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(aligned);
  }

  // After this, the region reads as zeros (private anonymous memory) until reused.
  void Retire(const uint64_t* p) {
    if (p == nullptr) return;
    for (Region& r : regions) {
      if (r.p == p) {
        QUELL_CHECK(r.in_use);
        madvise(r.p, r.bytes, MADV_DONTNEED);
        r.in_use = false;
        return;
      }
    }
    QUELL_CHECK(false && "retiring an unknown region");
  }

  size_t RegionCount() const { return regions.size(); }

  void BeginWrite() {
    seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  void EndWrite() { seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_release); }

  uint64_t* slots_w() const { return slots.load(std::memory_order_relaxed); }
  uint64_t* arena_w() const { return arena.load(std::memory_order_relaxed); }
};

namespace {

// Position probing starts at for `hash` in a table of `mask + 1` slots.
inline size_t HomeSlot(uint64_t hash, int shard_bits, size_t mask) {
  return static_cast<size_t>(hash >> shard_bits) & mask;
}
inline uint32_t TagOf(uint64_t hash) { return static_cast<uint32_t>(hash >> 32); }

}  // namespace

Table::Table(int shard_bits)
    : shard_bits_(shard_bits), shards_(std::make_unique<Shard[]>(size_t{1} << shard_bits)) {
  QUELL_CHECK(shard_bits >= 0 && shard_bits <= 12);
}

Table::~Table() = default;

Table::Shard& Table::ShardFor(uint64_t hash) const {
  return shards_[hash & ((size_t{1} << shard_bits_) - 1)];
}

uint64_t Table::Prepare(std::string_view key) const {
  const uint64_t hash = HashKey(key);
  const Shard& s = ShardFor(hash);
  const uint64_t* slots = s.slots.load(std::memory_order_acquire);
  if (slots != nullptr) {
    __builtin_prefetch(slots + 1 + HomeSlot(hash, shard_bits_, Ld(slots)));
  }
  return hash;
}

void Table::Touch(uint64_t hash) const {
  const Shard& s = ShardFor(hash);
  const uint64_t* slots = s.slots.load(std::memory_order_acquire);
  const uint64_t* arena = s.arena.load(std::memory_order_acquire);
  if (slots == nullptr || arena == nullptr) return;
  const size_t mask = Ld(slots);
  const uint32_t tag = TagOf(hash);
  size_t pos = HomeSlot(hash, shard_bits_, mask);
  // A few slots only: this is a hint, the lookup itself probes as far as needed.
  for (int n = 0; n < 4; ++n, pos = (pos + 1) & mask) {
    const uint64_t w = Ld(slots + 1 + pos);
    const uint32_t ref = static_cast<uint32_t>(w);
    if (ref == kEmpty) return;
    if (ref != kTomb && static_cast<uint32_t>(w >> 32) == tag) {
      // A prefetch never faults, even if a racing write made `ref` stale.
      __builtin_prefetch(arena + ref);
      return;
    }
  }
}

size_t Table::Lookup(std::string_view key, int64_t now_us, int16_t cidr_prefix, Hits* out) const {
  return LookupHashed(key, HashKey(key), now_us, cidr_prefix, out);
}

size_t Table::LookupHashed(std::string_view key, uint64_t hash, int64_t now_us, int16_t cidr_prefix,
                           Hits* out) const {
  if (key.size() > kMaxKeyBytes) return 0;
  const KeyWordsBuf kb(key);
  const Shard& s = ShardFor(hash);
  const uint32_t tag = TagOf(hash);
  const size_t kw = kb.n();
  const size_t base = out->size();
  for (;;) {
    const uint64_t seq1 = s.seq.load(std::memory_order_acquire);
    if (seq1 & 1) {
      CpuRelax();
      continue;
    }
    const uint64_t* slots = s.slots.load(std::memory_order_acquire);
    const uint64_t* arena = s.arena.load(std::memory_order_acquire);
    if (slots != nullptr && arena != nullptr) {
      const size_t mask = Ld(slots);
      const size_t cap = Ld(arena);
      size_t pos = HomeSlot(hash, shard_bits_, mask);
      for (size_t n = 0; n <= mask; ++n, pos = (pos + 1) & mask) {
        const uint64_t w = Ld(slots + 1 + pos);
        const uint32_t ref = static_cast<uint32_t>(w);
        if (ref == kEmpty) break;
        if (ref == kTomb || static_cast<uint32_t>(w >> 32) != tag) continue;
        // Bounds are checked because a read racing the writer may see anything; such a
        // read fails validation below and is retried.
        if (ref + 1 + kw > cap) break;
        const uint64_t* e = arena + ref;
        const uint64_t header = Ld(e);
        if (HeaderKeyLen(header) != kb.len()) continue;
        bool equal = true;
        for (size_t i = 0; i < kw; ++i) {
          if (Ld(e + 1 + i) != kb.word(i)) {
            equal = false;
            break;
          }
        }
        if (!equal) continue;
        const size_t count = HeaderCount(header);
        if (ref + 1 + kw + count * kRecordWords > cap) break;
        const uint64_t* r = e + 1 + kw;
        for (size_t i = 0; i < count; ++i, r += kRecordWords) {
          const auto expires = static_cast<int64_t>(Ld(r + 2));
          if (expires <= now_us) continue;
          Hit& hit = out->emplace_back();
          const uint64_t id0 = Ld(r);
          const uint64_t id1 = Ld(r + 1);
          std::memcpy(hit.id.data(), &id0, 8);
          std::memcpy(hit.id.data() + 8, &id1, 8);
          hit.expires_us = expires;
          hit.action = static_cast<uint16_t>(Ld(r + 3));
          hit.cidr_prefix = cidr_prefix;
        }
        break;
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (s.seq.load(std::memory_order_relaxed) == seq1) return out->size() - base;
    out->resize(base);
  }
}

// ---- writer side -------------------------------------------------------------------------

namespace {

struct Probe {
  int64_t found = -1;   // slot holding the key
  int64_t insert = -1;  // first reusable slot on the probe path (tombstone or empty)
};

Probe FindSlot(const uint64_t* slots, const uint64_t* arena, size_t mask, int shard_bits,
               uint64_t hash, const KeyWordsBuf& kb) {
  Probe p;
  if (slots == nullptr) return p;
  const uint32_t tag = TagOf(hash);
  size_t pos = HomeSlot(hash, shard_bits, mask);
  for (size_t n = 0; n <= mask; ++n, pos = (pos + 1) & mask) {
    const uint64_t w = slots[1 + pos];
    const uint32_t ref = static_cast<uint32_t>(w);
    if (ref == kEmpty) {
      if (p.insert < 0) p.insert = static_cast<int64_t>(pos);
      return p;
    }
    if (ref == kTomb) {
      if (p.insert < 0) p.insert = static_cast<int64_t>(pos);
      continue;
    }
    if (static_cast<uint32_t>(w >> 32) != tag) continue;
    const uint64_t* e = arena + ref;
    if (HeaderKeyLen(e[0]) != kb.len()) continue;
    bool equal = true;
    for (size_t i = 0; i < kb.n() && equal; ++i) equal = e[1 + i] == kb.word(i);
    if (!equal) continue;
    p.found = static_cast<int64_t>(pos);
    return p;
  }
  return p;
}

}  // namespace

namespace {

// Writer-side helpers on one shard; `shard_bits` is the table's.
class ShardWriter {
 public:
  ShardWriter(Table::Shard& s, int shard_bits) : s_(s), shard_bits_(shard_bits) {}

  Probe Find(uint64_t hash, const KeyWordsBuf& kb) const {
    return FindSlot(s_.slots_w(), s_.arena_w(), s_.slot_count - 1, shard_bits_, hash, kb);
  }

  // Makes sure one more key fits under the load limit (tombstones count against it).
  void ReserveSlot() {
    if (s_.slot_count == 0 || (s_.live + s_.tombs + 1) * 4 > s_.slot_count * 3) {
      RebuildSlots(std::max(kMinSlots, RoundUpPow2((s_.live + 1) * 2)));
    }
  }

  // Sizes the slot array for `keys` more keys and the arena for `words` more words (as
  // Alloc lays entries out), so that adding them rebuilds and grows nothing.
  void ReserveBulk(size_t keys, size_t words) {
    const size_t slots = std::max(kMinSlots, RoundUpPow2((s_.live + keys + 1) * 2));
    if (slots > s_.slot_count) RebuildSlots(slots);
    if (s_.arena_used + words > s_.arena_cap) GrowArena(s_.arena_used + words);
#ifdef MADV_POPULATE_WRITE
    // The pages about to be written, faulted in by one call rather than one fault each
    // (at a million keys that is tens of thousands of faults). Only a hint: on a kernel
    // without it, the pages fault in as they are written.
    Populate(s_.slots_w(), (s_.slot_count + 1) * 8);
    Populate(s_.arena_w() + s_.arena_used, std::min(words, s_.arena_cap - s_.arena_used) * 8);
#endif
  }

  static void Populate(const void* p, size_t bytes) {
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto start = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
    const auto end = reinterpret_cast<uintptr_t>(p) + bytes;
    if (bytes > 0) madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE);
  }

  // An entry of `words` words, from a free list or the arena's end. May move the arena.
  uint32_t Alloc(size_t words) {
    if (words < s_.free_lists.size() && !s_.free_lists[words].empty()) {
      uint32_t ref = s_.free_lists[words].back();
      s_.free_lists[words].pop_back();
      s_.free_words -= words;
      --s_.free_entries;
      return ref;
    }
    const size_t start = AlignEntry(s_.arena_used, words);
    if (start + words > s_.arena_cap) GrowArena(start + words);
    s_.arena_used = start + words;
    return static_cast<uint32_t>(start);
  }

  void Free(uint32_t ref, size_t words) {
    if (s_.free_lists.size() <= words) s_.free_lists.resize(words + 1);
    s_.free_lists[words].push_back(ref);
    s_.free_words += words;
    ++s_.free_entries;
  }

  // Rebuilds the slot array with `count` slots (a power of two), dropping tombstones.
  void RebuildSlots(size_t count) {
    uint64_t* fresh = s_.Map(count + 1, Table::Shard::Kind::kSlots);
    St(fresh, count - 1);
    const uint64_t* old = s_.slots_w();
    const uint64_t* arena = s_.arena_w();
    for (size_t i = 0; old != nullptr && i < s_.slot_count; ++i) {
      const uint32_t ref = static_cast<uint32_t>(old[1 + i]);
      if (ref == kEmpty || ref == kTomb) continue;
      Place(fresh, count - 1, arena, ref, static_cast<uint32_t>(old[1 + i] >> 32));
    }
    s_.BeginWrite();
    s_.slots.store(fresh, std::memory_order_release);
    s_.EndWrite();
    s_.Retire(old);
    s_.slot_count = count;
    s_.tombs = 0;
  }

  // Moves every live entry to a fresh arena sized for them (entries shrink to their record
  // count) and rebuilds the slots; free lists are emptied.
  void Compact() {
    const uint64_t* old_slots = s_.slots_w();
    const uint64_t* old_arena = s_.arena_w();
    size_t needed = kArenaStart;
    for (size_t i = 0; i < s_.slot_count; ++i) {
      const uint32_t ref = static_cast<uint32_t>(old_slots[1 + i]);
      if (ref == kEmpty || ref == kTomb) continue;
      const uint64_t h = old_arena[ref];
      const size_t words = EntryWords(HeaderKeyLen(h), HeaderCount(h));
      needed = AlignEntry(needed, words) + words;
    }
    const size_t cap = std::max(kMinArenaWords, RoundUpPow2(needed + needed / 2));
    uint64_t* arena = s_.Map(cap, Table::Shard::Kind::kArena);
    St(arena, cap);
    const size_t count = std::max(kMinSlots, RoundUpPow2((s_.live + 1) * 2));
    uint64_t* slots = s_.Map(count + 1, Table::Shard::Kind::kSlots);
    St(slots, count - 1);
    size_t used = kArenaStart;
    for (size_t i = 0; i < s_.slot_count; ++i) {
      const uint64_t w = old_slots[1 + i];
      const uint32_t ref = static_cast<uint32_t>(w);
      if (ref == kEmpty || ref == kTomb) continue;
      const uint64_t* e = old_arena + ref;
      const size_t klen = HeaderKeyLen(e[0]);
      const size_t n = HeaderCount(e[0]);
      used = AlignEntry(used, EntryWords(klen, n));
      St(arena + used, MakeHeader(klen, n, n));
      CopyWords(arena + used + 1, e + 1, KeyWords(klen) + kRecordWords * n);
      Place(slots, count - 1, arena, static_cast<uint32_t>(used), static_cast<uint32_t>(w >> 32));
      used += EntryWords(klen, n);
    }
    s_.BeginWrite();
    s_.arena.store(arena, std::memory_order_release);
    s_.slots.store(slots, std::memory_order_release);
    s_.EndWrite();
    s_.Retire(old_arena);
    s_.Retire(old_slots);
    s_.arena_cap = cap;
    s_.arena_used = used;
    s_.slot_count = count;
    s_.tombs = 0;
    s_.free_lists.clear();
    s_.free_lists.shrink_to_fit();
    s_.free_words = 0;
    s_.free_entries = 0;
  }

  void MaybeCompact() {
    if (s_.free_words * 2 > s_.arena_used &&
        (s_.free_words > kCompactMinFreeWords || s_.live == 0)) {
      Compact();
    }
  }

  void MaybeShrinkSlots() {
    if (s_.slot_count > kMinSlots && s_.live * 8 < s_.slot_count) {
      RebuildSlots(std::max(kMinSlots, RoundUpPow2((s_.live + 1) * 2)));
    }
  }

  // Clears slot `pos` (already tombstoned or about to be): if the next slot is empty no probe
  // path runs through it, so it and the tombstones just before it can become empty.
  void ClearSlot(size_t pos) {
    uint64_t* slots = s_.slots_w();
    const size_t mask = s_.slot_count - 1;
    if (static_cast<uint32_t>(slots[1 + ((pos + 1) & mask)]) != kEmpty) {
      St(slots + 1 + pos, MakeSlot(0, kTomb));
      ++s_.tombs;
      return;
    }
    St(slots + 1 + pos, 0);
    size_t p = (pos + mask) & mask;
    while (static_cast<uint32_t>(slots[1 + p]) == kTomb) {
      St(slots + 1 + p, 0);
      --s_.tombs;
      p = (p + mask) & mask;
    }
  }

  size_t Accounted() const {
    return s_.slot_count * 8 + s_.arena_used * 8 + s_.free_entries * 4 +
           s_.free_lists.capacity() * sizeof(std::vector<uint32_t>);
  }

 private:
  // Inserts `ref` into a table not yet published (a late reader may still read a reused one).
  void Place(uint64_t* slots, size_t mask, const uint64_t* arena, uint32_t ref, uint32_t tag) {
    const uint64_t* e = arena + ref;
    const std::string_view key(reinterpret_cast<const char*>(e + 1), HeaderKeyLen(e[0]));
    size_t pos = HomeSlot(HashKey(key), shard_bits_, mask);
    while (static_cast<uint32_t>(slots[1 + pos]) != kEmpty) pos = (pos + 1) & mask;
    St(slots + 1 + pos, MakeSlot(tag, ref));
  }

  void GrowArena(size_t min_words) {
    size_t cap = std::max(kMinArenaWords, s_.arena_cap * 2);
    while (cap < min_words) cap *= 2;
    // References are 32 bits and 0xffffffff is the tombstone.
    QUELL_CHECK(cap < kTomb);
    uint64_t* fresh = s_.Map(cap, Table::Shard::Kind::kArena);
    const uint64_t* old = s_.arena_w();
    if (old != nullptr) CopyWords(fresh + 1, old + 1, s_.arena_used - 1);
    St(fresh, cap);
    s_.BeginWrite();
    s_.arena.store(fresh, std::memory_order_release);
    s_.EndWrite();
    s_.Retire(old);
    s_.arena_cap = cap;
  }

  Table::Shard& s_;
  int shard_bits_;
};

}  // namespace

uint64_t Table::Hash(std::string_view key) { return HashKey(key); }

size_t Table::NewKeyWords(size_t key_len) {
  // A one-line entry may leave the rest of its line empty (AlignEntry); a longer one is
  // not aligned, and the one-line entry after it may have to skip the rest of its line.
  const size_t w = EntryWords(key_len, 1);
  return w <= kLineWords ? kLineWords : w + kLineWords - 1;
}

void Table::Account(Shard& s, size_t now_bytes) {
  memory_bytes_.fetch_add(now_bytes - s.accounted_bytes, std::memory_order_relaxed);
  s.accounted_bytes = now_bytes;
}

void Table::ReserveShard(size_t shard, size_t keys, size_t words) {
  Shard& s = shards_[shard];
  ShardWriter w(s, shard_bits_);
  w.ReserveBulk(keys, words + kLineWords);
  Account(s, w.Accounted());
}

Table::UpsertResult Table::Upsert(std::string_view key, const Record& r, uint16_t* old_action) {
  return UpsertHashed(key, HashKey(key), r, old_action);
}

void Table::Publish(Deferred* deferred) {
  records_.fetch_add(static_cast<size_t>(deferred->records), std::memory_order_relaxed);
  keys_.fetch_add(static_cast<size_t>(deferred->keys), std::memory_order_relaxed);
  for (uint32_t k : deferred->shards) {
    Shard& s = shards_[k];
    Account(s, ShardWriter(s, shard_bits_).Accounted());
  }
  *deferred = Deferred();
}

Table::UpsertResult Table::UpsertHashed(std::string_view key, uint64_t hash, const Record& r,
                                        uint16_t* old_action, Deferred* deferred) {
  if (key.size() > kMaxKeyBytes) return UpsertResult::kRefused;
  const KeyWordsBuf kb(key);
  Shard& s = ShardFor(hash);
  ShardWriter w(s, shard_bits_);
  const size_t kw = kb.n();
  uint64_t rec[kRecordWords];
  std::memcpy(&rec[0], r.id.data(), 8);
  std::memcpy(&rec[1], r.id.data() + 8, 8);
  rec[2] = static_cast<uint64_t>(r.expires_us);
  rec[3] = r.action;

  UpsertResult result = UpsertResult::kAdded;
  Probe p = w.Find(hash, kb);
  if (p.found >= 0) {
    const uint32_t ref = static_cast<uint32_t>(s.slots_w()[1 + p.found]);
    uint64_t* e = s.arena_w() + ref;
    const size_t count = HeaderCount(e[0]);
    const size_t capacity = HeaderCapacity(e[0]);
    uint64_t* recs = e + 1 + kw;
    for (size_t i = 0; i < count; ++i) {
      uint64_t* q = recs + i * kRecordWords;
      if (q[0] != rec[0] || q[1] != rec[1]) continue;
      if (old_action != nullptr) *old_action = static_cast<uint16_t>(q[3]);
      if (q[2] == rec[2] && q[3] == rec[3]) return UpsertResult::kUnchanged;
      s.BeginWrite();
      St(q + 2, rec[2]);
      St(q + 3, rec[3]);
      s.EndWrite();
      return UpsertResult::kUpdated;
    }
    if (count >= kMaxRecords) return UpsertResult::kRefused;
    if (count < capacity) {
      // The spare record space is past `count`, so no validated read looks at it yet.
      for (size_t j = 0; j < kRecordWords; ++j) St(recs + count * kRecordWords + j, rec[j]);
      s.BeginWrite();
      St(e, MakeHeader(kb.len(), count + 1, capacity));
      s.EndWrite();
    } else {
      const size_t new_cap = std::min(kMaxRecords, capacity < 4 ? capacity + 1 : capacity * 2);
      const uint32_t nref = w.Alloc(EntryWords(kb.len(), new_cap));
      // Alloc may have moved the arena.
      uint64_t* arena = s.arena_w();
      const uint64_t* old = arena + ref;
      uint64_t* ne = arena + nref;
      St(ne, MakeHeader(kb.len(), count + 1, new_cap));
      for (size_t j = 0; j < kw + count * kRecordWords; ++j) St(ne + 1 + j, old[1 + j]);
      for (size_t j = 0; j < kRecordWords; ++j) {
        St(ne + 1 + kw + count * kRecordWords + j, rec[j]);
      }
      s.BeginWrite();
      St(s.slots_w() + 1 + p.found, MakeSlot(TagOf(hash), nref));
      s.EndWrite();
      w.Free(ref, EntryWords(kb.len(), capacity));
      w.MaybeCompact();
    }
  } else {
    const uint64_t* slots_before = s.slots_w();
    w.ReserveSlot();
    if (s.slots_w() != slots_before) p = w.Find(hash, kb);  // the slots were rebuilt
    QUELL_CHECK(p.found < 0 && p.insert >= 0);
    const uint32_t nref = w.Alloc(EntryWords(kb.len(), 1));
    uint64_t* ne = s.arena_w() + nref;
    St(ne, MakeHeader(kb.len(), 1, 1));
    for (size_t j = 0; j < kw; ++j) St(ne + 1 + j, kb.word(j));
    for (size_t j = 0; j < kRecordWords; ++j) St(ne + 1 + kw + j, rec[j]);
    uint64_t* slot = s.slots_w() + 1 + p.insert;
    const bool was_tomb = static_cast<uint32_t>(*slot) == kTomb;
    s.BeginWrite();
    St(slot, MakeSlot(TagOf(hash), nref));
    s.EndWrite();
    if (was_tomb) --s.tombs;
    ++s.live;
    if (deferred != nullptr) {
      ++deferred->keys;
    } else {
      keys_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (deferred != nullptr) {
    ++deferred->records;
    const auto k = static_cast<uint32_t>(ShardOf(hash));
    if (deferred->shards.empty() || deferred->shards.back() != k) deferred->shards.push_back(k);
    return result;
  }
  records_.fetch_add(1, std::memory_order_relaxed);
  Account(s, w.Accounted());
  return result;
}

void Table::ForEach(const std::function<void(std::string_view key, const Record& r)>& fn) const {
  for (size_t k = 0; k < (size_t{1} << shard_bits_); ++k) {
    const Shard& s = shards_[k];
    const uint64_t* slots = s.slots_w();
    const uint64_t* arena = s.arena_w();
    for (size_t i = 0; slots != nullptr && i < s.slot_count; ++i) {
      const uint32_t ref = static_cast<uint32_t>(slots[1 + i]);
      if (ref == kEmpty || ref == kTomb) continue;
      const uint64_t* e = arena + ref;
      const size_t klen = HeaderKeyLen(e[0]);
      const std::string_view key(reinterpret_cast<const char*>(e + 1), klen);
      const uint64_t* r = e + 1 + KeyWords(klen);
      for (size_t j = 0; j < HeaderCount(e[0]); ++j, r += kRecordWords) {
        Record rec;
        std::memcpy(rec.id.data(), &r[0], 8);
        std::memcpy(rec.id.data() + 8, &r[1], 8);
        rec.expires_us = static_cast<int64_t>(r[2]);
        rec.action = static_cast<uint16_t>(r[3]);
        fn(key, rec);
      }
    }
  }
}

bool Table::Remove(std::string_view key, const std::array<uint8_t, 16>& id, uint16_t* old_action) {
  if (key.size() > kMaxKeyBytes) return false;
  const KeyWordsBuf kb(key);
  const uint64_t hash = HashKey(key);
  Shard& s = ShardFor(hash);
  ShardWriter w(s, shard_bits_);
  const Probe p = w.Find(hash, kb);
  if (p.found < 0) return false;
  const size_t kw = kb.n();
  uint64_t id_words[2];
  std::memcpy(id_words, id.data(), 16);
  const uint32_t ref = static_cast<uint32_t>(s.slots_w()[1 + p.found]);
  uint64_t* e = s.arena_w() + ref;
  const size_t count = HeaderCount(e[0]);
  const size_t capacity = HeaderCapacity(e[0]);
  uint64_t* recs = e + 1 + kw;
  size_t i = 0;
  while (i < count &&
         (recs[i * kRecordWords] != id_words[0] || recs[i * kRecordWords + 1] != id_words[1])) {
    ++i;
  }
  if (i == count) return false;
  if (old_action != nullptr) *old_action = static_cast<uint16_t>(recs[i * kRecordWords + 3]);
  if (count == 1) {
    s.BeginWrite();
    w.ClearSlot(static_cast<size_t>(p.found));
    s.EndWrite();
    w.Free(ref, EntryWords(kb.len(), capacity));
    --s.live;
    keys_.fetch_sub(1, std::memory_order_relaxed);
    w.MaybeShrinkSlots();
    w.MaybeCompact();
  } else {
    s.BeginWrite();
    if (i != count - 1) {
      for (size_t j = 0; j < kRecordWords; ++j) {
        St(recs + i * kRecordWords + j, recs[(count - 1) * kRecordWords + j]);
      }
    }
    St(e, MakeHeader(kb.len(), count - 1, capacity));
    s.EndWrite();
  }
  records_.fetch_sub(1, std::memory_order_relaxed);
  Account(s, w.Accounted());
  return true;
}

void Table::CheckInvariantsForTest() const {
  size_t total_records = 0;
  size_t total_keys = 0;
  for (size_t k = 0; k < (size_t{1} << shard_bits_); ++k) {
    const Shard& s = shards_[k];
    const uint64_t* slots = s.slots_w();
    const uint64_t* arena = s.arena_w();
    QUELL_CHECK(s.seq.load() % 2 == 0);
    if (slots == nullptr) {
      QUELL_CHECK(s.live == 0);
      continue;
    }
    QUELL_CHECK(slots[0] + 1 == s.slot_count);
    QUELL_CHECK(arena == nullptr || arena[0] == s.arena_cap);
    size_t live = 0;
    size_t tombs = 0;
    std::vector<uint32_t> refs;
    for (size_t i = 0; i < s.slot_count; ++i) {
      const uint32_t ref = static_cast<uint32_t>(slots[1 + i]);
      if (ref == kEmpty) continue;
      if (ref == kTomb) {
        ++tombs;
        continue;
      }
      ++live;
      QUELL_CHECK(ref < s.arena_used);
      const uint64_t h = arena[ref];
      QUELL_CHECK(HeaderCount(h) >= 1 && HeaderCount(h) <= HeaderCapacity(h));
      QUELL_CHECK(ref + EntryWords(HeaderKeyLen(h), HeaderCapacity(h)) <= s.arena_used);
      total_records += HeaderCount(h);
      // The entry is found again from its own key.
      const std::string_view key(reinterpret_cast<const char*>(arena + ref + 1), HeaderKeyLen(h));
      const KeyWordsBuf kb(key);
      const Probe p = FindSlot(slots, arena, s.slot_count - 1, shard_bits_, HashKey(key), kb);
      QUELL_CHECK(p.found == static_cast<int64_t>(i));
      refs.push_back(ref);
    }
    QUELL_CHECK(live == s.live);
    QUELL_CHECK(tombs == s.tombs);
    QUELL_CHECK((s.live + s.tombs) * 4 <= s.slot_count * 3);
    size_t free_words = 0;
    for (size_t words = 0; words < s.free_lists.size(); ++words) {
      for (uint32_t ref : s.free_lists[words]) {
        free_words += words;
        QUELL_CHECK(std::find(refs.begin(), refs.end(), ref) == refs.end());
      }
    }
    QUELL_CHECK(free_words == s.free_words);
    // Replaced regions are reused, so their number stays logarithmic in the largest size.
    QUELL_CHECK(s.RegionCount() <= 96);
    total_keys += live;
  }
  QUELL_CHECK(total_records == records());
  QUELL_CHECK(total_keys == keys());
}

}  // namespace quell::index::internal
