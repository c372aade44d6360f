// The decision endpoints of the CrowdSec Local API (v1) that bouncers use, so that the
// stock bouncers (crowdsec-firewall-bouncer, crowdsec-custom-bouncer...) enforce Quell's
// ip:/cidr: mitigations unmodified. docs/crowdsec.md is the user-facing contract.
//
//   GET /v1/decisions          live mode: a JSON array, or the literal `null` when empty
//   GET /v1/decisions/stream   {"deleted": [...]|null, "new": [...]|null}
//
// Shapes, key order and the `null`s copy what CrowdSec 1.4 (Debian 12) answers; Go's
// encoder writes struct fields and map keys in alphabetical order.
//
// Which mitigations are decisions: active ones on ip: (scope "Ip") and cidr: (scope
// "Range") whose action's verdict is deny ("ban") or challenge ("captcha"), whatever
// the action's surfaces. Everything else is invisible here.
//
// Decision ids: CrowdSec's are integers, Quell's are 128-bit strings. A decision's id is a
// mix of the 128 bits of its mitigation id folded to 53 bits (so that JSON readers that
// use doubles keep it exact): stable across restarts and the same in live and stream mode.
//
// Stream cursors: CrowdSec keeps a "last pull" per bouncer; Quell keeps the ledger seq of
// each key's last stream pull, in memory. A pull without startup=true from a key with no
// cursor (first pull since this process started) gets the startup answer (every active
// decision as new) plus, as deleted, the decisions that ended in the last changes before
// the start (kRestartLookback) or since: bouncers treat repeated adds and deletes of
// absent values as no-ops, so this is safe and closes the gap of a restart.
//
// A deleted decision is left out while another active decision of the same type holds the
// same value: a bouncer keys its state by value (and type), and deleting it would lift
// the other one too.
//
// Each cursor keeps the action catalog its pull was answered with. When a policy set
// published since gives an action another CrowdSec type (a deny that allows now, an action
// removed, a captcha that bans), the incremental answer would classify what the bouncer
// holds with the new catalog and miss it: the pull is answered as a resync instead (every
// active decision as new, and deleted what the bouncer holds under the old types and no
// longer should).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "api/internal/context.h"
#include "core/action.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "index/index.h"

namespace quell::api::internal {

//! Go's time.Duration.String() of `d` (nanoseconds): "3h59m58.5s", "1m0s", "-11.542ms",
//! "1.5µs", "0s". Exposed for tests through the route replies.
std::string GoDurationString(absl::Duration d);

namespace {

constexpr std::string_view kOrigin = "quell";
// Changes read per pull at most; a longer backlog is served over several pulls.
constexpr int64_t kMaxChangesPerPull = 200000;
// How far before this process's start an unknown cursor looks for ended decisions.
constexpr int64_t kRestartLookback = 10000;
constexpr int kReadBatch = 10000;

enum class Scope : uint8_t { kIp, kRange };

// What the bouncer asked to see. Empty sets mean "no restriction".
struct Filter {
  bool ip = true, range = true;
  bool ban = true, captcha = true;
  bool origin_ok = true;
  int exact_prefix = -1;  // >= 0: only ranges of exactly this length (a `value` query)
  std::vector<std::string> scenarios_containing, scenarios_not_containing;

  bool Wants(Scope scope, std::string_view type, std::string_view scenario) const {
    if (!origin_ok) return false;
    if (scope == Scope::kIp ? !ip : !range) return false;
    if (type == "ban" ? !ban : !captcha) return false;
    if (!scenarios_containing.empty()) {
      bool any = false;
      for (const auto& s : scenarios_containing)
        any = any || scenario.find(s) != std::string_view::npos;
      if (!any) return false;
    }
    for (const auto& s : scenarios_not_containing) {
      if (scenario.find(s) != std::string_view::npos) return false;
    }
    return true;
  }
};

std::vector<std::string> CommaList(std::string_view v) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(AV(v), ',', absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

// Reads the filters both modes share; unknown parameters are ignored, as CrowdSec does
// (bouncers of different versions send different ones).
void ReadCommonFilters(const http::Request& req, Filter* f) {
  for (const auto& [k, v] : req.query) {
    if (k == "origins") {
      auto list = CommaList(v);
      f->origin_ok = list.empty() || std::find(list.begin(), list.end(), kOrigin) != list.end();
    } else if (k == "scenarios_containing") {
      f->scenarios_containing = CommaList(v);
    } else if (k == "scenarios_not_containing") {
      f->scenarios_not_containing = CommaList(v);
    } else if (k == "type") {
      std::string t = absl::AsciiStrToLower(AV(v));
      f->ban = t == "ban";
      f->captcha = t == "captcha";
    }
  }
}

// CrowdSec type of an action, or "" when the action is not a decision.
std::string_view TypeOf(const core::ActionCatalog& catalog, std::string_view action) {
  const core::Action* a = catalog.Find(action);
  if (a == nullptr) return {};
  if (a->verdict == core::Verdict::kDeny) return "ban";
  if (a->verdict == core::Verdict::kChallenge) return "captcha";
  return {};
}

int64_t DecisionId(const std::array<uint8_t, 16>& id) {
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; ++i) hi = hi << 8 | id[i];
  for (int i = 8; i < 16; ++i) lo = lo << 8 | id[i];
  // splitmix64's finaliser over both halves: every input bit moves every output bit.
  uint64_t x = hi ^ (lo * 0x9e3779b97f4a7c15ULL);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  x ^= x >> 31;
  x &= (uint64_t{1} << 53) - 1;
  return x == 0 ? 1 : static_cast<int64_t>(x);
}

int64_t DecisionId(std::string_view mitigation_id) {
  std::array<uint8_t, 16> bin{};
  if (!index::EncodeId(mitigation_id, &bin)) return 1;
  return DecisionId(bin);
}

// Appends one decision object, keys in Go's order.
void AppendDecision(int64_t id, Scope scope, std::string_view type, std::string_view value,
                    std::string_view scenario, absl::Duration left, std::string* out) {
  if (!out->empty() && out->back() != '[') out->push_back(',');
  out->append("{\"duration\":\"");
  out->append(GoDurationString(left));
  absl::StrAppend(out, "\",\"id\":", id, ",\"origin\":\"", AV(kOrigin), "\",\"scenario\":");
  core::AppendJsonString(scenario, out);
  out->append(scope == Scope::kIp ? ",\"scope\":\"Ip\",\"type\":\""
                                  : ",\"scope\":\"Range\",\"type\":\"");
  out->append(type);
  out->append("\",\"value\":");
  core::AppendJsonString(value, out);
  out->push_back('}');
}

// A mitigation as a decision, if it is one: sets scope/type and returns true.
bool AsDecision(const core::ActionCatalog& catalog, const core::Mitigation& m, Scope* scope,
                std::string_view* type) {
  if (m.entity.is_ip()) {
    *scope = Scope::kIp;
  } else if (m.entity.is_cidr()) {
    *scope = Scope::kRange;
  } else {
    return false;
  }
  *type = TypeOf(catalog, m.action);
  return !type->empty();
}

void AppendMitigation(const core::Mitigation& m, Scope scope, std::string_view type, absl::Time now,
                      absl::Time end, std::string* out) {
  AppendDecision(DecisionId(m.id), scope, type, m.entity.id(), m.action, end - now, out);
}

// Whether every action has the same CrowdSec type under both catalogs.
bool SameTypes(const core::ActionCatalog& a, const core::ActionCatalog& b) {
  if (&a == &b) return true;
  for (const core::ActionCatalog* one : {&a, &b}) {
    for (const core::Action& action : one->actions()) {
      if (TypeOf(a, action.name) != TypeOf(b, action.name)) return false;
    }
  }
  return true;
}

// A key's stream position: the ledger seq its last pull covered and the action catalog
// that pull was answered with (what the bouncer's decisions were classified by).
struct Cursor {
  int64_t seq = 0;
  std::shared_ptr<const core::ActionCatalog> catalog;
};

// The per-key pull cursors of stream mode. Thread-safe.
class Cursors {
 public:
  std::optional<Cursor> Get(const std::string& key_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cursors_.find(key_id);
    if (it == cursors_.end()) return std::nullopt;
    return it->second;
  }
  // Keeps the later of `c` and the key's cursor (two pulls of one key can overlap).
  void Set(const std::string& key_id, Cursor c) {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, inserted] = cursors_.try_emplace(key_id, c);
    if (!inserted && c.seq >= it->second.seq) it->second = std::move(c);
  }

 private:
  std::mutex mu_;
  absl::flat_hash_map<std::string, Cursor> cursors_;  // guarded by mu_
};

// State of the route group; lives as long as the routes (shared by their closures).
struct CrowdSec {
  Context* ctx;
  int64_t boot_seq;  // the ledger's last seq when the routes were made
  Cursors cursors;
};

bool MayPull(Call& call) {
  if (call.who.role == auth::Role::kEnforcer || call.who.role == auth::Role::kAdmin) return true;
  call.Fail(ApiError::Forbidden(absl::StrCat(AV(auth::RoleWithArticle(call.who.role)),
                                             " key may not read decisions; use an enforcer key")));
  return false;
}

// The longest-lasting active mitigation the index holds on exactly `entity` (an ip: or
// cidr: entity) with CrowdSec type `type` that the bouncer's filter lets it see, if any.
// A decision the filter hides holds nothing for this bouncer: it never saw it, and would
// never see its end either.
// `ended`: mitigations the pull's changes show ended, which the index may still hold (it
// follows the feed; on PostgreSQL another node's changes can be read before it applied
// them): they hold nothing.
using IdSet = absl::flat_hash_set<std::array<uint8_t, 16>>;
std::optional<index::Hit> LongestHeld(Context& ctx, const core::ActionCatalog& catalog,
                                      const Filter& f, const core::Entity& entity,
                                      std::string_view type, absl::Time now,
                                      const IdSet& ended = {}) {
  const Scope scope = entity.is_ip() ? Scope::kIp : Scope::kRange;
  index::Hits hits;
  ctx.deps.index->Lookup(entity, now, &hits);
  std::optional<index::Hit> longest;
  for (const index::Hit& h : hits) {
    if (h.cidr_prefix >= 0 || ended.contains(h.id)) continue;
    const std::string_view action = ctx.deps.index->ActionName(h.action);
    if (TypeOf(catalog, action) != type || !f.Wants(scope, type, action)) continue;
    if (!longest || h.expires_us > longest->expires_us) longest = h;
  }
  return longest;
}

// ---- live mode ----

// Appends the decisions the index holds for an ip (its own and its covering ranges) or,
// for a range query, the ranges that contain `net` (and the ip itself for a full-length
// prefix), as CrowdSec's default `contains=true` does.
void LiveFromIndex(Context& ctx, const Filter& f, const core::IpAddress& ip, int prefix,
                   bool is_range, std::string* out) {
  const absl::Time now = ctx.deps.clock->Now();
  auto entity = core::Entity::Parse(absl::StrCat("ip:", core::FormatIp(ip)));
  if (!entity.ok()) return;
  index::Hits hits;
  ctx.deps.index->Lookup(*entity, now, &hits);
  const index::Index& idx = *ctx.deps.index;
  for (const index::Hit& h : hits) {
    std::string_view action = idx.ActionName(h.action);
    std::string_view type = TypeOf(*ctx.Catalog(), action);
    if (type.empty()) continue;
    const absl::Duration left = core::FromMicros(h.expires_us) - now;
    if (h.cidr_prefix < 0) {
      if (is_range && prefix != ip.bits()) continue;
      if (!f.Wants(Scope::kIp, type, action)) continue;
      AppendDecision(DecisionId(h.id), Scope::kIp, type, entity->id(), action, left, out);
    } else {
      if (is_range && h.cidr_prefix > prefix) continue;
      if (f.exact_prefix >= 0 && h.cidr_prefix != f.exact_prefix) continue;
      if (!f.Wants(Scope::kRange, type, action)) continue;
      core::Network net{core::MaskIp(ip, h.cidr_prefix), h.cidr_prefix};
      AppendDecision(DecisionId(h.id), Scope::kRange, type, core::FormatNetwork(net), action, left,
                     out);
    }
  }
}

void ReplyList(Call& call, std::string items) {
  // Go encodes an empty (nil) slice as null, and the bouncers expect exactly that.
  if (call.req.method == "HEAD") return call.Send(200, "");
  call.Send(200, items.size() <= 1 ? std::string("null") : absl::StrCat(items, "]"));
}

void LiveDecisions(CrowdSec& cs, Call&& call) {
  if (!MayPull(call)) return;
  Context& ctx = *cs.ctx;
  Filter f;
  ReadCommonFilters(call.req, &f);
  std::optional<std::string> ip_text, range_text, value;
  std::string scope;
  for (const auto& [k, v] : call.req.query) {
    if (k == "ip") ip_text = v;
    if (k == "range") range_text = v;
    if (k == "value") value = v;
    if (k == "scope") scope = absl::AsciiStrToLower(AV(v));
  }
  if (!scope.empty()) {
    f.ip = scope == "ip";
    f.range = scope == "range";
  }
  std::string items = "[";
  if (value && !ip_text && !range_text) {
    // CrowdSec's `value` (with or without `scope`) matches a decision's value exactly: an
    // address is the ip decision on it, a CIDR the range decision on exactly that range
    // (`ip=` and `range=` are the queries that also return covering ranges). A value that
    // is neither has no decision here (Quell answers the ip and range scopes).
    if (auto ip = core::ParseIp(*value); ip.ok()) {
      f.range = false;
      if (f.ip) LiveFromIndex(ctx, f, *ip, ip->bits(), false, &items);
    } else if (auto net = core::ParseNetwork(*value); net.ok()) {
      f.ip = false;
      f.exact_prefix = net->prefix;
      if (f.range) LiveFromIndex(ctx, f, net->address, net->prefix, true, &items);
    }
    return ReplyList(call, std::move(items));
  }
  if (ip_text) {
    auto ip = core::ParseIp(*ip_text);
    if (!ip.ok()) return call.Fail(ApiError::Field("query.ip", "not an IP address"));
    LiveFromIndex(ctx, f, *ip, ip->bits(), false, &items);
    return ReplyList(call, std::move(items));
  }
  if (range_text) {
    auto net = core::ParseNetwork(*range_text);
    if (!net.ok()) {
      // A bare address is a full-length range.
      auto ip = core::ParseIp(*range_text);
      if (!ip.ok())
        return call.Fail(ApiError::Field("query.range", std::string(SV(net.status().message()))));
      net = core::Network{*ip, ip->bits()};
    }
    LiveFromIndex(ctx, f, net->address, net->prefix, true, &items);
    return ReplyList(call, std::move(items));
  }
  if (!f.ip && !f.range)
    return ReplyList(call, std::move(items));  // a scope Quell has no decisions in
  // No value: every active decision, from one consistent read of the store.
  ctx.OffLoop(std::move(call), [&ctx, f, items = std::move(items)](Call& call) mutable {
    const absl::Time now = ctx.deps.clock->Now();
    auto seq = ctx.deps.ledger->store().ScanLive([&](const core::Mitigation& m) {
      Scope scope;
      std::string_view type;
      if (m.state == core::MitigationState::kActive && m.expires_at > now &&
          AsDecision(*ctx.Catalog(), m, &scope, &type) && f.Wants(scope, type, m.action)) {
        AppendMitigation(m, scope, type, now, m.expires_at, &items);
      }
      return absl::OkStatus();
    });
    if (!seq.ok()) return call.Fail(ApiError::FromStatus(seq.status()));
    ReplyList(call, std::move(items));
  });
}

// ---- stream mode ----

// What one pull sends. One new decision per (type, value), the longest-lasting, as
// CrowdSec does (crowdsecurity/crowdsec#1158): a bouncer sets one timeout per value, so a
// shorter decision sent after a longer one would end the ban early.
struct StreamOut {
  struct Added {
    int64_t id;
    Scope scope;
    std::string type, value, scenario;
    absl::Time end;
  };
  std::vector<std::string> order;                 // value keys, first seen first
  absl::flat_hash_map<std::string, Added> added;  // by ValueKey
  std::string deleted = "[";

  void Add(Added a) {
    std::string key = absl::StrCat(a.type, " ", a.value);
    auto [it, inserted] = added.try_emplace(key, a);
    if (inserted) {
      order.push_back(std::move(key));
    } else if (a.end > it->second.end) {
      it->second = std::move(a);
    }
  }
  bool Has(std::string_view type, std::string_view value) const {
    return added.contains(absl::StrCat(AV(type), " ", AV(value)));
  }
  std::string AddedJson(absl::Time now) const {
    std::string out = "[";
    for (const std::string& key : order) {
      const Added& a = added.at(key);
      AppendDecision(a.id, a.scope, a.type, a.value, a.scenario, a.end - now, &out);
    }
    return out;
  }
};

StreamOut::Added AsAdded(const core::Mitigation& m, Scope scope, std::string_view type) {
  return {DecisionId(m.id),           scope,    std::string(type),
          std::string(m.entity.id()), m.action, m.expires_at};
}

// Every active decision under `catalog`, as of one consistent read; returns that read's
// seq. With `before` (a resync after the catalog changed): also, in deleted, each active
// mitigation's decision under `before` that it no longer is (its type changed or it is no
// decision now), unless an active decision of that type holds its value.
absl::StatusOr<int64_t> AppendAllActive(Context& ctx, const core::ActionCatalog& catalog,
                                        const core::ActionCatalog* before, const Filter& f,
                                        absl::Time now, StreamOut* out) {
  // What the bouncer holds that it no longer should: its old type, as AppendDecision
  // writes it (a few strings each, not the whole mitigation: a resync may meet millions).
  struct Retyped {
    int64_t id;
    Scope scope;
    std::string_view type;
    std::string value, action;
  };
  std::vector<Retyped> retyped;
  auto seq = ctx.deps.ledger->store().ScanLive([&](const core::Mitigation& m) {
    if (m.state != core::MitigationState::kActive || m.expires_at <= now) {
      return absl::OkStatus();
    }
    Scope scope;
    std::string_view type;
    if (AsDecision(catalog, m, &scope, &type) && f.Wants(scope, type, m.action)) {
      out->Add(AsAdded(m, scope, type));
    }
    std::string_view old_type;
    if (before != nullptr && AsDecision(*before, m, &scope, &old_type) && old_type != type &&
        f.Wants(scope, old_type, m.action)) {
      retyped.push_back({DecisionId(m.id), scope, old_type, std::string(m.entity.id()), m.action});
    }
    return absl::OkStatus();
  });
  for (const Retyped& r : retyped) {
    if (out->Has(r.type, r.value)) continue;
    AppendDecision(r.id, r.scope, r.type, r.value, r.action, absl::ZeroDuration(), &out->deleted);
  }
  return seq;
}

// Reads the changes in (after, upto] (upto < 0: to the end, at most kMaxChangesPerPull)
// and appends the decisions that started to `out->added` (unless `only_deleted`) and
// those that ended to `out->deleted`, as `catalog` classifies them; with `before` (a
// resync after the catalog changed), the ended ones as `before` did: what the bouncer was
// sent. Returns the last seq read.
absl::StatusOr<int64_t> AppendChanges(Context& ctx, const core::ActionCatalog& catalog,
                                      const core::ActionCatalog* before, const Filter& f,
                                      int64_t after, int64_t upto, bool only_deleted,
                                      absl::Time now, StreamOut* out) {
  // The last state of each mitigation in the window, in first-seen order.
  absl::flat_hash_map<std::string, size_t> slot;
  std::vector<core::Mitigation> last;
  int64_t seq = after;
  int64_t read = 0;
  while (read < kMaxChangesPerPull && (upto < 0 || seq < upto)) {
    int limit = kReadBatch;
    if (upto >= 0) limit = static_cast<int>(std::min<int64_t>(limit, upto - seq));
    auto changes = ledger::ReadDurableChanges(*ctx.deps.ledger, seq, limit);
    if (!changes.ok()) return changes.status();
    for (const ledger::Change& c : *changes) {
      seq = c.seq;
      if (c.kind != ledger::ChangeKind::kMitigation) continue;
      std::string_view e = c.entity;
      if (!StartsWith(e, "ip:") && !StartsWith(e, "cidr:")) continue;
      auto m = core::MitigationFromJson(c.payload);
      if (!m.ok()) continue;  // not a mitigation payload: nothing a bouncer could enforce
      auto [it, inserted] = slot.try_emplace(m->id, last.size());
      if (inserted) {
        last.push_back(*std::move(m));
      } else {
        last[it->second] = *std::move(m);
      }
    }
    read += static_cast<int64_t>(changes->size());
    if (static_cast<int>(changes->size()) < limit) break;
  }
  // Ended in this window, whatever the (possibly lagging) index still holds.
  IdSet ended_ids;
  for (const core::Mitigation& m : last) {
    if (m.state == core::MitigationState::kActive && m.expires_at > now) continue;
    std::array<uint8_t, 16> bin{};
    if (index::EncodeId(m.id, &bin)) ended_ids.insert(bin);
  }
  // Each ended one with the scope and type it is deleted as.
  struct Ended {
    const core::Mitigation* m;
    Scope scope;
    std::string_view type;
  };
  std::vector<Ended> ended;
  for (const core::Mitigation& m : last) {
    Scope scope;
    std::string_view type;
    const bool live = m.state == core::MitigationState::kActive && m.expires_at > now;
    // One that ended, in a resync, is deleted as the bouncer holds it: as `before` typed it.
    const core::ActionCatalog& by = live || before == nullptr ? catalog : *before;
    if (!AsDecision(by, m, &scope, &type) || !f.Wants(scope, type, m.action)) continue;
    if (live) {
      if (only_deleted) continue;
      out->Add(AsAdded(m, scope, type));
      // A longer decision on the value from before this window is the one to keep.
      if (std::optional<index::Hit> held =
              LongestHeld(ctx, catalog, f, m.entity, type, now, ended_ids)) {
        const std::string_view action = ctx.deps.index->ActionName(held->action);
        out->Add({DecisionId(held->id), scope, std::string(type), std::string(m.entity.id()),
                  std::string(action), core::FromMicros(held->expires_us)});
      }
    } else if (m.state == core::MitigationState::kActive ||
               m.state == core::MitigationState::kExpired ||
               m.state == core::MitigationState::kRevoked) {
      ended.push_back({&m, scope, type});
    }
  }
  for (const auto& [m, scope, type] : ended) {
    if (out->Has(type, m->entity.id())) continue;
    if (LongestHeld(ctx, catalog, f, m->entity, type, now, ended_ids)) continue;
    // Negative, like CrowdSec's for an ended decision: it ended at the earlier of its
    // expiry and its last change.
    AppendMitigation(*m, scope, type, now, std::min(m->expires_at, m->updated_at), &out->deleted);
  }
  return seq;
}

void StreamDecisions(const std::shared_ptr<CrowdSec>& cs_ptr, Call&& call) {
  CrowdSec& cs = *cs_ptr;
  if (!MayPull(call)) return;
  // HEAD: the bouncer gets no body, so its cursor must not move (as CrowdSec does).
  if (call.req.method == "HEAD") return call.Send(200, "");
  Filter f;
  ReadCommonFilters(call.req, &f);
  f.ip = f.range = false;
  bool startup = false;
  std::string scopes = "ip,range";  // CrowdSec's default
  for (const auto& [k, v] : call.req.query) {
    if (k == "startup") startup = v == "true";
    if (k == "scopes") scopes = absl::AsciiStrToLower(AV(v));
  }
  for (const std::string& s : CommaList(scopes)) {
    f.ip = f.ip || s == "ip";
    f.range = f.range || s == "range";
  }
  cs.ctx->OffLoop(std::move(call), [cs_ptr, f, startup](Call& call) {
    CrowdSec& cs = *cs_ptr;
    Context& ctx = *cs.ctx;
    const absl::Time now = ctx.deps.clock->Now();
    const std::string key = call.who.key_id;
    // One catalog for the whole answer (a publish meanwhile is the next pull's).
    const std::shared_ptr<const core::ActionCatalog> catalog = ctx.Catalog();
    std::optional<Cursor> cursor = startup ? std::nullopt : cs.cursors.Get(key);
    // Types changed since the bouncer's last pull: resync from its cursor (below).
    const core::ActionCatalog* before = nullptr;
    if (cursor && !SameTypes(*cursor->catalog, *catalog)) before = cursor->catalog.get();
    StreamOut out;
    absl::StatusOr<int64_t> seq;
    if (cursor && before == nullptr) {
      seq = AppendChanges(ctx, *catalog, nullptr, f, cursor->seq, -1, false, now, &out);
    } else {
      seq = AppendAllActive(ctx, *catalog, before, f, now, &out);
      // The cursor kept for this bouncer must be durable (a crash could reuse a later
      // seq), and the lookback below reads only durable changes: wait for the scan's seq.
      if (seq.ok()) {
        if (absl::Status st = ledger::WaitDurable(*ctx.deps.ledger, *seq, absl::Seconds(10));
            !st.ok()) {
          seq = st;
        }
      }
      if (seq.ok() && !startup) {
        // A resync: every decision that ended since the bouncer's cursor, read a page of
        // kMaxChangesPerPull changes at a time (the cursor moves to the scan's seq, so a
        // backlog cannot wait for the next pull). A delete is held back while a decision
        // of this answer holds the value, so one that ended and came back is not lifted.
        // After a restart: a look-back.
        int64_t from =
            before != nullptr
                ? cursor->seq
                : std::max<int64_t>({0, cs.boot_seq - kRestartLookback, *seq - kMaxChangesPerPull});
        while (seq.ok() && from < *seq) {
          auto s = AppendChanges(ctx, *catalog, before, f, from, *seq, true, now, &out);
          if (!s.ok()) {
            seq = s.status();
          } else if (*s <= from) {
            break;  // nothing more to read (cannot happen below the durable seq)
          } else {
            from = *s;
          }
        }
      }
    }
    if (!seq.ok()) return call.Fail(ApiError::FromStatus(seq.status()));
    auto list = [](std::string& items) {
      return items.size() <= 1 ? std::string("null") : items + "]";
    };
    std::string added = out.AddedJson(now);
    std::string body =
        absl::StrCat("{\"deleted\":", list(out.deleted), ",\"new\":", list(added), "}");
    cs.cursors.Set(key, {*seq, catalog});
    call.Send(200, std::move(body));
  });
}

}  // namespace

std::string GoDurationString(absl::Duration d) {
  int64_t ns = absl::ToInt64Nanoseconds(d);
  if (ns == 0) return "0s";
  const bool neg = ns < 0;
  uint64_t u = neg ? ~static_cast<uint64_t>(ns) + 1 : static_cast<uint64_t>(ns);
  // "<v / 10^prec>[.<v % 10^prec without trailing zeros>]"
  auto fixed = [](uint64_t v, int prec) {
    uint64_t scale = 1;
    for (int i = 0; i < prec; ++i) scale *= 10;
    std::string s = std::to_string(v / scale);
    uint64_t frac = v % scale;
    if (frac != 0) {
      std::string digits = std::to_string(frac);
      digits.insert(0, static_cast<size_t>(prec) - digits.size(), '0');
      while (digits.back() == '0') digits.pop_back();
      absl::StrAppend(&s, ".", digits);
    }
    return s;
  };
  std::string out = neg ? "-" : "";
  if (u < 1000) {
    absl::StrAppend(&out, u, "ns");
  } else if (u < 1000000) {
    absl::StrAppend(&out, fixed(u, 3), "\xC2\xB5s");  // U+00B5, as Go writes it
  } else if (u < 1000000000) {
    absl::StrAppend(&out, fixed(u, 6), "ms");
  } else {
    const uint64_t secs = u / 1000000000;
    const std::string s = fixed(secs % 60 * 1000000000 + u % 1000000000, 9);
    const uint64_t mins = secs / 60;
    if (mins > 0) {
      const uint64_t hours = mins / 60;
      if (hours > 0) absl::StrAppend(&out, hours, "h");
      absl::StrAppend(&out, mins % 60, "m");
    }
    absl::StrAppend(&out, s, "s");
  }
  return out;
}

void AddCrowdSecRoutes(Router& router, Context& ctx) {
  auto cs = std::make_shared<CrowdSec>();
  cs->ctx = &ctx;
  cs->boot_seq = ctx.deps.ledger->last_seq();
  const Access access{Access::Kind::kCrowdSecKey, auth::Permission::kCheck};
  router.Add(
      "GET", "/v1/decisions", access, [cs](Call&& call) { LiveDecisions(*cs, std::move(call)); },
      Router::Query::kHandler);
  router.Add(
      "GET", "/v1/decisions/stream", access,
      [cs](Call&& call) { StreamDecisions(cs, std::move(call)); }, Router::Query::kHandler);
}

}  // namespace quell::api::internal
