#include "index/index.h"

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::index {
namespace {

using core::MitigationState;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

core::Entity E(std::string_view text) {
  auto e = core::Entity::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status();
  return e.ok() ? *e : core::Entity();
}

// A deterministic mitigation id from a number.
std::string Id(uint64_t n) {
  std::array<uint8_t, 16> b{};
  for (int i = 0; i < 8; ++i) b[15 - i] = static_cast<uint8_t>(n >> (8 * i));
  b[0] = 0x01;
  return DecodeId(b);
}

core::Mitigation M(std::string_view entity, std::string id, std::string action = "block",
                   MitigationState state = MitigationState::kActive,
                   absl::Duration ttl = absl::Hours(1)) {
  core::Mitigation m;
  m.id = std::move(id);
  m.entity = E(entity);
  m.action = std::move(action);
  m.state = state;
  m.expires_at = kNow + ttl;
  return m;
}

std::set<std::string> Ids(const Hits& hits) {
  std::set<std::string> out;
  for (const Hit& h : hits) out.insert(DecodeId(h.id));
  return out;
}

Hits Find(const Index& index, std::string_view entity, absl::Time now = kNow) {
  Hits hits;
  index.Lookup(E(entity), now, &hits);
  return hits;
}

TEST(IdsTest, RoundTripsNewIds) {
  for (int i = 0; i < 1000; ++i) {
    const std::string id = core::NewId("m_", kNow + absl::Milliseconds(i));
    std::array<uint8_t, 16> bin;
    ASSERT_TRUE(EncodeId(id, &bin)) << id;
    EXPECT_EQ(DecodeId(bin), id);
  }
}

TEST(IdsTest, RoundTripsBytesAndKeepsOrder) {
  std::mt19937_64 rng(7);
  std::array<uint8_t, 16> prev{};
  std::string prev_text = DecodeId(prev);
  for (int i = 0; i < 1000; ++i) {
    std::array<uint8_t, 16> b;
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    const std::string text = DecodeId(b);
    std::array<uint8_t, 16> back;
    ASSERT_TRUE(EncodeId(text, &back));
    EXPECT_EQ(back, b);
    EXPECT_EQ(b < prev, text < prev_text);
    prev = b;
    prev_text = text;
  }
  std::array<uint8_t, 16> ones;
  ones.fill(0xff);
  EXPECT_EQ(DecodeId(ones), "m_7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
}

TEST(IdsTest, RejectsBadIds) {
  std::array<uint8_t, 16> b;
  const std::string good = "m_01JD0000000000000000000000";
  ASSERT_TRUE(EncodeId(good, &b));
  EXPECT_FALSE(EncodeId("", &b));
  EXPECT_FALSE(EncodeId("m_", &b));
  EXPECT_FALSE(EncodeId("x_01JD0000000000000000000000", &b));
  EXPECT_FALSE(EncodeId("mm01JD0000000000000000000000", &b));
  EXPECT_FALSE(EncodeId("m_01JD000000000000000000000", &b));    // 25 chars
  EXPECT_FALSE(EncodeId("m_01JD00000000000000000000000", &b));  // 27 chars
  EXPECT_FALSE(EncodeId("m_81JD0000000000000000000000", &b));   // > 128 bits
  for (char c : std::string("ILOUilou-_ *\x01\xff")) {
    std::string bad = good;
    bad[10] = c;
    EXPECT_FALSE(EncodeId(bad, &b)) << bad;
  }
  EXPECT_FALSE(EncodeId("m_01jd0000000000000000000000", &b));  // not canonical case
}

TEST(IndexTest, ApplyLookupRemove) {
  Index index;
  EXPECT_TRUE(Find(index, "user:alice").empty());
  ASSERT_TRUE(index.Apply(M("user:alice", Id(1), "suspend")).ok());
  EXPECT_EQ(index.size(), 1u);
  Hits hits = Find(index, "user:alice");
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(DecodeId(hits[0].id), Id(1));
  EXPECT_EQ(index.ActionName(hits[0].action), "suspend");
  EXPECT_EQ(hits[0].expires_us, absl::ToUnixMicros(kNow + absl::Hours(1)));
  EXPECT_EQ(hits[0].cidr_prefix, -1);
  EXPECT_TRUE(Find(index, "user:alic").empty());
  EXPECT_TRUE(Find(index, "user:alice2").empty());
  EXPECT_TRUE(Find(index, "device:alice").empty());

  ASSERT_TRUE(index.Apply(M("user:alice", Id(1), "suspend", MitigationState::kRevoked)).ok());
  EXPECT_TRUE(Find(index, "user:alice").empty());
  EXPECT_EQ(index.size(), 0u);
  index.CheckInvariantsForTest();
}

TEST(IndexTest, CountsByAction) {
  Index index;
  EXPECT_TRUE(index.CountsByAction().empty());
  using Counts = std::vector<std::pair<std::string, int64_t>>;
  ASSERT_TRUE(index.Apply(M("user:alice", Id(1), "suspend")).ok());
  ASSERT_TRUE(index.Apply(M("user:bob", Id(2), "suspend")).ok());
  ASSERT_TRUE(index.Apply(M("ip:10.0.0.1", Id(3), "block")).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.0.0.0/8", Id(4), "block")).ok());
  EXPECT_EQ(index.CountsByAction(), (Counts{{"suspend", 2}, {"block", 2}}));
  // Re-applied unchanged: no double count. Re-applied with another action: moves.
  ASSERT_TRUE(index.Apply(M("user:alice", Id(1), "suspend")).ok());
  ASSERT_TRUE(index.Apply(M("user:bob", Id(2), "challenge")).ok());
  EXPECT_EQ(index.CountsByAction(), (Counts{{"suspend", 1}, {"block", 2}, {"challenge", 1}}));
  // Removed (and removing what is absent changes nothing).
  ASSERT_TRUE(index.Apply(M("cidr:10.0.0.0/8", Id(4), "block", MitigationState::kRevoked)).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.0.0.0/8", Id(4), "block", MitigationState::kRevoked)).ok());
  ASSERT_TRUE(index.Apply(M("user:alice", Id(1), "suspend", MitigationState::kExpired)).ok());
  EXPECT_EQ(index.CountsByAction(), (Counts{{"suspend", 0}, {"block", 1}, {"challenge", 1}}));
  int64_t sum = 0;
  for (const auto& [name, n] : index.CountsByAction()) sum += n;
  EXPECT_EQ(sum, static_cast<int64_t>(index.size()));
}

TEST(IndexTest, LookupAppendsToExistingHits) {
  Index index;
  ASSERT_TRUE(index.Apply(M("user:a", Id(1))).ok());
  Hits hits;
  hits.push_back(Hit{});
  index.Lookup(E("user:a"), kNow, &hits);
  EXPECT_EQ(hits.size(), 2u);
}

TEST(IndexTest, SeveralMitigationsPerEntity) {
  Index index;
  for (int i = 1; i <= 9; ++i) {
    ASSERT_TRUE(index.Apply(M("user:bob", Id(i), absl::StrCat("action", i % 3))).ok());
  }
  ASSERT_TRUE(index.Apply(M("user:carol", Id(100))).ok());
  EXPECT_EQ(index.size(), 10u);
  Hits hits = Find(index, "user:bob");
  ASSERT_EQ(hits.size(), 9u);
  for (const Hit& h : hits) {
    const std::string id = DecodeId(h.id);
    int n = 0;
    for (int i = 1; i <= 9; ++i) {
      if (Id(i) == id) n = i;
    }
    ASSERT_NE(n, 0) << id;
    EXPECT_EQ(index.ActionName(h.action), absl::StrCat("action", n % 3));
  }
  for (int i : {1, 5, 9, 2}) {
    ASSERT_TRUE(index.Apply(M("user:bob", Id(i), "x", MitigationState::kExpired)).ok());
  }
  EXPECT_EQ(Ids(Find(index, "user:bob")),
            (std::set<std::string>{Id(3), Id(4), Id(6), Id(7), Id(8)}));
  EXPECT_EQ(Ids(Find(index, "user:carol")), (std::set<std::string>{Id(100)}));
  // Removing an id that is not on this entity changes nothing.
  ASSERT_TRUE(index.Apply(M("user:bob", Id(100), "x", MitigationState::kRevoked)).ok());
  EXPECT_EQ(index.size(), 6u);
  index.CheckInvariantsForTest();
}

TEST(IndexTest, StateTransitions) {
  Index index;
  for (auto st :
       {MitigationState::kPendingApproval, MitigationState::kScheduled, MitigationState::kShadow,
        MitigationState::kRejected, MitigationState::kSuppressed}) {
    ASSERT_TRUE(index.Apply(M("user:u", Id(1), "block", st)).ok());
    EXPECT_TRUE(Find(index, "user:u").empty()) << core::StateName(st);
    EXPECT_EQ(index.size(), 0u);
  }
  ASSERT_TRUE(index.Apply(M("user:u", Id(1))).ok());
  ASSERT_TRUE(index.Apply(M("user:u", Id(1))).ok());  // idempotent
  EXPECT_EQ(index.size(), 1u);
  EXPECT_EQ(Find(index, "user:u").size(), 1u);
  // Re-applied with a new expiry and action: updated in place.
  ASSERT_TRUE(
      index.Apply(M("user:u", Id(1), "challenge", MitigationState::kActive, absl::Hours(5))).ok());
  Hits hits = Find(index, "user:u");
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(index.ActionName(hits[0].action), "challenge");
  EXPECT_EQ(hits[0].expires_us, absl::ToUnixMicros(kNow + absl::Hours(5)));
  ASSERT_TRUE(index.Apply(M("user:u", Id(1), "challenge", MitigationState::kRevoked)).ok());
  ASSERT_TRUE(index.Apply(M("user:u", Id(1), "challenge", MitigationState::kRevoked)).ok());
  EXPECT_TRUE(Find(index, "user:u").empty());
  EXPECT_EQ(index.size(), 0u);
  index.CheckInvariantsForTest();
}

TEST(IndexTest, BadMitigationsAreRefused) {
  Index index;
  EXPECT_EQ(index.Apply(M("user:u", "m_short")).code(), absl::StatusCode::kInvalidArgument);
  core::Mitigation no_entity = M("user:u", Id(1));
  no_entity.entity = core::Entity();
  EXPECT_EQ(index.Apply(no_entity).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index.size(), 0u);
}

TEST(IndexTest, ExpiryIsFilteredByNow) {
  Index index;
  ASSERT_TRUE(
      index.Apply(M("user:a", Id(1), "block", MitigationState::kActive, absl::Seconds(10))).ok());
  ASSERT_TRUE(
      index.Apply(M("user:a", Id(2), "block", MitigationState::kActive, absl::Seconds(20))).ok());
  core::Mitigation forever = M("user:a", Id(3));
  forever.expires_at = absl::InfiniteFuture();
  ASSERT_TRUE(index.Apply(forever).ok());
  EXPECT_EQ(Find(index, "user:a").size(), 3u);
  EXPECT_EQ(Ids(Find(index, "user:a", kNow + absl::Seconds(10))),
            (std::set<std::string>{Id(2), Id(3)}));  // expires_at <= now is gone
  EXPECT_EQ(Ids(Find(index, "user:a", kNow + absl::Seconds(10) - absl::Microseconds(1))),
            (std::set<std::string>{Id(1), Id(2), Id(3)}));
  EXPECT_EQ(Ids(Find(index, "user:a", kNow + absl::Hours(1e6))), (std::set<std::string>{Id(3)}));
  // Already expired when applied: held (until its expired change) but never returned.
  ASSERT_TRUE(
      index.Apply(M("user:b", Id(4), "block", MitigationState::kActive, -absl::Seconds(1))).ok());
  EXPECT_TRUE(Find(index, "user:b").empty());
}

std::map<int, std::string> ByPrefix(const Hits& hits) {
  std::map<int, std::string> out;
  for (const Hit& h : hits) out[h.cidr_prefix] = DecodeId(h.id);
  return out;
}

TEST(IndexTest, CidrV4AllCoveringNetworks) {
  Index index;
  ASSERT_TRUE(index.Apply(M("cidr:0.0.0.0/0", Id(0))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.0.0.0/8", Id(8))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.1.0.0/16", Id(16))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.1.2.0/23", Id(23))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.1.2.3/32", Id(32))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:192.168.0.0/16", Id(99))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:::/0", Id(600))).ok());  // IPv6 only
  ASSERT_TRUE(index.Apply(M("ip:10.1.2.3", Id(1000))).ok());

  EXPECT_EQ(ByPrefix(Find(index, "ip:10.1.2.3")),
            (std::map<int, std::string>{
                {-1, Id(1000)}, {0, Id(0)}, {8, Id(8)}, {16, Id(16)}, {23, Id(23)}, {32, Id(32)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:10.1.3.255")),
            (std::map<int, std::string>{{0, Id(0)}, {8, Id(8)}, {16, Id(16)}, {23, Id(23)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:10.1.4.0")),
            (std::map<int, std::string>{{0, Id(0)}, {8, Id(8)}, {16, Id(16)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:11.0.0.1")), (std::map<int, std::string>{{0, Id(0)}}));
  // The cidr entity itself, exactly.
  EXPECT_EQ(Ids(Find(index, "cidr:10.1.0.0/16")), (std::set<std::string>{Id(16)}));
  EXPECT_TRUE(Find(index, "cidr:10.1.0.0/17").empty());
  EXPECT_EQ(index.size(), 8u);

  ASSERT_TRUE(index.Apply(M("cidr:0.0.0.0/0", Id(0), "b", MitigationState::kRevoked)).ok());
  ASSERT_TRUE(index.Apply(M("cidr:10.1.2.0/23", Id(23), "b", MitigationState::kExpired)).ok());
  EXPECT_EQ(ByPrefix(Find(index, "ip:10.1.2.3")),
            (std::map<int, std::string>{{-1, Id(1000)}, {8, Id(8)}, {16, Id(16)}, {32, Id(32)}}));
  EXPECT_TRUE(Find(index, "ip:11.0.0.1").empty());
  // Expiry applies to networks too.
  EXPECT_EQ(ByPrefix(Find(index, "ip:10.1.2.3", kNow + absl::Hours(2))).size(), 0u);
  index.CheckInvariantsForTest();
}

TEST(IndexTest, CidrV6AllCoveringNetworks) {
  Index index;
  ASSERT_TRUE(index.Apply(M("cidr:::/0", Id(0))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:2001:db8::/32", Id(32))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:2001:db8:1:2::/64", Id(64))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:2001:db8:1:2::80/121", Id(121))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:2001:db8:1:2::abcd/128", Id(128))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:0.0.0.0/0", Id(4))).ok());  // IPv4 only

  EXPECT_EQ(ByPrefix(Find(index, "ip:2001:db8:1:2::abcd")),
            (std::map<int, std::string>{{0, Id(0)}, {32, Id(32)}, {64, Id(64)}, {128, Id(128)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:2001:db8:1:2::ff")),
            (std::map<int, std::string>{{0, Id(0)}, {32, Id(32)}, {64, Id(64)}, {121, Id(121)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:2001:db8:1:3::1")),
            (std::map<int, std::string>{{0, Id(0)}, {32, Id(32)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:2001:db9::1")), (std::map<int, std::string>{{0, Id(0)}}));
  EXPECT_EQ(ByPrefix(Find(index, "ip:1.2.3.4")), (std::map<int, std::string>{{0, Id(4)}}));
  index.CheckInvariantsForTest();
}

TEST(IndexTest, IpSpellingsAreNormalised) {
  Index index;
  ASSERT_TRUE(index.Apply(M("ip:2001:DB8:0:0:0:0:0:1", Id(1))).ok());
  ASSERT_TRUE(index.Apply(M("ip:::ffff:192.0.2.7", Id(2))).ok());
  ASSERT_TRUE(index.Apply(M("cidr:2001:0DB8::/32", Id(3))).ok());
  EXPECT_EQ(Ids(Find(index, "ip:2001:db8::1")), (std::set<std::string>{Id(1), Id(3)}));
  EXPECT_EQ(Ids(Find(index, "ip:2001:0db8:0000::0001")), (std::set<std::string>{Id(1), Id(3)}));
  EXPECT_EQ(Ids(Find(index, "ip:192.0.2.7")), (std::set<std::string>{Id(2)}));
  EXPECT_EQ(Ids(Find(index, "cidr:2001:db8::/32")), (std::set<std::string>{Id(3)}));
}

TEST(IndexTest, SeqAndMemory) {
  Index index;
  EXPECT_EQ(index.seq(), 0);
  index.set_seq(42);
  EXPECT_EQ(index.seq(), 42);
  const size_t empty = index.MemoryBytes();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(index.Apply(M(absl::StrCat("user:", i), Id(i))).ok());
  }
  EXPECT_GT(index.MemoryBytes(), empty + 1000 * 40);
  EXPECT_EQ(index.ActionName(999), "");
}

// Inserting new mitigations and removing old ones for a long time keeps memory near the
// level that the live set needs.
TEST(IndexTest, ChurnKeepsMemoryBounded) {
  Index index;
  constexpr int kLive = 20000;
  std::mt19937_64 rng(1);
  auto entity = [](uint64_t n) {
    // Vary key lengths so several entry sizes churn.
    return absl::StrCat("user:", std::string(n % 7, 'x'), n);
  };
  uint64_t next = 0;
  std::vector<uint64_t> live;
  for (; next < kLive; ++next) {
    ASSERT_TRUE(index.Apply(M(entity(next), Id(next))).ok());
    live.push_back(next);
  }
  const size_t loaded = index.MemoryBytes();
  for (int round = 0; round < 20; ++round) {
    for (int k = 0; k < kLive / 2; ++k) {
      const size_t at = rng() % live.size();
      const uint64_t n = live[at];
      ASSERT_TRUE(index.Apply(M(entity(n), Id(n), "block", MitigationState::kRevoked)).ok());
      live[at] = next;
      // Some entities get a second mitigation for a while.
      ASSERT_TRUE(index.Apply(M(entity(next), Id(next))).ok());
      ++next;
    }
    EXPECT_EQ(index.size(), static_cast<size_t>(kLive));
    EXPECT_LT(index.MemoryBytes(), loaded * 2) << "round " << round;
  }
  index.CheckInvariantsForTest();
  for (uint64_t n : live) {
    ASSERT_EQ(Find(index, entity(n)).size(), 1u) << n;
    ASSERT_TRUE(index.Apply(M(entity(n), Id(n), "block", MitigationState::kRevoked)).ok());
  }
  EXPECT_EQ(index.size(), 0u);
  EXPECT_LT(index.MemoryBytes(), loaded / 4);
  index.CheckInvariantsForTest();
}

// A randomized sequence of applies against a plain std::map model.
TEST(IndexTest, MatchesModel) {
  Index index;
  std::mt19937_64 rng(12345);
  std::vector<std::string> entities;
  for (int i = 0; i < 300; ++i) entities.push_back(absl::StrCat("user:", i * 7919));
  for (int i = 0; i < 100; ++i) entities.push_back(absl::StrCat("ip:10.0.", i % 4, ".", i));
  for (int i = 0; i < 30; ++i) entities.push_back(absl::StrCat("ip:2001:db8::", i));
  const std::vector<std::string> networks = {
      "cidr:10.0.0.0/8", "cidr:10.0.1.0/24",   "cidr:10.0.2.0/23",    "cidr:10.0.3.7/32",
      "cidr:0.0.0.0/0",  "cidr:2001:db8::/32", "cidr:2001:db8::/125", "cidr:2001:db8::10/128"};
  for (const auto& n : networks) entities.push_back(n);
  const std::vector<std::string> actions = {"block", "challenge", "throttle", "flag"};
  struct Rec {
    std::string action;
    int64_t expires_us;
  };
  std::map<std::string, std::map<std::string, Rec>> model;  // entity -> id -> record
  const int kIds = 2000;
  std::vector<std::string> id_entity(kIds);  // an id always stays on one entity

  auto check = [&](const std::string& entity_text, absl::Time now) {
    const core::Entity entity = E(entity_text);
    std::map<std::string, std::pair<std::string, int>> want;  // id -> (action, prefix)
    const int64_t now_us = absl::ToUnixMicros(now);
    for (auto& [id, r] : model[entity.str()]) {
      if (r.expires_us > now_us) want[id] = {r.action, -1};
    }
    if (entity.is_ip()) {
      auto ip = core::ParseIp(entity.id());
      for (const auto& n : networks) {
        auto net = core::ParseNetwork(E(n).id());
        if (!net->Contains(*ip)) continue;
        for (auto& [id, r] : model[E(n).str()]) {
          if (r.expires_us > now_us) want[id] = {r.action, net->prefix};
        }
      }
    }
    Hits hits;
    index.Lookup(entity, now, &hits);
    std::map<std::string, std::pair<std::string, int>> got;
    for (const Hit& h : hits) {
      got[DecodeId(h.id)] = {std::string(index.ActionName(h.action)), h.cidr_prefix};
    }
    ASSERT_EQ(got, want) << entity_text;
  };

  for (int step = 0; step < 30000; ++step) {
    const int idn = static_cast<int>(rng() % kIds);
    if (id_entity[idn].empty()) id_entity[idn] = E(entities[rng() % entities.size()]).str();
    const std::string& entity = id_entity[idn];
    const std::string id = Id(idn);
    const bool active = rng() % 3 != 0;
    const auto ttl = absl::Seconds(static_cast<int64_t>(rng() % 200) - 20);
    core::Mitigation m = M(entity, id, actions[rng() % actions.size()],
                           active ? MitigationState::kActive : MitigationState::kRevoked, ttl);
    ASSERT_TRUE(index.Apply(m).ok());
    if (active) {
      model[entity][id] = Rec{m.action, absl::ToUnixMicros(m.expires_at)};
    } else {
      model[entity].erase(id);
    }
    if (step % 97 == 0) {
      const absl::Time now = kNow + absl::Seconds(static_cast<int64_t>(rng() % 200) - 10);
      for (int k = 0; k < 20; ++k) check(entities[rng() % entities.size()], now);
      if (HasFatalFailure()) return;
    }
    if (step % 5000 == 0) index.CheckInvariantsForTest();
  }
  // LookupBatch agrees with Lookup, entity by entity.
  std::vector<core::Entity> batch;
  for (int i = 0; i < 1000; ++i) batch.push_back(E(entities[rng() % entities.size()]));
  std::vector<Hits> batch_hits(batch.size());
  index.LookupBatch(batch, kNow, batch_hits.data());
  for (size_t i = 0; i < batch.size(); ++i) {
    Hits one;
    index.Lookup(batch[i], kNow, &one);
    ASSERT_EQ(batch_hits[i].size(), one.size()) << batch[i].str();
    for (size_t k = 0; k < one.size(); ++k) {
      EXPECT_EQ(batch_hits[i][k].id, one[k].id);
      EXPECT_EQ(batch_hits[i][k].cidr_prefix, one[k].cidr_prefix);
    }
  }
  size_t total = 0;
  for (auto& [e, ids] : model) total += ids.size();
  EXPECT_EQ(index.size(), total);
  for (const auto& e : entities) check(e, kNow);
  index.CheckInvariantsForTest();
}

// Everything an index holds, via ForEach: "id entity action expires_us", sorted.
std::vector<std::string> Contents(const Index& index) {
  std::vector<std::string> out;
  index.ForEach([&out](const std::array<uint8_t, 16>& id, std::string_view entity,
                       std::string_view action, int64_t expires_us) {
    out.push_back(absl::StrCat(DecodeId(id), " ", AV(entity), " ", AV(action), " ", expires_us));
  });
  std::sort(out.begin(), out.end());
  return out;
}

// A BulkLoader of `entries`, finished on this thread; nothing applied if one is refused.
absl::Status LoadAll(Index& index, const std::vector<Index::ActiveEntry>& entries) {
  Index::BulkLoader loader(&index);
  for (const Index::ActiveEntry& e : entries) QUELL_RETURN_IF_ERROR(loader.Add(e));
  return loader.Finish(1);
}

// A bulk load gives the index that Apply of each entry in order gives: on an empty index
// and on one that already holds some of them (updates, new records on held keys,
// repeated ids and keys within the input, networks of both families).
TEST(IndexTest, BulkLoadEqualsApplyOfEach) {
  std::mt19937_64 rng(777);
  std::vector<std::string> entities;
  for (int i = 0; i < 3000; ++i) entities.push_back(absl::StrCat("user:u", i));
  for (int i = 0; i < 200; ++i) entities.push_back(absl::StrCat("ip:10.1.", i % 7, ".", i));
  for (int i = 0; i < 50; ++i) entities.push_back(absl::StrCat("cidr:10.", i, ".0.0/16"));
  for (int i = 0; i < 20; ++i) entities.push_back(absl::StrCat("cidr:2001:db8:", i, "::/48"));
  const std::vector<std::string> actions = {"block", "challenge", "throttle"};
  for (const bool preload : {false, true}) {
    Index bulk, each, loaded;  // loaded on one thread; Apply of each; loaded on 3 threads
    std::vector<std::string> id_entity(6000);
    auto make = [&](int n) {
      if (id_entity[n].empty()) id_entity[n] = E(entities[rng() % entities.size()]).str();
      return M(id_entity[n], Id(n), actions[rng() % actions.size()], MitigationState::kActive,
               absl::Seconds(static_cast<int64_t>(rng() % 1000) + 1));
    };
    if (preload) {
      for (int i = 0; i < 2000; ++i) {
        core::Mitigation m = make(static_cast<int>(rng() % 6000));
        ASSERT_TRUE(bulk.Apply(m).ok());
        ASSERT_TRUE(each.Apply(m).ok());
        ASSERT_TRUE(loaded.Apply(m).ok());
      }
    }
    std::vector<core::Mitigation> input;
    for (int i = 0; i < 8000; ++i) input.push_back(make(static_cast<int>(rng() % 6000)));
    std::vector<Index::ActiveEntry> entries;
    for (const core::Mitigation& m : input) {
      ASSERT_TRUE(each.Apply(m).ok());
      Index::ActiveEntry e;
      ASSERT_TRUE(EncodeId(m.id, &e.id));
      e.entity = m.entity.str();
      auto action = bulk.InternAction(m.action);
      ASSERT_TRUE(action.ok());
      e.action = *action;
      e.expires_us = absl::ToUnixMicros(m.expires_at);
      entries.push_back(e);
    }
    ASSERT_TRUE(LoadAll(bulk, entries).ok());
    bulk.CheckInvariantsForTest();
    {
      Index::BulkLoader loader(&loaded);
      const size_t before = loaded.size();
      for (Index::ActiveEntry e : entries) {
        e.action = *loaded.InternAction(bulk.ActionName(e.action));
        ASSERT_TRUE(loader.Add(e).ok());
      }
      EXPECT_EQ(loader.size(), entries.size());
      EXPECT_EQ(loaded.size(), before);  // nothing applied before Finish
      ASSERT_TRUE(loader.Finish(3).ok());
      EXPECT_EQ(loader.size(), 0u);
    }
    loaded.CheckInvariantsForTest();
    EXPECT_EQ(Contents(loaded), Contents(each));
    EXPECT_EQ(bulk.size(), each.size());
    const std::vector<std::string> contents = Contents(bulk);
    EXPECT_EQ(contents, Contents(each));
    EXPECT_EQ(contents.size(), bulk.size());
    auto counts = [](const Index& index) {
      std::map<std::string, int64_t> out;
      for (auto& [name, n] : index.CountsByAction()) out[name] = n;
      return out;
    };
    EXPECT_EQ(counts(bulk), counts(each));
    // Lookups agree too, networks covering an address included.
    for (int i = 0; i < 200; ++i) {
      const std::string probe = absl::StrCat("ip:10.", rng() % 60, ".", rng() % 8, ".", i);
      EXPECT_EQ(Ids(Find(bulk, probe)), Ids(Find(each, probe))) << probe;
    }
    for (const auto& e : entities) {
      ASSERT_EQ(Ids(Find(bulk, e)), Ids(Find(each, e))) << e;
    }
    // The bulk-loaded index goes on like any other.
    for (int i = 0; i < 3000; ++i) {
      core::Mitigation m = make(static_cast<int>(rng() % 6000));
      if (rng() % 2) m.state = MitigationState::kRevoked;
      ASSERT_TRUE(bulk.Apply(m).ok());
      ASSERT_TRUE(each.Apply(m).ok());
      ASSERT_TRUE(loaded.Apply(m).ok());
    }
    bulk.CheckInvariantsForTest();
    loaded.CheckInvariantsForTest();
    EXPECT_EQ(Contents(bulk), Contents(each));
    EXPECT_EQ(Contents(loaded), Contents(each));
  }
}

TEST(IndexTest, BulkLoaderRefusesBadEntries) {
  Index index;
  Index::ActiveEntry e;
  ASSERT_TRUE(EncodeId(Id(1), &e.id));
  e.entity = "user:a";
  e.expires_us = absl::ToUnixMicros(kNow + absl::Hours(1));
  e.action = 0;  // nothing interned yet
  EXPECT_EQ(LoadAll(index, {e}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(index.InternAction("block").ok());
  e.entity = "";
  EXPECT_EQ(LoadAll(index, {e}).code(), absl::StatusCode::kInvalidArgument);
  e.entity = "cidr:nonsense";
  EXPECT_FALSE(LoadAll(index, {e}).ok());
  EXPECT_EQ(index.size(), 0u);
  e.entity = "user:a";
  EXPECT_TRUE(LoadAll(index, {e}).ok());
  EXPECT_EQ(Ids(Find(index, "user:a")), std::set<std::string>{Id(1)});
  EXPECT_EQ(*index.InternAction("block"), 0);
}

// Readers look up entities held before a large bulk load while its Finish inserts on two
// threads (sizing every shard on the way): they always find exactly those, and every
// loaded entity once Finish returns.
TEST(IndexConcurrencyTest, ReadersDuringBulkLoadFinish) {
  Index index;
  constexpr int kStable = 500;
  for (int i = 0; i < kStable; ++i) {
    ASSERT_TRUE(index.Apply(M(absl::StrCat("user:stable", i), Id(i))).ok());
  }
  std::vector<std::string> texts;
  for (int i = 0; i < 200000; ++i) texts.push_back(absl::StrCat("user:loaded", i));
  Index::BulkLoader loader(&index);
  const uint16_t action = *index.InternAction("challenge");
  for (int i = 0; i < static_cast<int>(texts.size()); ++i) {
    Index::ActiveEntry e;
    ASSERT_TRUE(EncodeId(Id(kStable + i), &e.id));
    e.entity = texts[i];
    e.action = action;
    e.expires_us = absl::ToUnixMicros(kNow + absl::Hours(1));
    ASSERT_TRUE(loader.Add(e).ok());
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!stop.load()) {
        const int i = static_cast<int>(rng() % kStable);
        Hits hits;
        index.Lookup(E(absl::StrCat("user:stable", i)), kNow, &hits);
        if (hits.size() != 1 || DecodeId(hits[0].id) != Id(i)) bad.fetch_add(1);
        reads.fetch_add(1);
      }
    });
  }
  ASSERT_TRUE(loader.Finish(2).ok());
  stop.store(true);
  for (auto& r : readers) r.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(index.size(), kStable + texts.size());
  index.CheckInvariantsForTest();
  for (int i = 0; i < static_cast<int>(texts.size()); i += 997) {
    EXPECT_EQ(Ids(Find(index, texts[i])), std::set<std::string>{Id(kStable + i)});
  }
}

// One writer churns other entities (growing, rebuilding and compacting shards) while readers
// look up entities that are always present: they must always find exactly them.
TEST(IndexConcurrencyTest, ReadersAlwaysFindStableEntities) {
  Index index;
  constexpr int kStable = 2000;
  for (int i = 0; i < kStable; ++i) {
    ASSERT_TRUE(index.Apply(M(absl::StrCat("user:stable", i), Id(i), "block")).ok());
  }
  ASSERT_TRUE(index.Apply(M("cidr:10.0.0.0/8", Id(1u << 30))).ok());
  std::vector<core::Entity> stable;
  for (int i = 0; i < kStable; ++i) stable.push_back(E(absl::StrCat("user:stable", i)));
  const core::Entity ip = E("ip:10.9.8.7");
  std::atomic<bool> stop{false};
  std::atomic<int64_t> failures{0};
  std::atomic<int64_t> lookups{0};

  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937 rng(t);
      Hits hits;
      int64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int i = static_cast<int>(rng() % kStable);
        hits.clear();
        index.Lookup(stable[i], kNow, &hits);
        if (hits.size() != 1 || DecodeId(hits[0].id) != Id(i) ||
            index.ActionName(hits[0].action) != "block") {
          failures.fetch_add(1);
        }
        hits.clear();
        index.Lookup(ip, kNow, &hits);
        if (hits.size() != 1 || hits[0].cidr_prefix != 8) failures.fetch_add(1);
        if (t == 0 && i + 16 <= kStable) {
          Hits batch[16];
          index.LookupBatch(std::span<const core::Entity>(&stable[i], 16), kNow, batch);
          for (int k = 0; k < 16; ++k) {
            if (batch[k].size() != 1 || DecodeId(batch[k][0].id) != Id(i + k)) {
              failures.fetch_add(1);
            }
          }
        }
        ++n;
      }
      lookups.fetch_add(n);
    });
  }
  // The writer: adds and removes many entities, and updates the stable ones in place.
  std::mt19937_64 rng(99);
  constexpr uint64_t kBase = 1'000'000;
  for (int round = 0; round < 4; ++round) {
    for (uint64_t n = 0; n < 30000; ++n) {
      ASSERT_TRUE(index.Apply(M(absl::StrCat("user:churn", n), Id(kBase + n))).ok());
      if (n % 10 == 0) {
        const int i = static_cast<int>(rng() % kStable);
        ASSERT_TRUE(index
                        .Apply(M(absl::StrCat("user:stable", i), Id(i), "block",
                                 MitigationState::kActive, absl::Hours(1 + round)))
                        .ok());
        // A second, short-lived mitigation on a stable entity, added and removed.
        ASSERT_TRUE(index
                        .Apply(M(absl::StrCat("user:stable", i), Id(kBase * 2 + n), "flag",
                                 MitigationState::kActive, -absl::Seconds(1)))
                        .ok());
        ASSERT_TRUE(index
                        .Apply(M(absl::StrCat("user:stable", i), Id(kBase * 2 + n), "flag",
                                 MitigationState::kRevoked))
                        .ok());
        ASSERT_TRUE(index
                        .Apply(M(absl::StrCat("cidr:10.", n % 256, ".0.0/16"), Id(kBase * 3 + n),
                                 "flag", MitigationState::kActive, -absl::Seconds(1)))
                        .ok());
      }
    }
    for (uint64_t n = 0; n < 30000; ++n) {
      ASSERT_TRUE(index
                      .Apply(M(absl::StrCat("user:churn", n), Id(kBase + n), "block",
                               MitigationState::kRevoked))
                      .ok());
    }
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(lookups.load(), 0);
  index.CheckInvariantsForTest();
}

}  // namespace
}  // namespace quell::index
