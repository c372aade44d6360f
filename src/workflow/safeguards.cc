#include "workflow/safeguards.h"

#include <algorithm>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/journal.h"
#include "obs/log.h"
#include "rapidjson/document.h"
#include "rapidjson/memorystream.h"
#include "rapidjson/reader.h"

namespace quell::workflow {
namespace {

std::string ImmunityKey(std::string_view entity, std::string_view policy, std::string_view action) {
  return absl::StrCat(AV(entity), "|", AV(policy), "|", AV(action));
}

// Whether immunity on `entity` is kept as a network (Safeguards::net_immunity_).
bool IsNetworkEntity(std::string_view entity) {
  return entity.starts_with("ip:") || entity.starts_with("cidr:");
}

// The network an ip: or cidr: entity stands for (an address as a /32 or /128); nullopt for
// other entities and for text that is not one (entities are validated on the way in).
std::optional<core::Network> EntityNetwork(std::string_view entity) {
  if (entity.starts_with("ip:")) {
    auto ip = core::ParseIp(entity.substr(3));
    if (!ip.ok()) return std::nullopt;
    return core::Network{*ip, ip->bits()};
  }
  if (entity.starts_with("cidr:")) {
    auto net = core::ParseNetwork(entity.substr(5));
    if (!net.ok()) return std::nullopt;
    return *net;
  }
  return std::nullopt;
}

// Why a decision is held for an immunity until `until` of `policy` / `action` on `on` ("this
// entity", or the cleared one and how the decision's network relates to it).
std::string ImmunityReason(absl::Time until, std::string_view policy, std::string_view action,
                           std::string_view on) {
  return absl::StrCat("immunity until ", core::FormatRfc3339(until),
                      ": a person revoked, rejected or granted an appeal against ", AV(policy),
                      " / ", AV(action), " on ", AV(on));
}

std::string_view Str(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return {};
  return {it->value.GetString(), it->value.GetStringLength()};
}

safeguards::BreakerSpec ToSpec(const policy::BreakerDef& d) {
  safeguards::BreakerSpec s;
  s.name = d.name;
  switch (d.scope) {
    case policy::BreakerDef::Scope::kGlobal:
      s.scope = safeguards::BreakerSpec::Scope::kGlobal;
      break;
    case policy::BreakerDef::Scope::kPolicy:
      s.scope = safeguards::BreakerSpec::Scope::kPolicy;
      break;
    case policy::BreakerDef::Scope::kAction:
      s.scope = safeguards::BreakerSpec::Scope::kAction;
      break;
    case policy::BreakerDef::Scope::kSource:
      s.scope = safeguards::BreakerSpec::Scope::kSource;
      break;
  }
  s.scope_value = d.scope_value;
  s.limit = d.limit;
  s.window = d.window;
  if (d.relative) {
    s.factor = d.relative->factor;
    s.baseline = d.relative->baseline;
  }
  return s;
}

std::string BreakerPayload(std::string_view name, bool open, std::string_view reason,
                           int64_t count) {
  std::string p = "{\"breaker\":";
  core::AppendJsonString(name, &p);
  absl::StrAppend(&p, ",\"state\":\"", open ? "open" : "closed", "\",\"count\":", count,
                  ",\"reason\":");
  core::AppendJsonString(reason, &p);
  p += "}";
  return p;
}

// Top-level string fields of a mitigation's JSON, and the first of its detections, read
// without building the document: a SAX pass that stops once it has every one asked for.
// Immunity reads three fields of each revoked mitigation (a rollback brings 100,000 at
// once); the breakers read other nodes' creations (every node reads all of them).
struct MitigationField {
  std::string_view key;
  std::string* out;
};

class MitigationFieldsHandler
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, MitigationFieldsHandler> {
 public:
  MitigationFieldsHandler(std::initializer_list<MitigationField> fields,
                          std::string* first_detection)
      : fields_(fields),
        first_detection_(first_detection),
        missing_(fields.size() + (first_detection != nullptr ? 1 : 0)) {}
  bool Default() { return true; }
  bool StartObject() {
    ++depth_;
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    --depth_;
    return true;
  }
  bool StartArray() {
    ++arrays_;
    in_detections_ = depth_ == 1 && arrays_ == 1 && key_ == "detections";
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    if (--arrays_ == 0) in_detections_ = false;
    return true;
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    if (depth_ == 1 && arrays_ == 0) key_.assign(s, n);
    return true;
  }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    if (in_detections_) {
      if (first_detection_ != nullptr && !seen_detection_) {
        first_detection_->assign(s, n);
        seen_detection_ = true;
        --missing_;
      }
    } else if (depth_ == 1 && arrays_ == 0) {
      for (const MitigationField& f : fields_) {
        if (f.key == key_) {
          f.out->assign(s, n);
          --missing_;
          break;
        }
      }
    }
    return missing_ > 0;  // false stops the reader: everything asked for is read
  }
  bool complete() const { return missing_ == 0; }

 private:
  std::initializer_list<MitigationField> fields_;
  std::string* first_detection_;
  size_t missing_;
  int depth_ = 0;
  int arrays_ = 0;
  bool in_detections_ = false;
  bool seen_detection_ = false;
  std::string key_;  // a copy: the reader's key buffer is reused
};

// True if `json` parsed, or the pass stopped early with every field read. A field absent
// from the JSON is left as it was.
bool ReadMitigationFields(std::string_view json, std::initializer_list<MitigationField> fields,
                          std::string* first_detection = nullptr) {
  MitigationFieldsHandler handler(fields, first_detection);
  rapidjson::Reader reader;
  rapidjson::MemoryStream ms(json.data(), json.size());
  return !reader.Parse(ms, handler).IsError() || handler.complete();
}

// What OnCommitted needs of a mitigation another node created.
struct CreationFields {
  std::string state, policy, action, source, state_reason, detection;  // the first detection
};

// The state a decision's mitigation is created in when no safeguard holds it (as
// decisions.cc sets it): the live mitigation it would extend is in the same state.
core::MitigationState UnheldState(const engine::Proposal& p) {
  return p.delay > absl::ZeroDuration() ? core::MitigationState::kScheduled
                                        : core::MitigationState::kActive;
}

// The decisions kept for breakers configured later (Safeguards::recent_): at least this
// long back, at most this many.
constexpr absl::Duration kRecentHorizon = absl::Hours(24);
constexpr size_t kMaxRecent = 100000;
// Safeguards::names_ is compacted past this many names at least.
constexpr size_t kMinNamesCompaction = 1024;
// The longest breaker window of `set` (zero without breakers, or without a set).
absl::Duration LongestWindow(const policy::PolicySet* set) {
  absl::Duration longest = absl::ZeroDuration();
  if (set != nullptr) {
    for (const policy::BreakerDef& b : set->breakers()) longest = std::max(longest, b.window);
  }
  return longest;
}

// This process's decisions awaiting their change from the feed.
constexpr size_t kMaxLocal = 1000000;
// Screen reads at most this many undelivered changes (one query).
constexpr int kMaxCatchUp = 10000;
// Load counts the decisions of at most this many of the ledger's last changes again.
constexpr int64_t kMaxRecount = kMaxRecent;

// The first seq in [from, last] whose change was committed at or after `since`, or
// last + 1: a binary search on seqs (dense, and in commit order, as their times are).
absl::StatusOr<int64_t> FirstSeqSince(ledger::Store& store, int64_t from, int64_t last,
                                      absl::Time since) {
  int64_t lo = from, hi = last + 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    QUELL_ASSIGN_OR_RETURN(std::vector<ledger::Change> one, store.ReadChanges(mid - 1, 1));
    if (!one.empty() && one[0].seq == mid && one[0].at < since) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace

Safeguards::Safeguards(SafeguardOptions options, obs::Logger* logger)
    : options_(options),
      logger_(logger),
      names_compact_at_(kMinNamesCompaction),
      recent_horizon_(kRecentHorizon) {}

absl::Status Safeguards::Load(ledger::Store& store, absl::Time now, Delivery delivery,
                              const policy::PolicySet* set) {
  // First: every breaker change up to it is in the journal read below; later ones come
  // through OnCommitted.
  QUELL_ASSIGN_OR_RETURN(int64_t last_seq, store.LastSeq());
  // The recent decisions, counted again: a restart (or an import resumed after Ctrl-C)
  // must not let a breaker's window start empty, nor one that a later set adds. Not with
  // a set without breakers: every start would read up to kMaxRecount changes for none.
  const absl::Duration longest = LongestWindow(set);
  recent_horizon_ = std::max(kRecentHorizon, longest);
  if (longest > absl::ZeroDuration() && last_seq > 0) {
    // From twice the window back: the search assumes times rise with seqs, and on
    // PostgreSQL each node stamps its changes with its own clock. A start too early costs
    // nothing (the bank drops what is older than its windows); too late, it undercounts.
    QUELL_ASSIGN_OR_RETURN(int64_t seq,
                           FirstSeqSince(store, std::max<int64_t>(1, last_seq - kMaxRecount + 1),
                                         last_seq, now - std::max(2 * longest, kRecentHorizon)));
    while (seq <= last_seq) {
      QUELL_ASSIGN_OR_RETURN(std::vector<ledger::Change> page,
                             store.ReadChanges(seq - 1, static_cast<int>(std::min<int64_t>(
                                                            1000, last_seq - seq + 1))));
      if (page.empty()) break;
      std::lock_guard<std::mutex> lock(mu_);
      for (const ledger::Change& c : page) {
        if (c.kind == ledger::ChangeKind::kMitigation && c.seq <= last_seq) {
          NoteMitigationChange(c, /*recounted=*/true);
        }
      }
      seq = page.back().seq + 1;
    }
  }
  QUELL_ASSIGN_OR_RETURN(std::vector<ledger::ListInfo> lists, store.Lists());
  std::map<std::string, core::EntityList, std::less<>> entries;
  QUELL_RETURN_IF_ERROR(store
                            .ScanListEntries([&](std::string_view list, std::string_view entity) {
                              entries[std::string(list)].Insert(entity);
                              return absl::OkStatus();
                            })
                            .status());
  // Breaker states: their changes are filed under one journal entity.
  QUELL_ASSIGN_OR_RETURN(std::vector<ledger::Change> breaker_changes,
                         ledger::ReadJournal(store, kBreakerJournal, ledger::ChangeKind::kBreaker));
  std::vector<core::Mitigation> human;
  for (core::MitigationState state :
       {core::MitigationState::kRevoked, core::MitigationState::kRejected}) {
    ledger::MitigationQuery q;
    q.state = state;
    q.limit = 10000;  // the store's page limit
    while (true) {
      QUELL_ASSIGN_OR_RETURN(ledger::MitigationPage page, store.ListMitigations(q));
      for (core::Mitigation& m : page.mitigations) {
        // A manual one (no policy) counts when policies' hits are on it (NoteHumanDecision).
        if ((!m.policy.empty() || !m.detection_policies.empty()) &&
            m.updated_at + options_.immunity > now)
          human.push_back(std::move(m));
      }
      if (page.next_cursor.empty()) break;
      q.cursor = page.next_cursor;
    }
  }
  QUELL_RETURN_IF_ERROR(rollbacks_.Load(store));
  std::lock_guard<std::mutex> lock(mu_);
  store_ = delivery == Delivery::kFeed ? &store : nullptr;
  seen_ = last_seq;
  for (const auto& l : lists) {
    if (l.is_protected) store_protected_.insert(l.name);
  }
  lists_ = std::move(entries);
  ++lists_version_;
  for (const ledger::Change& c : breaker_changes) ApplyBreakerChange(c);
  for (const core::Mitigation& m : human) NoteHumanDecision(m, m.updated_at);
  return absl::OkStatus();
}

void Safeguards::OnCommitted(const std::vector<ledger::Change>& changes) {
  rollbacks_.OnCommitted(changes);
  std::lock_guard<std::mutex> lock(mu_);
  for (const ledger::Change& c : changes) {
    // This process's decisions whose seq passed without their change: rolled back.
    while (!local_.empty() && local_.front().seq < c.seq) local_.pop_front();
    switch (c.kind) {
      case ledger::ChangeKind::kList:
        ApplyListChange(c);
        break;
      case ledger::ChangeKind::kBreaker:
        if (c.seq > seen_) ApplyBreakerChange(c);  // else read by Screen or by Load
        break;
      case ledger::ChangeKind::kMitigation: {
        if (c.seq > seen_) NoteMitigationChange(c);  // else read by Screen, or before Load
        // Cheap filter first: most changes are creations and expiries. The record's state
        // key comes fourth, and its text cannot occur inside a string (quotes there are
        // escaped); only "revoked" and "rejected" start with "re".
        std::string_view p = c.payload;
        constexpr std::string_view kState = "\"state\":\"";
        const size_t at = p.find(kState);
        if (at == std::string_view::npos || p.substr(at + kState.size(), 2) != "re") break;
        // A rollback brings 100,000 of these at once: read only the fields immunity needs,
        // unless other policies' hits are on it (then all of it, for their names).
        if (p.find("\"detection_policies\":[\"") != std::string_view::npos) {
          if (auto m = core::MitigationFromJson(p); m.ok()) NoteHumanDecision(*m, c.at);
          break;
        }
        std::string state, policy, action;
        if (ReadMitigationFields(p,
                                 {{"state", &state}, {"policy", &policy}, {"action", &action}}) &&
            (state == "revoked" || state == "rejected")) {
          NoteHumanDecision(c.entity, policy, action, c.at);
        }
        break;
      }
      default:
        break;
    }
    while (!local_.empty() && local_.front().seq <= c.seq) local_.pop_front();
    if (c.seq > seen_) seen_ = c.seq;
  }
}

void Safeguards::CatchUp(ledger::Txn& txn, const safeguards::DecisionKey& key, absl::Time now) {
  // Inside the transaction nothing else commits (PostgreSQL: the chain-head lock), so
  // the other nodes' changes this node has not seen are among those after seen_ up to
  // NextSeq() - 1, less this process's own decisions there (counted already: this
  // transaction's, or earlier ones the feed has not brought back yet). Only if that many
  // could take a breaker past its limit are they read: near the limit, about one query
  // per transaction (more if the transaction appended other changes).
  const int64_t last = txn.NextSeq() - 1;
  if (store_ == nullptr || last <= seen_ || !bank_.MayTrip(key, now, last - seen_)) return;
  int64_t own = 0;
  for (auto it = local_.rbegin(); it != local_.rend() && it->seq > seen_; ++it) {
    if (it->seq <= last) ++own;
  }
  if (!bank_.MayTrip(key, now, last - seen_ - own)) return;
  // Only as many as are committed (the store's head): a read for more would walk on
  // through this transaction's own uncommitted rows to find none visible — once per
  // decision near the limit, quadratic in a large batch, with the chain-head lock held
  // (every node's writes waited). Once read, the rest after seen_ are this transaction's.
  absl::StatusOr<int64_t> committed = store_->LastSeq();
  absl::StatusOr<std::vector<ledger::Change>> page;
  if (!committed.ok()) {
    page = committed.status();
  } else if (*committed <= seen_) {
    return;
  } else {
    page = store_->ReadChanges(
        seen_, static_cast<int>(std::min<int64_t>(kMaxCatchUp, *committed - seen_)));
  }
  if (!page.ok()) {
    // Dropped on purpose: the decision goes on with the counts it has (the feed's), as
    // a breaker check must not fail a decision the transaction can still make.
    if (logger_ != nullptr) {
      logger_->Warn("breakers: could not read the changes the feed has not delivered yet",
                    {{"error", std::string(SV(page.status().message()))}});
    }
    return;
  }
  for (const ledger::Change& c : *page) {
    if (c.seq <= seen_) continue;
    if (c.kind == ledger::ChangeKind::kMitigation) NoteMitigationChange(c);
    if (c.kind == ledger::ChangeKind::kBreaker) ApplyBreakerChange(c);  // opened elsewhere
    seen_ = c.seq;
  }
}

void Safeguards::NoteMitigationChange(const ledger::Change& c, bool recounted) {
  // What Screen counts: a mitigation created by a policy's decision, enforced now or
  // later: its first change, active or scheduled with no state_reason (approvals,
  // extensions and scheduled starts all set one); shadow, pending and manual ones (no
  // policy) are not counted. Cheap filters on the payload first: its fields are
  // in a fixed order and quotes inside strings are escaped, so neither can be faked.
  CreationFields f;
  if (c.mitigation != nullptr) {
    const core::Mitigation& m = *c.mitigation;
    if ((m.state != core::MitigationState::kActive &&
         m.state != core::MitigationState::kScheduled) ||
        !m.state_reason.empty() || m.policy.empty()) {
      return;
    }
    f.state = std::string(core::StateName(m.state));
    f.policy = m.policy;
    f.action = m.action;
    f.source = m.source;
    f.state_reason = m.state_reason;
    if (!m.detections.empty()) f.detection = m.detections.front();
  } else {
    std::string_view p = c.payload;
    if (p.rfind("\"state_reason\":\"\"") == std::string_view::npos) return;
    if (p.find("\"state\":\"active\"") == std::string_view::npos &&
        p.find("\"state\":\"scheduled\"") == std::string_view::npos) {
      return;
    }
    if (!ReadMitigationFields(p,
                              {{"state", &f.state},
                               {"policy", &f.policy},
                               {"action", &f.action},
                               {"source", &f.source},
                               {"state_reason", &f.state_reason}},
                              &f.detection)) {
      return;
    }
  }
  if ((f.state != "active" && f.state != "scheduled") || !f.state_reason.empty() ||
      f.policy.empty()) {
    return;
  }
  // This process's own decision: Screen counted it already and kept it in recent_,
  // unless the set it screened had no breakers (it could not tell a creation then).
  for (const LocalDecision& l : local_) {
    if (l.seq > c.seq) break;
    if (l.seq == c.seq && l.source == f.source && l.detection == f.detection) {
      if (l.noted) return;
      NoteRecent(f.policy, f.action, f.source, c.at);
      // Breakers configured since (a set with them came): it counts in them now, once.
      if (breakers_set_ >= 0) bank_.CountRemote({f.policy, f.action, f.source}, c.at);
      return;
    }
  }
  // Kept, for the breakers a later set adds or reshapes.
  NoteRecent(f.policy, f.action, f.source, c.at);
  if (breakers_set_ < 0) {  // counted from recent_ when the bank is configured
    if (!recounted) metrics_.remote_decisions.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (bank_.empty()) return;
  if (!recounted) metrics_.remote_decisions.fetch_add(1, std::memory_order_relaxed);
  bank_.CountRemote({f.policy, f.action, f.source}, c.at);
}

void Safeguards::NoteRecent(std::string_view policy, std::string_view action,
                            std::string_view source, absl::Time at) {
  auto intern = [this](std::string_view name) -> std::string_view {
    return *names_.emplace(name).first;
  };
  recent_.push_back({intern(policy), intern(action), intern(source), at});
  while (recent_.size() > kMaxRecent || recent_.front().at < at - recent_horizon_) {
    recent_.pop_front();
  }
  // Sources are clients' names: the names no kept decision uses any more go, now and
  // then (when the set has doubled since the last time).
  if (names_.size() > names_compact_at_) {
    absl::node_hash_set<std::string> kept;
    for (RecentDecision& e : recent_) {
      e.policy = *kept.emplace(e.policy).first;
      e.action = *kept.emplace(e.action).first;
      e.source = *kept.emplace(e.source).first;
    }
    names_ = std::move(kept);  // nodes move with the set: the views stay valid
    names_compact_at_ = std::max(kMinNamesCompaction, 2 * names_.size());
  }
}

void Safeguards::NoteLocal(int64_t seq, const engine::Detection& d, bool noted) {
  // Bounded, should the feed stay down for long (the ledger then completes
  // batches undelivered): the oldest are dropped, and counted once more when they come
  // back (more, never fewer).
  if (local_.size() == kMaxLocal) local_.pop_front();
  local_.push_back({seq, d.source, d.id, noted});
}

void Safeguards::ApplyListChange(const ledger::Change& c) {
  rapidjson::Document doc;
  doc.Parse(c.payload.data(), c.payload.size());
  if (doc.HasParseError() || !doc.IsObject()) return;
  std::string list(Str(doc, "list"));
  if (list.empty()) return;
  auto& set = lists_[list];
  auto each = [&](const char* field, bool add) {
    auto it = doc.FindMember(field);
    if (it == doc.MemberEnd() || !it->value.IsArray()) return;
    for (const auto& v : it->value.GetArray()) {
      if (!v.IsString()) continue;
      const std::string_view e(v.GetString(), v.GetStringLength());
      if (add) {
        set.Insert(e);
      } else {
        set.Erase(e);
      }
    }
  };
  each("add", true);
  each("remove", false);
  if (auto it = doc.FindMember("protected"); it != doc.MemberEnd() && it->value.IsBool()) {
    if (it->value.GetBool()) {
      store_protected_.insert(list);
    } else {
      store_protected_.erase(list);
    }
  }
  ++lists_version_;
}

void Safeguards::ApplyBreakerChange(const ledger::Change& c) {
  rapidjson::Document doc;
  doc.Parse(c.payload.data(), c.payload.size());
  if (doc.HasParseError() || !doc.IsObject()) return;
  std::string name(Str(doc, "breaker"));
  if (name.empty()) return;
  bool open = Str(doc, "state") == "open";
  Persisted& p = persisted_[name];
  p.open = open;
  p.at = c.at;
  p.reason = std::string(Str(doc, "reason"));
  auto count = doc.FindMember("count");
  p.count =
      open && count != doc.MemberEnd() && count->value.IsInt64() ? count->value.GetInt64() : -1;
  // Bring the bank in line (a change committed by another writer, or replayed at start).
  if (auto st = bank_.Find(name, c.at); st && st->open != open)
    bank_.SetOpen(name, open, c.at, p.reason, p.count);
}

void Safeguards::NoteHumanDecisionNow(const core::Mitigation& m, absl::Time at) {
  std::lock_guard<std::mutex> lock(mu_);
  NoteHumanDecision(m, at);
}

void Safeguards::NoteHumanDecision(const core::Mitigation& m, absl::Time at) {
  if (m.state != core::MitigationState::kRevoked && m.state != core::MitigationState::kRejected)
    return;
  // Every policy whose hit is on it: a person said no to this action on this entity, and
  // another policy's next hit re-blocked it at once (a manual mitigation has no policy of
  // its own, only its hits').
  NoteHumanDecision(m.entity.str(), m.policy, m.action, at);
  for (const std::string& entry : m.detection_policies) {
    const std::string_view policy = core::EntryPolicy(entry);
    if (policy != m.policy) NoteHumanDecision(m.entity.str(), policy, m.action, at);
  }
}

void Safeguards::NoteHumanDecision(std::string_view entity, std::string_view policy,
                                   std::string_view action, absl::Time at) {
  if (policy.empty()) return;
  const absl::Time until = at + options_.immunity;
  if (!IsNetworkEntity(entity)) {
    absl::Time& slot = immunity_[ImmunityKey(entity, policy, action)];
    if (until > slot) slot = until;
    return;
  }
  const std::optional<core::Network> net = EntityNetwork(entity);
  if (!net) return;
  std::vector<NetImmunity>& nets = net_immunity_[absl::StrCat(AV(policy), "|", AV(action))];
  std::erase_if(nets, [&](const NetImmunity& n) { return n.until <= at; });
  auto it = std::find_if(nets.begin(), nets.end(),
                         [&](const NetImmunity& n) { return n.entity == entity; });
  if (it == nets.end()) {
    nets.push_back({*net, std::string(entity), until});
  } else if (until > it->until) {
    it->until = until;
  }
}

std::vector<std::string> Safeguards::Memberships(const core::Entity& e) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, set] : lists_) {
    if (set.HasEntry(e.str())) out.push_back(name);
  }
  return out;
}

bool Safeguards::ListHas(std::string_view list, const core::Entity& e) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = lists_.find(list);
  return it != lists_.end() && it->second.Has(e);
}

void Safeguards::NoteProtectedAdds(std::string_view list,
                                   const std::vector<std::string>& entities) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& set = lists_[std::string(list)];
  for (const std::string& e : entities) set.Insert(e);
  ++lists_version_;
}

const safeguards::ProtectedSet& Safeguards::ProtectedFor(const policy::PolicySet& set) {
  if (protected_built_lists_ != lists_version_ || protected_built_set_ != set.version()) {
    std::set<std::string, std::less<>> names = store_protected_;
    for (const policy::ListDef& l : set.lists()) {
      if (l.is_protected) names.insert(l.name);
    }
    std::vector<std::pair<std::string, std::string>> entries;
    for (const std::string& name : names) {
      auto it = lists_.find(name);
      if (it == lists_.end()) continue;
      for (const std::string& e : it->second.entries()) entries.emplace_back(name, e);
    }
    protected_ = safeguards::ProtectedSet::Build(entries);
    protected_built_lists_ = lists_version_;
    protected_built_set_ = set.version();
  }
  return *protected_;
}

void Safeguards::ConfigureBreakers(const policy::PolicySet& set) {
  if (breakers_set_ == set.version()) return;
  std::vector<safeguards::BreakerSpec> specs;
  for (const policy::BreakerDef& d : set.breakers()) specs.push_back(ToSpec(d));
  recent_horizon_ = std::max(kRecentHorizon, LongestWindow(&set));
  const std::vector<std::string> fresh = bank_.Configure(std::move(specs));
  const bool first = breakers_set_ < 0;
  breakers_set_ = set.version();
  if (!first) {
    // A breaker this set adds or reshapes counts the recent decisions in its scope again,
    // those after its last reset if it had one; one the ledger has open is opened below
    // and counts none. It started empty: a publish let a whole limit more through.
    for (const std::string& name : fresh) {
      auto p = persisted_.find(name);
      if (p != persisted_.end() && p->second.open) continue;
      const absl::Time after = p != persisted_.end() ? p->second.at : absl::InfinitePast();
      for (const RecentDecision& e : recent_) {
        if (e.at > after) bank_.CountIn(name, {e.policy, e.action, e.source}, e.at);
      }
    }
  } else {
    ReplayRecent();
  }
  // The ledger's open states: a breaker that opened (here or on another node) while no
  // set configured here had it is open when one does.
  for (const auto& [name, p] : persisted_) {
    if (auto st = bank_.Find(name, p.at); st && st->open != p.open) {
      bank_.SetOpen(name, p.open, p.at, p.reason, p.count);
    }
  }
}

void Safeguards::ReplayRecent() {
  // The first configuration: the decisions kept so far (Load's recount, other nodes',
  // this node's under a set without breakers), replayed in time order with the resets
  // they straddle: a breaker closed by a reset at T counts afresh from T (SetOpen(false)
  // clears its counts), so that a restart does not count back what a reset wiped.
  // Replayed before ConfigureBreakers applies the ledger's open states: an open breaker
  // keeps, and shows, the count it opened at (one does not count). Not at a later
  // publish: it keeps the counts of the breakers it does not reshape (replaying the
  // resets would wipe them).
  std::vector<std::pair<absl::Time, std::string>> resets;
  for (const auto& [name, p] : persisted_) {
    if (!p.open) resets.emplace_back(p.at, name);
  }
  std::sort(resets.begin(), resets.end());
  size_t next_reset = 0;
  for (const RecentDecision& e : recent_) {
    for (; next_reset < resets.size() && resets[next_reset].first < e.at; ++next_reset) {
      const auto& [at, name] = resets[next_reset];
      bank_.SetOpen(name, false, at, persisted_.find(name)->second.reason);
    }
    bank_.CountRemote({e.policy, e.action, e.source}, e.at);
  }
  for (; next_reset < resets.size(); ++next_reset) {  // resets after the last decision
    const auto& [at, name] = resets[next_reset];
    bank_.SetOpen(name, false, at, persisted_.find(name)->second.reason);
  }
}

std::optional<std::string> Safeguards::WhyImmune(std::string_view entity, std::string_view policy,
                                                 std::string_view action, absl::Time now) const {
  std::lock_guard<std::mutex> lock(mu_);
  return WhyImmuneLocked(entity, policy, action, now);
}

std::optional<std::string> Safeguards::WhyImmuneLocked(std::string_view entity,
                                                       std::string_view policy,
                                                       std::string_view action,
                                                       absl::Time now) const {
  if (!IsNetworkEntity(entity)) {
    auto it = immunity_.find(ImmunityKey(entity, policy, action));
    if (it == immunity_.end() || it->second <= now) return std::nullopt;
    return ImmunityReason(it->second, policy, action, "this entity");
  }
  if (net_immunity_.empty()) return std::nullopt;  // the usual case: no parse, no key
  auto nets = net_immunity_.find(absl::StrCat(AV(policy), "|", AV(action)));
  if (nets == net_immunity_.end()) return std::nullopt;
  const std::optional<core::Network> net = EntityNetwork(entity);
  if (!net) return std::nullopt;
  for (const NetImmunity& n : nets->second) {
    if (n.until <= now || !net->Overlaps(n.net)) continue;
    if (n.entity == entity) return ImmunityReason(n.until, policy, action, "this entity");
    return ImmunityReason(n.until, policy, action,
                          absl::StrCat(n.entity, ", which ", AV(entity),
                                       net->prefix <= n.net.prefix ? " covers" : " is inside"));
  }
  return std::nullopt;
}

std::optional<std::string> Safeguards::WhyProtected(const policy::PolicySet& set,
                                                    const core::Entity& e) {
  std::lock_guard<std::mutex> lock(mu_);
  return ProtectedFor(set).Why(e);
}

absl::StatusOr<Safeguards::Hold> Safeguards::Screen(ledger::Txn& txn, const policy::PolicySet& set,
                                                    const engine::Detection& d,
                                                    const engine::Proposal& p,
                                                    std::string_view action, absl::Time now) {
  Hold hold;
  if (p.shadow) return hold;
  // Only a creation counts in the breakers: a decision that the live mitigation of the
  // same entity and action absorbs (CreateOrExtend extends it) adds nobody to the blast
  // radius, and other nodes can tell creations only from the ledger. The decision path's
  // Txn caches this read for the CreateOrExtend that follows; outside mu_.
  bool creates = true;
  if (!set.breakers().empty()) {
    QUELL_ASSIGN_OR_RETURN(std::vector<core::Mitigation> live, txn.FindLive(p.entity, action));
    const core::MitigationState unheld = UnheldState(p);
    for (const core::Mitigation& m : live) {
      // One past its expiry is not extended: CreateOrExtend creates anew (core::LiveAt).
      if (m.state == unheld && core::LiveAt(m, now)) creates = false;
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  const safeguards::ProtectedSet& prot = ProtectedFor(set);
  if (auto why = prot.Why(p.entity)) {
    hold.held = true;
    hold.reason = absl::StrCat("protected entity: ", *why);
  } else if (p.via_related) {
    if (auto from = prot.Why(d.entity)) {
      hold.held = true;
      hold.reason = absl::StrCat("propagated from a protected entity: ", *from);
    }
  }
  if (hold.held) {
    metrics_.held_protected.fetch_add(1, std::memory_order_relaxed);
    return hold;
  }
  for (std::string_view a : {std::string_view(p.action), action}) {
    if (std::optional<std::string> why = WhyImmuneLocked(p.entity.str(), p.policy, a, now)) {
      hold.held = true;
      hold.reason = *std::move(why);
      metrics_.held_immunity.fetch_add(1, std::memory_order_relaxed);
      return hold;
    }
  }
  if (set.breakers().empty()) {
    // Noted all the same: uncounted here, it must not count as another node's decision
    // if the set gains breakers before it comes back.
    NoteLocal(txn.NextSeq(), d, /*noted=*/false);
    return hold;
  }
  ConfigureBreakers(set);
  const safeguards::DecisionKey key{p.policy, action, d.source};
  if (!creates) {
    hold.reason = bank_.HeldBy(key);
    if (!hold.reason.empty()) {
      hold.held = true;
      hold.reason = absl::StrCat("breaker ", hold.reason, " is open");
      metrics_.held_breaker.fetch_add(1, std::memory_order_relaxed);
    }
    return hold;
  }
  CatchUp(txn, key, now);
  safeguards::BreakerBank::Outcome o = bank_.Record(key, now);
  for (const std::string& name : o.opened) {
    auto st = bank_.Find(name, now);
    std::string reason = st ? st->reason : "";
    Persisted& per = persisted_[name];
    per = {true, now, reason, st ? st->count : -1};
    metrics_.breakers_opened.fetch_add(1, std::memory_order_relaxed);
    ledger::Change c;
    c.kind = ledger::ChangeKind::kBreaker;
    c.actor = "system";
    c.subject = name;
    c.entity = std::string(kBreakerJournal);
    c.payload = BreakerPayload(name, true, reason, st ? st->count : 0);
    QUELL_RETURN_IF_ERROR(txn.Append(std::move(c), nullptr).status());
    if (logger_ != nullptr) {
      logger_->Warn(
          "breaker opened: further decisions in its scope are held for approval",
          {{"breaker", name}, {"reason", reason}, {"policy", p.policy}, {"source", d.source}});
    }
  }
  if (!o.held_by.empty()) {
    hold.held = true;
    hold.reason = absl::StrCat("breaker ", o.held_by, " is open");
    metrics_.held_breaker.fetch_add(1, std::memory_order_relaxed);
  } else {
    // Counted: its change (appended next by the caller) must not count again when it
    // comes back through OnCommitted. Kept in recent_ now: a breaker a set published
    // before that counts it too.
    NoteRecent(p.policy, action, d.source, now);
    NoteLocal(txn.NextSeq(), d, /*noted=*/true);
  }
  return hold;
}

std::vector<safeguards::BreakerStatus> Safeguards::Breakers(const policy::PolicySet& set,
                                                            absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  ConfigureBreakers(set);
  return bank_.Status(now);
}

safeguards::BreakerBank Safeguards::BreakerBankFor(const policy::PolicySet& set) {
  std::lock_guard<std::mutex> lock(mu_);
  ConfigureBreakers(set);
  return bank_;
}

ledger::Mutation Safeguards::ResetBreaker(std::shared_ptr<const policy::PolicySet> set,
                                          std::string name, std::string actor,
                                          std::shared_ptr<safeguards::BreakerStatus> out) {
  return [this, set = std::move(set), name = std::move(name), actor = std::move(actor),
          out = std::move(out)](ledger::Txn& txn, absl::Time now) -> absl::Status {
    std::lock_guard<std::mutex> lock(mu_);
    ConfigureBreakers(*set);
    if (!bank_.Find(name, now)) {
      return absl::NotFoundError(
          absl::StrCat("no breaker \"", name, "\" in the active policy set"));
    }
    std::string reason = absl::StrCat("reset by ", actor);
    ledger::Change c;
    c.kind = ledger::ChangeKind::kBreaker;
    c.actor = actor;
    c.subject = name;
    c.entity = std::string(kBreakerJournal);
    c.payload = BreakerPayload(name, false, reason, 0);
    QUELL_RETURN_IF_ERROR(txn.Append(std::move(c), nullptr).status());
    bank_.SetOpen(name, false, now, reason);
    persisted_[name] = {false, now, reason};
    *out = *bank_.Find(name, now);
    if (logger_ != nullptr) logger_->Info("breaker reset", {{"breaker", name}, {"actor", actor}});
    return absl::OkStatus();
  };
}

}  // namespace quell::workflow
