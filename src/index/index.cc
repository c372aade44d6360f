#include "index/index.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "index/internal/table.h"

namespace quell::index {
namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
constexpr size_t kIdChars = 26;

constexpr std::array<int8_t, 256> MakeCrockfordValues() {
  std::array<int8_t, 256> v{};
  for (auto& x : v) x = -1;
  for (int i = 0; i < 32; ++i)
    v[static_cast<unsigned char>(kCrockford[i])] = static_cast<int8_t>(i);
  return v;
}
constexpr std::array<int8_t, 256> kCrockfordValues = MakeCrockfordValues();

int CrockfordValue(char c) { return kCrockfordValues[static_cast<unsigned char>(c)]; }

// Key of a network in the network table: family (4 or 6), prefix length, masked address
// bytes of the family. Fixed layout, so a lookup builds it without allocating.
struct NetworkKey {
  char bytes[18];
  size_t len;
  std::string_view view() const { return std::string_view(bytes, len); }
};

NetworkKey MakeNetworkKey(const core::IpAddress& masked, int prefix) {
  NetworkKey k;
  k.bytes[0] = masked.v4 ? 4 : 6;
  k.bytes[1] = static_cast<char>(prefix);
  if (masked.v4) {
    std::memcpy(k.bytes + 2, &masked.bytes[12], 4);
    k.len = 6;
  } else {
    std::memcpy(k.bytes + 2, masked.bytes.data(), 16);
    k.len = 18;
  }
  return k;
}

int64_t ToMicros(absl::Time t) {
  // Saturates for the infinite past and future.
  return absl::ToUnixMicros(t);
}

// Applies what an upsert of `action` did to the per-action counts through
// count(action, delta) (`old`: the action it replaced); false if it was refused.
template <typename Count>
bool CountActions(internal::Table::UpsertResult result, uint16_t action, uint16_t old,
                  Count&& count) {
  switch (result) {
    case internal::Table::UpsertResult::kAdded:
      count(action, +1);
      return true;
    case internal::Table::UpsertResult::kRefused:
      return false;
    case internal::Table::UpsertResult::kUpdated:
      if (old != action) {
        count(old, -1);
        count(action, +1);
      }
      return true;
    case internal::Table::UpsertResult::kUnchanged:
      return true;
  }
  return true;
}

absl::Status TooManyMitigations(std::string_view entity) {
  return absl::ResourceExhaustedError(
      absl::StrCat("entity ", AV(entity), " holds too many mitigations"));
}

}  // namespace

bool EncodeId(std::string_view id, std::array<uint8_t, 16>* out) {
  if (id.size() != 2 + kIdChars || id[0] != 'm' || id[1] != '_') return false;
  // 26 characters carry 130 bits; the top two must be zero, so the first is at most 7.
  // In 64-bit halves: characters 0-12 are bits 127-65 (3 + 12 * 5), character 13 is bits
  // 64-60, characters 14-25 are bits 59-0. A bad character reads as -1: bit 7 set.
  const char* c = id.data() + 2;
  uint64_t high = 0, low = 0;
  unsigned bad = 0;
  for (size_t i = 0; i < 13; ++i) {
    const int d = CrockfordValue(c[i]);
    bad |= static_cast<unsigned>(d);
    high = (high << 5) | static_cast<uint64_t>(d & 31);
  }
  const int middle = CrockfordValue(c[13]);
  bad |= static_cast<unsigned>(middle);
  for (size_t i = 14; i < kIdChars; ++i) {
    const int d = CrockfordValue(c[i]);
    bad |= static_cast<unsigned>(d);
    low = (low << 5) | static_cast<uint64_t>(d & 31);
  }
  if ((bad & 0x80) != 0 || CrockfordValue(c[0]) > 7) return false;
  high = (high << 1) | (static_cast<uint64_t>(middle) >> 4);
  low |= static_cast<uint64_t>(middle & 15) << 60;
  // Big-endian (the index's tables assume a little-endian machine too).
  static_assert(std::endian::native == std::endian::little);
  high = __builtin_bswap64(high);
  low = __builtin_bswap64(low);
  std::memcpy(out->data(), &high, 8);
  std::memcpy(out->data() + 8, &low, 8);
  return true;
}

std::string DecodeId(const std::array<uint8_t, 16>& id) {
  unsigned __int128 v = 0;
  for (uint8_t b : id) v = (v << 8) | b;
  std::string out = "m_";
  out.resize(2 + kIdChars);
  for (int i = static_cast<int>(kIdChars) - 1; i >= 0; --i) {
    out[2 + i] = kCrockford[static_cast<int>(v & 31)];
    v >>= 5;
  }
  return out;
}

// Action names are interned to uint16 ids. Readers resolve an id through two levels of
// atomic pointers (blocks of 1024), so ActionName never takes a lock; names live as long as
// the index.
class Index::Impl {
 public:
  static constexpr size_t kBlockBits = 10;
  static constexpr size_t kBlockSize = size_t{1} << kBlockBits;
  static constexpr size_t kMaxActions = 65536;
  struct NameBlock {
    std::array<std::atomic<const std::string*>, kBlockSize> names{};
    // Records held per action (written by the writer, read by CountsByAction).
    std::array<std::atomic<int64_t>, kBlockSize> counts{};
  };

  internal::Table entities{5};
  internal::Table networks{3};

  // Bit p set: some IPv4 network /p is held (v4), or IPv6 /p (bit p % 64 of word p / 64).
  // Readers load these to know which prefix lengths to try.
  std::atomic<uint64_t> v4_prefixes{0};
  std::array<std::atomic<uint64_t>, 3> v6_prefixes{};
  // Writer only: records held per prefix length.
  std::array<size_t, 33> v4_counts{};
  std::array<size_t, 129> v6_counts{};

  // Writer only.
  absl::flat_hash_map<std::string, uint16_t> action_ids;
  std::deque<std::string> action_names;  // stable addresses
  std::vector<std::unique_ptr<NameBlock>> owned_blocks;
  // Readers.
  std::array<std::atomic<NameBlock*>, kMaxActions / kBlockSize> blocks{};

  std::atomic<int64_t> seq{0};

  absl::StatusOr<uint16_t> InternAction(std::string_view name) {
    auto it = action_ids.find(AV(name));
    if (it != action_ids.end()) return it->second;
    const size_t id = action_names.size();
    if (id >= kMaxActions) {
      return absl::ResourceExhaustedError("the index holds at most 65536 action names");
    }
    action_names.emplace_back(name);
    NameBlock* block = blocks[id >> kBlockBits].load(std::memory_order_relaxed);
    if (block == nullptr) {
      owned_blocks.push_back(std::make_unique<NameBlock>());
      block = owned_blocks.back().get();
      for (auto& p : block->names) p.store(nullptr, std::memory_order_relaxed);
      for (auto& c : block->counts) c.store(0, std::memory_order_relaxed);
      blocks[id >> kBlockBits].store(block, std::memory_order_release);
    }
    block->names[id & (kBlockSize - 1)].store(&action_names.back(), std::memory_order_release);
    action_ids.emplace(std::string(name), static_cast<uint16_t>(id));
    return static_cast<uint16_t>(id);
  }

  // Writer only: `action` was interned before.
  void CountAction(uint16_t action, int64_t delta) {
    NameBlock* block = blocks[action >> kBlockBits].load(std::memory_order_relaxed);
    block->counts[action & (kBlockSize - 1)].fetch_add(delta, std::memory_order_relaxed);
  }

  // Writer only: counts what an upsert of `action` did (`old`: the action it replaced;
  // `net`: the network, for the networks table). kResourceExhausted if it was refused,
  // naming `entity`.
  absl::Status CountUpsert(internal::Table::UpsertResult result, uint16_t action, uint16_t old,
                           const core::Network* net, std::string_view entity) {
    if (!CountActions(result, action, old, [&](uint16_t a, int64_t d) { CountAction(a, d); })) {
      return TooManyMitigations(entity);
    }
    if (result == internal::Table::UpsertResult::kAdded && net != nullptr) CountNetwork(*net, +1);
    return absl::OkStatus();
  }

  void CountNetwork(const core::Network& net, int delta) {
    const int p = net.prefix;
    if (net.address.v4) {
      v4_counts[p] += delta;
      const uint64_t bit = uint64_t{1} << p;
      if (v4_counts[p] == 0) {
        v4_prefixes.fetch_and(~bit, std::memory_order_release);
      } else {
        v4_prefixes.fetch_or(bit, std::memory_order_release);
      }
    } else {
      v6_counts[p] += delta;
      const uint64_t bit = uint64_t{1} << (p % 64);
      if (v6_counts[p] == 0) {
        v6_prefixes[p / 64].fetch_and(~bit, std::memory_order_release);
      } else {
        v6_prefixes[p / 64].fetch_or(bit, std::memory_order_release);
      }
    }
  }

  void LookupNetworks(const core::IpAddress& ip, int64_t now_us, Hits* out) const {
    if (ip.v4) {
      uint64_t bits = v4_prefixes.load(std::memory_order_acquire);
      while (bits != 0) {
        const int p = __builtin_ctzll(bits);
        bits &= bits - 1;
        const NetworkKey key = MakeNetworkKey(core::MaskIp(ip, p), p);
        networks.Lookup(key.view(), now_us, static_cast<int16_t>(p), out);
      }
      return;
    }
    for (int word = 0; word < 3; ++word) {
      uint64_t bits = v6_prefixes[word].load(std::memory_order_acquire);
      while (bits != 0) {
        const int p = word * 64 + __builtin_ctzll(bits);
        bits &= bits - 1;
        const NetworkKey key = MakeNetworkKey(core::MaskIp(ip, p), p);
        networks.Lookup(key.view(), now_us, static_cast<int16_t>(p), out);
      }
    }
  }

  bool AnyNetworks() const {
    return (v4_prefixes.load(std::memory_order_relaxed) |
            v6_prefixes[0].load(std::memory_order_relaxed) |
            v6_prefixes[1].load(std::memory_order_relaxed) |
            v6_prefixes[2].load(std::memory_order_relaxed)) != 0;
  }
};

Index::Index() : impl_(std::make_unique<Impl>()) {}
Index::~Index() = default;

void Index::Lookup(const core::Entity& entity, absl::Time now, Hits* out) const {
  const int64_t now_us = ToMicros(now);
  if (entity.is_cidr()) {
    auto net = core::ParseNetwork(entity.id());
    if (!net.ok()) return;
    const NetworkKey key = MakeNetworkKey(net->address, net->prefix);
    impl_->networks.Lookup(key.view(), now_us, -1, out);
    return;
  }
  impl_->entities.Lookup(entity.str(), now_us, -1, out);
  if (!entity.is_ip() || !impl_->AnyNetworks()) return;
  auto ip = core::ParseIp(entity.id());
  if (!ip.ok()) return;
  impl_->LookupNetworks(*ip, now_us, out);
}

void Index::LookupBatch(std::span<const core::Entity> entities, absl::Time now, Hits* out) const {
  constexpr size_t kGroup = 16;
  const int64_t now_us = ToMicros(now);
  uint64_t hashes[kGroup];
  for (size_t start = 0; start < entities.size(); start += kGroup) {
    const size_t n = std::min(kGroup, entities.size() - start);
    const core::Entity* group = entities.data() + start;
    // Three passes so that the misses of one pass are in flight together: home slots,
    // then the entries they point to, then the lookups proper (which find both cached).
    for (size_t i = 0; i < n; ++i) {
      hashes[i] = group[i].is_cidr() ? 0 : impl_->entities.Prepare(group[i].str());
    }
    for (size_t i = 0; i < n; ++i) {
      if (!group[i].is_cidr()) impl_->entities.Touch(hashes[i]);
    }
    for (size_t i = 0; i < n; ++i) {
      const core::Entity& e = group[i];
      if (e.is_cidr()) {
        Lookup(e, now, &out[start + i]);
        continue;
      }
      impl_->entities.LookupHashed(e.str(), hashes[i], now_us, -1, &out[start + i]);
      if (e.is_ip() && impl_->AnyNetworks()) {
        auto ip = core::ParseIp(e.id());
        if (ip.ok()) impl_->LookupNetworks(*ip, now_us, &out[start + i]);
      }
    }
  }
}

std::string_view Index::ActionName(uint16_t action) const {
  const Impl::NameBlock* block =
      impl_->blocks[action >> Impl::kBlockBits].load(std::memory_order_acquire);
  if (block == nullptr) return {};
  const std::string* name =
      block->names[action & (Impl::kBlockSize - 1)].load(std::memory_order_acquire);
  return name == nullptr ? std::string_view() : std::string_view(*name);
}

absl::Status Index::Apply(const core::Mitigation& m) {
  internal::Record r;
  if (!EncodeId(m.id, &r.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mitigation id \"", AV(std::string_view(m.id).substr(0, 40)),
                     "\" is not m_ followed by 26 base32 characters"));
  }
  if (m.entity.str().empty()) return absl::InvalidArgumentError("mitigation has no entity");
  internal::Table* table = &impl_->entities;
  std::string_view key = m.entity.str();
  NetworkKey net_key;
  core::Network net;
  const bool is_cidr = m.entity.is_cidr();
  if (is_cidr) {
    QUELL_ASSIGN_OR_RETURN(net, core::ParseNetwork(m.entity.id()));
    net_key = MakeNetworkKey(net.address, net.prefix);
    key = net_key.view();
    table = &impl_->networks;
  }
  uint16_t old_action = 0;
  if (m.state != core::MitigationState::kActive) {
    if (table->Remove(key, r.id, &old_action)) {
      if (is_cidr) impl_->CountNetwork(net, -1);
      impl_->CountAction(old_action, -1);
    }
    return absl::OkStatus();
  }
  QUELL_ASSIGN_OR_RETURN(r.action, impl_->InternAction(m.action));
  r.expires_us = ToMicros(m.expires_at);
  const internal::Table::UpsertResult result = table->Upsert(key, r, &old_action);
  return impl_->CountUpsert(result, r.action, old_action, is_cidr ? &net : nullptr, m.entity.str());
}

absl::StatusOr<uint16_t> Index::InternAction(std::string_view name) {
  return impl_->InternAction(name);
}

// One entry of a bulk load on its way to the entities table.
struct Index::BulkLoader::State {
  // 40 bytes: a million of them are written once and read once.
  struct Pending {
    const char* key;
    uint32_t key_len;
    uint16_t action;
    std::array<uint8_t, 16> id;
    int64_t expires_us;
  };
  // A shard's entries in Add order, in chunks that never move.
  struct Bucket {
    static constexpr size_t kChunk = 1024;
    std::vector<std::unique_ptr<Pending[]>> chunks;
    size_t n = 0;
    size_t words = 0;  // arena words the new keys may take
    Pending& Next() {
      // Default-initialised (not zeroed): every element is assigned before it is read.
      if (n == chunks.size() * kChunk) chunks.emplace_back(new Pending[kChunk]);
      return chunks[n / kChunk][n % kChunk];
    }
    const Pending& at(size_t i) const { return chunks[i / kChunk][i % kChunk]; }
  };
  struct Network {
    NetworkKey key;
    core::Network net;
    internal::Record r;
  };

  Index* index;
  std::vector<Bucket> buckets;  // by shard of the entities table
  std::vector<Network> networks;
  size_t size = 0;
};

Index::BulkLoader::BulkLoader(Index* index) : state_(std::make_unique<State>()) {
  state_->index = index;
  state_->buckets.resize(index->impl_->entities.shard_count());
}

Index::BulkLoader::~BulkLoader() = default;

size_t Index::BulkLoader::size() const { return state_->size; }

absl::Status Index::BulkLoader::Add(const ActiveEntry& e) {
  Impl& impl = *state_->index->impl_;
  if (e.entity.empty()) return absl::InvalidArgumentError("mitigation has no entity");
  if (e.action >= impl.action_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat("action id ", e.action, " is not interned"));
  }
  internal::Record r;
  r.id = e.id;
  r.action = e.action;
  r.expires_us = e.expires_us;
  if (e.entity.starts_with("cidr:")) {
    QUELL_ASSIGN_OR_RETURN(core::Network net, core::ParseNetwork(e.entity.substr(5)));
    state_->networks.push_back(State::Network{MakeNetworkKey(net.address, net.prefix), net, r});
  } else {
    const uint64_t hash = internal::Table::Hash(e.entity);
    State::Bucket& b = state_->buckets[impl.entities.ShardOf(hash)];
    b.Next() = State::Pending{e.entity.data(), static_cast<uint32_t>(e.entity.size()), e.action,
                              e.id, e.expires_us};
    ++b.n;
    b.words += internal::Table::NewKeyWords(e.entity.size());
  }
  ++state_->size;
  return absl::OkStatus();
}

absl::Status Index::BulkLoader::Finish(int threads) {
  Impl& impl = *state_->index->impl_;
  // Networks (few, usually) on this thread: CountNetwork is the writer's alone. The two
  // tables hold different keys, so the order between them does not matter.
  absl::Status status;
  for (const State::Network& n : state_->networks) {
    uint16_t old = 0;
    const auto result = impl.networks.Upsert(n.key.view(), n.r, &old);
    // The entity's text only for the error (a refusal): formatting it costs.
    const std::string entity = result == internal::Table::UpsertResult::kRefused
                                   ? absl::StrCat("cidr:", core::FormatNetwork(n.net))
                                   : std::string();
    status = impl.CountUpsert(result, n.r.action, old, &n.net, entity);
    if (!status.ok()) break;
  }
  // Entities, shard by shard: shard k on thread k % threads. The table's and the actions'
  // counters are added once per shard (see Table::Deferred); CountAction is atomic, so
  // threads may share it.
  internal::Table& table = impl.entities;
  const size_t actions = impl.action_names.size();
  auto run = [&](size_t first, size_t step) -> absl::Status {
    internal::Table::Deferred deferred;
    std::vector<int64_t> action_deltas(actions, 0);
    auto publish = [&] {
      table.Publish(&deferred);
      for (size_t a = 0; a < actions; ++a) {
        if (action_deltas[a] != 0) impl.CountAction(static_cast<uint16_t>(a), action_deltas[a]);
        action_deltas[a] = 0;
      }
    };
    for (size_t k = first; k < state_->buckets.size(); k += step) {
      const State::Bucket& b = state_->buckets[k];
      if (b.n == 0) continue;
      table.ReserveShard(k, b.n, b.words);
      constexpr size_t kAhead = 8;  // the key bytes the upsert kAhead later reads
      for (size_t i = 0; i < b.n; ++i) {
        if (i + kAhead < b.n) __builtin_prefetch(b.at(i + kAhead).key);
        const State::Pending& p = b.at(i);
        const std::string_view key(p.key, p.key_len);
        internal::Record r;
        r.id = p.id;
        r.action = p.action;
        r.expires_us = p.expires_us;
        uint16_t old = 0;
        const internal::Table::UpsertResult result =
            table.UpsertHashed(key, internal::Table::Hash(key), r, &old, &deferred);
        if (!CountActions(result, r.action, old,
                          [&](uint16_t a, int64_t d) { action_deltas[a] += d; })) {
          publish();
          return TooManyMitigations(key);
        }
      }
      publish();
    }
    return absl::OkStatus();
  };
  const size_t n = status.ok() ? static_cast<size_t>(std::clamp(threads, 1, 16)) : 0;
  std::vector<absl::Status> results(n);
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < n; ++t) {
    helpers.emplace_back([&, t] { results[t] = run(t, n); });
  }
  if (n > 0) results[0] = run(0, n);
  for (std::thread& h : helpers) h.join();
  for (const absl::Status& r : results) {
    if (status.ok() && !r.ok()) status = r;
  }
  const size_t shards = state_->buckets.size();
  state_->buckets.clear();
  state_->buckets.resize(shards);
  state_->networks.clear();
  state_->size = 0;
  return status;
}

void Index::ForEach(
    const std::function<void(const std::array<uint8_t, 16>& id, std::string_view entity,
                             std::string_view action, int64_t expires_us)>& fn) const {
  impl_->entities.ForEach([&](std::string_view key, const internal::Record& r) {
    fn(r.id, key, ActionName(r.action), r.expires_us);
  });
  impl_->networks.ForEach([&](std::string_view key, const internal::Record& r) {
    // Back from the NetworkKey layout: family, prefix, address bytes.
    core::Network net;
    net.prefix = static_cast<uint8_t>(key[1]);
    net.address.v4 = key[0] == 4;
    if (net.address.v4) {
      net.address.bytes[10] = 0xff;
      net.address.bytes[11] = 0xff;
      std::memcpy(&net.address.bytes[12], key.data() + 2, 4);
    } else {
      std::memcpy(net.address.bytes.data(), key.data() + 2, 16);
    }
    const std::string entity = absl::StrCat("cidr:", core::FormatNetwork(net));
    fn(r.id, entity, ActionName(r.action), r.expires_us);
  });
}

void Index::set_seq(int64_t seq) { impl_->seq.store(seq, std::memory_order_release); }
int64_t Index::seq() const { return impl_->seq.load(std::memory_order_acquire); }

size_t Index::size() const { return impl_->entities.records() + impl_->networks.records(); }

std::vector<std::pair<std::string, int64_t>> Index::CountsByAction() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (size_t id = 0; id < Impl::kMaxActions; ++id) {
    const Impl::NameBlock* block =
        impl_->blocks[id >> Impl::kBlockBits].load(std::memory_order_acquire);
    if (block == nullptr) break;
    const std::string* name =
        block->names[id & (Impl::kBlockSize - 1)].load(std::memory_order_acquire);
    if (name == nullptr) break;  // ids are dense: the first gap is the end
    out.emplace_back(*name,
                     block->counts[id & (Impl::kBlockSize - 1)].load(std::memory_order_relaxed));
  }
  return out;
}

size_t Index::MemoryBytes() const {
  size_t bytes = sizeof(Impl) + impl_->entities.MemoryBytes() + impl_->networks.MemoryBytes();
  for (const auto& name : impl_->action_names) bytes += sizeof(std::string) + name.capacity();
  bytes += impl_->owned_blocks.size() * sizeof(Impl::NameBlock);
  return bytes;
}

void Index::CheckInvariantsForTest() const {
  impl_->entities.CheckInvariantsForTest();
  impl_->networks.CheckInvariantsForTest();
}

}  // namespace quell::index
