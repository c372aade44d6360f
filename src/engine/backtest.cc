#include "engine/backtest.h"

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "engine/engine.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::engine {
namespace {

// Replay state is keyed by 64-bit hashes of (entity, action) and (policy, entity) rather
// than by strings: a million detections would otherwise keep a million strings alive. A
// collision (odds ~1e-7 at a million keys) would merge two pairs' replay state.
uint64_t PairKey(std::string_view a, std::string_view b) {
  return absl::Hash<std::tuple<absl::string_view, absl::string_view>>{}(
      std::make_tuple(AV(a), AV(b)));
}

uint64_t EntityKey(std::string_view e) { return absl::Hash<absl::string_view>{}(AV(e)); }

// What a replayed (entity, action) pair looks like to active() and prior().
struct PairState {
  absl::Time from;                  // enforcement start of the current mitigation
  absl::Time until;                 // its expiry
  std::vector<absl::Time> created;  // creation times, only when the set uses prior()
};

class ReplayEnvironment final : public policy::Environment {
 public:
  ReplayEnvironment(const ReplayLists& lists, const absl::flat_hash_map<uint64_t, PairState>& pairs)
      : lists_(lists), pairs_(pairs) {}

  void set_now(absl::Time now) { now_ = now; }

  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view list, std::string_view entity) override {
    auto it = lists_.entries.find(AV(list));
    if (it == lists_.entries.end()) return false;
    auto e = core::Entity::Parse(entity);  // entries are normalised, as live reads them
    return e.ok() && it->second.Has(*e);
  }
  bool Active(std::string_view entity, std::string_view action) override {
    auto it = pairs_.find(PairKey(entity, action));
    return it != pairs_.end() && it->second.from <= now_ && now_ < it->second.until;
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override {
    auto it = pairs_.find(PairKey(entity, action));
    if (it == pairs_.end()) return 0;
    const auto& c = it->second.created;
    return c.end() - std::lower_bound(c.begin(), c.end(), now_ - window);
  }

 private:
  const ReplayLists& lists_;
  const absl::flat_hash_map<uint64_t, PairState>& pairs_;
  absl::Time now_;
};

// A bucket while the replay runs.
struct BucketAcc {
  int64_t decisions = 0;
  absl::flat_hash_set<uint64_t> seen;
  int64_t protected_entities = 0;
  std::vector<std::string> samples;

  void Add(std::string_view entity, uint64_t key, const ReplayLists& lists, size_t max_samples) {
    ++decisions;
    if (!seen.insert(key).second) return;
    if (lists.IsProtected(entity)) ++protected_entities;
    if (samples.size() < max_samples) samples.emplace_back(entity);
  }

  BacktestBucket Report() const {
    BacktestBucket b;
    b.decisions = decisions;
    b.entities = static_cast<int64_t>(seen.size());
    b.protected_entities = protected_entities;
    b.samples = samples;
    return b;
  }
};

struct RowAcc {
  std::string policy;
  std::string mode;
  int64_t matched = 0;
  BucketAcc newly, no_longer, unchanged, shadow;
};

// An (entity, action) decision of one detection, by the row of its policy.
struct Decision {
  size_t row;
  std::string_view entity;
  std::string_view action;
};

bool Enforcing(std::string_view state) {
  return state == "active" || state == "scheduled" || state == "pending_approval";
}

std::string_view View(const rapidjson::Value& v) {
  return v.IsString() ? std::string_view(v.GetString(), v.GetStringLength()) : std::string_view();
}

}  // namespace

ReplayRecord ReplayRecordOf(const ledger::StoredDetection& d) {
  ReplayRecord r;
  r.source = d.source;
  r.id = d.id;
  r.type = d.type;
  r.entity = d.entity;
  r.score = d.score;
  r.observed_at = d.observed_at;
  r.json = d.json;
  r.reply = d.reply;
  return r;
}

class Backtester::Impl {
 public:
  Impl(std::shared_ptr<const policy::PolicySet> set, ReplayLists lists, BacktestOptions options)
      : set_(std::move(set)), lists_(std::move(lists)), options_(options), env_(lists_, pairs_) {
    for (const policy::Policy& p : set_->policies()) {
      rows_.push_back(RowAcc{p.id, std::string(policy::ModeName(p.mode))});
      row_of_.emplace(p.id, rows_.size() - 1);
      if (p.when.find("prior(") != std::string::npos) track_prior_ = true;
    }
  }

  absl::Status Add(const ReplayRecord& r) {
    if (r.observed_at < options_.from || r.observed_at >= options_.to) return absl::OkStatus();
    if (r.observed_at < last_) {
      return absl::InvalidArgumentError("backtest: records must come in observed_at order");
    }
    last_ = r.observed_at;
    // A real-time rule's detection (source "rule:<policy>", made from events): events are
    // not stored, so their rules cannot be replayed, and live such a detection is never
    // evaluated against detection policies. Left out, not reported as ended.
    if (r.source.starts_with(core::kRuleSourcePrefix)) return absl::OkStatus();
    ++detections_;

    // The stored decisions. Replies without any are the common case: skip the parse.
    char reply_buf[8192];
    rapidjson::MemoryPoolAllocator<> reply_alloc(reply_buf, sizeof reply_buf);
    rapidjson::Document reply(&reply_alloc);
    stored_.clear();
    if (r.reply.find("\"decisions\":[]") == std::string_view::npos) {
      reply.Parse(r.reply.data(), r.reply.size());
      if (reply.HasParseError() || !reply.IsObject()) {
        ++skipped_;
        return absl::OkStatus();
      }
      auto it = reply.FindMember("decisions");
      if (it != reply.MemberEnd() && it->value.IsArray()) {
        for (const auto& dv : it->value.GetArray()) {
          if (!dv.IsObject()) continue;
          auto st = dv.FindMember("state");
          if (st == dv.MemberEnd() || !Enforcing(View(st->value))) continue;
          auto pol = dv.FindMember("policy");
          auto ent = dv.FindMember("entity");
          auto act = dv.FindMember("action");
          if (pol == dv.MemberEnd() || ent == dv.MemberEnd() || act == dv.MemberEnd()) continue;
          stored_.push_back({RowFor(View(pol->value)), View(ent->value), View(act->value)});
        }
      }
    }

    const absl::Span<const uint32_t> candidates = set_->DetectionCandidates(r.type);
    Evaluation ev;
    if (!candidates.empty()) {
      if (!Fill(r)) {
        ++skipped_;
        return absl::OkStatus();
      }
      env_.set_now(r.observed_at);
      ev = Evaluate(*set_, detection_, env_, r.observed_at);
      eval_errors_ += ev.eval_errors;
    }

    // The candidate's decisions, escalated against the replay's own hits.
    candidate_.clear();
    const std::string* last_policy = nullptr;
    for (const Proposal& p : ev.proposals) {
      const size_t row = RowFor(p.policy);
      if (last_policy == nullptr || *last_policy != p.policy) ++rows_[row].matched;
      last_policy = &p.policy;
      const std::string& entity = p.entity.str();
      if (p.shadow) {
        const uint64_t ek = EntityKey(entity);
        rows_[row].shadow.Add(entity, ek, lists_, options_.samples);
        totals_.shadow.Add(entity, ek, lists_, options_.samples);
        continue;
      }
      int64_t prior = 0;
      if (!p.escalate.empty()) {
        std::vector<absl::Time>& hits = hits_[PairKey(p.policy, entity)];
        const absl::Time since = r.observed_at - p.escalation_window;
        prior = hits.end() - std::lower_bound(hits.begin(), hits.end(), since);
        hits.push_back(r.observed_at);
      }
      candidate_.push_back({row, entity, EscalatedAction(p, prior)});
      delays_.push_back({p.delay, EscalatedTtl(p, prior)});  // the step's, as decided live
    }

    auto contains = [](const std::vector<Decision>& in, const Decision& d) {
      for (const Decision& x : in) {
        if (x.entity == d.entity && x.action == d.action) return true;
      }
      return false;
    };
    for (const Decision& c : candidate_) {
      const uint64_t ek = EntityKey(c.entity);
      if (contains(stored_, c)) {
        rows_[c.row].unchanged.Add(c.entity, ek, lists_, options_.samples);
        totals_.unchanged.Add(c.entity, ek, lists_, options_.samples);
      } else {
        rows_[c.row].newly.Add(c.entity, ek, lists_, options_.samples);
        totals_.newly.Add(c.entity, ek, lists_, options_.samples);
      }
    }
    for (const Decision& s : stored_) {
      if (contains(candidate_, s)) continue;
      const uint64_t ek = EntityKey(s.entity);
      rows_[s.row].no_longer.Add(s.entity, ek, lists_, options_.samples);
      totals_.no_longer.Add(s.entity, ek, lists_, options_.samples);
    }

    // The replay's state after this detection, as the ledger would hold it.
    for (size_t i = 0; i < candidate_.size(); ++i) {
      const Decision& c = candidate_[i];
      const absl::Time from = r.observed_at + delays_[i].first;
      const absl::Time until = from + delays_[i].second;
      PairState& s = pairs_[PairKey(c.entity, c.action)];
      if (s.until > r.observed_at) {
        s.until = std::max(s.until, until);  // extended, not stacked
      } else {
        s.from = from;
        s.until = until;
        if (track_prior_) s.created.push_back(r.observed_at);
      }
    }
    delays_.clear();
    return absl::OkStatus();
  }

  BacktestReport Finish() const {
    BacktestReport out;
    out.from = options_.from;
    out.to = options_.to;
    out.version = set_->version();
    out.detections = detections_;
    out.skipped = skipped_;
    out.eval_errors = eval_errors_;
    out.newly = totals_.newly.Report();
    out.no_longer = totals_.no_longer.Report();
    out.unchanged = totals_.unchanged.Report();
    out.shadow = totals_.shadow.Report();
    const size_t n = set_->policies().size();
    std::vector<size_t> order(rows_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    // Policies only seen in stored replies after the candidate's, by name.
    std::sort(order.begin() + n, order.end(),
              [this](size_t a, size_t b) { return rows_[a].policy < rows_[b].policy; });
    for (size_t i : order) {
      const RowAcc& a = rows_[i];
      BacktestPolicyRow row;
      row.policy = a.policy;
      row.mode = a.mode;
      row.matched = a.matched;
      row.newly = a.newly.Report();
      row.no_longer = a.no_longer.Report();
      row.unchanged = a.unchanged.Report();
      row.shadow = a.shadow.Report();
      out.policies.push_back(std::move(row));
    }
    return out;
  }

 private:
  size_t RowFor(std::string_view policy) {
    auto it = row_of_.find(AV(policy));
    if (it != row_of_.end()) return it->second;
    rows_.push_back(RowAcc{std::string(policy), "absent"});
    row_of_.emplace(std::string(policy), rows_.size() - 1);
    return rows_.size() - 1;
  }

  // Whether detections of `type` need the stored JSON (evidence, related) to be read.
  bool NeedsJson(std::string_view type) {
    auto it = needs_json_.find(AV(type));
    if (it != needs_json_.end()) return it->second;
    bool needs = false;
    for (uint32_t i : set_->DetectionCandidates(type)) {
      const policy::Policy& p = set_->policies()[i];
      needs =
          needs || p.uses_evidence || p.propagates() || p.when.find("related") != std::string::npos;
    }
    needs_json_.emplace(std::string(type), needs);
    return needs;
  }

  // Fills detection_ from `r`, reusing its buffers. False if the record is unreadable.
  bool Fill(const ReplayRecord& r) {
    Detection& d = detection_;
    if (d.entity.str() != r.entity) {
      auto e = core::Entity::Parse(r.entity);
      if (!e.ok()) return false;
      d.entity = *std::move(e);
    }
    d.id.assign(r.id);
    d.source.assign(r.source);
    d.type.assign(r.type);
    d.score = r.score;
    d.observed_at = r.observed_at;
    d.evidence_json.assign("{}");
    d.related.clear();
    if (!NeedsJson(r.type)) return true;
    char buf[8192];
    rapidjson::MemoryPoolAllocator<> alloc(buf, sizeof buf);
    rapidjson::Document doc(&alloc);
    doc.Parse(r.json.data(), r.json.size());
    if (doc.HasParseError() || !doc.IsObject()) return false;
    if (auto it = doc.FindMember("evidence"); it != doc.MemberEnd() && it->value.IsObject()) {
      rapidjson::StringBuffer sb;
      rapidjson::Writer<rapidjson::StringBuffer> w(sb);
      it->value.Accept(w);
      d.evidence_json.assign(sb.GetString(), sb.GetSize());
    }
    if (auto it = doc.FindMember("related"); it != doc.MemberEnd() && it->value.IsArray()) {
      for (const auto& v : it->value.GetArray()) {
        auto e = core::Entity::Parse(View(v));
        if (!e.ok()) return false;
        d.related.push_back(*std::move(e));
      }
    }
    return true;
  }

  std::shared_ptr<const policy::PolicySet> set_;
  ReplayLists lists_;
  BacktestOptions options_;
  absl::flat_hash_map<uint64_t, PairState> pairs_;               // (entity, action) -> state
  absl::flat_hash_map<uint64_t, std::vector<absl::Time>> hits_;  // (policy, entity) -> hits
  ReplayEnvironment env_;
  bool track_prior_ = false;
  absl::Time last_ = absl::InfinitePast();
  int64_t detections_ = 0, skipped_ = 0, eval_errors_ = 0;
  std::vector<RowAcc> rows_;  // candidate policies in file order, then absent ones
  absl::flat_hash_map<std::string, size_t> row_of_;
  absl::flat_hash_map<std::string, bool> needs_json_;
  RowAcc totals_;
  // Per-record scratch, reused.
  Detection detection_;
  std::vector<Decision> stored_, candidate_;
  std::vector<std::pair<absl::Duration, absl::Duration>> delays_;  // (delay, ttl) per candidate_
};

Backtester::Backtester(std::shared_ptr<const policy::PolicySet> candidate, ReplayLists lists,
                       BacktestOptions options)
    : impl_(std::make_unique<Impl>(std::move(candidate), std::move(lists), options)) {}
Backtester::~Backtester() = default;
absl::Status Backtester::Add(const ReplayRecord& record) { return impl_->Add(record); }
BacktestReport Backtester::Finish() const { return impl_->Finish(); }

namespace {

void AppendBucket(const BacktestBucket& b, std::string* out) {
  absl::StrAppend(out, "{\"decisions\":", b.decisions, ",\"entities\":", b.entities,
                  ",\"protected_entities\":", b.protected_entities, ",\"samples\":[");
  for (size_t i = 0; i < b.samples.size(); ++i) {
    if (i) out->push_back(',');
    core::AppendJsonString(b.samples[i], out);
  }
  out->append("]}");
}

void AppendBuckets(const BacktestBucket& newly, const BacktestBucket& no_longer,
                   const BacktestBucket& unchanged, const BacktestBucket& shadow,
                   std::string* out) {
  out->append("\"newly\":");
  AppendBucket(newly, out);
  out->append(",\"no_longer\":");
  AppendBucket(no_longer, out);
  out->append(",\"unchanged\":");
  AppendBucket(unchanged, out);
  out->append(",\"shadow\":");
  AppendBucket(shadow, out);
}

std::string TimeText(absl::Time t) {
  if (t == absl::InfinitePast()) return "-inf";
  if (t == absl::InfiniteFuture()) return "+inf";
  return core::FormatRfc3339(t);
}

}  // namespace

std::string BacktestReportToJson(const BacktestReport& r) {
  std::string out = "{\"from\":";
  core::AppendJsonString(TimeText(r.from), &out);
  out += ",\"to\":";
  core::AppendJsonString(TimeText(r.to), &out);
  absl::StrAppend(&out, ",\"version\":", r.version, ",\"detections\":", r.detections,
                  ",\"skipped\":", r.skipped, ",\"eval_errors\":", r.eval_errors, ",\"totals\":{");
  AppendBuckets(r.newly, r.no_longer, r.unchanged, r.shadow, &out);
  out += "},\"policies\":[";
  for (size_t i = 0; i < r.policies.size(); ++i) {
    const BacktestPolicyRow& p = r.policies[i];
    if (i) out += ',';
    out += "{\"policy\":";
    core::AppendJsonString(p.policy, &out);
    out += ",\"mode\":";
    core::AppendJsonString(p.mode, &out);
    absl::StrAppend(&out, ",\"matched\":", p.matched, ",");
    AppendBuckets(p.newly, p.no_longer, p.unchanged, p.shadow, &out);
    out += "}";
  }
  out += "]}";
  return out;
}

std::string BacktestReportToText(const BacktestReport& r) {
  std::string out = absl::StrCat("backtest of ", r.detections, " detections observed in [",
                                 TimeText(r.from), ", ", TimeText(r.to), ")");
  if (r.skipped) absl::StrAppend(&out, ", ", r.skipped, " unreadable skipped");
  if (r.eval_errors) absl::StrAppend(&out, ", ", r.eval_errors, " evaluation errors");
  out += "\nentities (decisions); [protected entities]\n";
  auto cell = [](const BacktestBucket& b) {
    std::string s = absl::StrCat(b.entities, " (", b.decisions, ")");
    if (b.protected_entities) absl::StrAppend(&s, " [", b.protected_entities, "]");
    return s;
  };
  auto line = [&out](std::string_view a, std::string_view b, std::string_view c, std::string_view d,
                     std::string_view e, std::string_view f, std::string_view g) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%-32.*s %-8.*s %10.*s %18.*s %18.*s %18.*s %18.*s\n",
                  static_cast<int>(a.size()), a.data(), static_cast<int>(b.size()), b.data(),
                  static_cast<int>(c.size()), c.data(), static_cast<int>(d.size()), d.data(),
                  static_cast<int>(e.size()), e.data(), static_cast<int>(f.size()), f.data(),
                  static_cast<int>(g.size()), g.data());
    out += buf;
  };
  line("policy", "mode", "matched", "newly", "no longer", "unchanged", "shadow");
  for (const BacktestPolicyRow& p : r.policies) {
    line(p.policy, p.mode, std::to_string(p.matched), cell(p.newly), cell(p.no_longer),
         cell(p.unchanged), cell(p.shadow));
  }
  line("TOTAL (distinct entities)", "", "", cell(r.newly), cell(r.no_longer), cell(r.unchanged),
       cell(r.shadow));
  auto samples = [&out](std::string_view what, const BacktestBucket& b) {
    if (b.samples.empty()) return;
    absl::StrAppend(&out, "  ", AV(what), ":");
    for (const std::string& s : b.samples) absl::StrAppend(&out, " ", s);
    out += "\n";
  };
  if (!r.newly.samples.empty() || !r.no_longer.samples.empty()) out += "samples:\n";
  samples("newly", r.newly);
  samples("no longer", r.no_longer);
  return out;
}

bool ReplayLists::IsProtected(std::string_view entity) const {
  if (protected_entities.contains(AV(entity))) return true;
  if (protected_set == nullptr) return false;
  auto e = core::Entity::Parse(entity);
  return e.ok() && protected_set->Why(*e).has_value();
}

absl::StatusOr<ReplayLists> LoadReplayLists(ledger::Store& store,
                                            const policy::PolicySet& candidate) {
  ReplayLists out;
  std::vector<std::pair<std::string, std::string>> protected_entries;
  QUELL_ASSIGN_OR_RETURN(std::vector<ledger::ListInfo> lists, store.Lists());
  for (const ledger::ListInfo& info : lists) {
    bool declared = false;
    // Protected if the store says so or the candidate declares it protected (as the
    // safeguard decides live: either flags it).
    bool is_protected = info.is_protected;
    for (const policy::ListDef& def : candidate.lists()) {
      if (def.name != info.name) continue;
      declared = true;
      is_protected = is_protected || def.is_protected;
    }
    if (!declared && !is_protected) continue;
    QUELL_ASSIGN_OR_RETURN(std::vector<std::string> entries, store.ListEntries(info.name));
    if (is_protected) {
      for (const std::string& e : entries) {
        out.protected_entities.insert(e);
        protected_entries.emplace_back(info.name, e);
      }
    }
    if (declared) {
      core::EntityList& list = out.entries[info.name];
      for (const std::string& e : entries) list.Insert(e);
    }
  }
  out.protected_set = safeguards::ProtectedSet::Build(protected_entries);
  return out;
}

absl::StatusOr<BacktestReport> RunBacktest(ledger::Store& store,
                                           std::shared_ptr<const policy::PolicySet> candidate,
                                           const BacktestOptions& options) {
  QUELL_ASSIGN_OR_RETURN(ReplayLists lists, LoadReplayLists(store, *candidate));
  Backtester bt(std::move(candidate), std::move(lists), options);
  QUELL_RETURN_IF_ERROR(store.ScanDetections(
      options.from, options.to,
      [&bt](const ledger::StoredDetection& d) { return bt.Add(ReplayRecordOf(d)); }));
  return bt.Finish();
}

}  // namespace quell::engine
