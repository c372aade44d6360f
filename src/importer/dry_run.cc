#include "importer/dry_run.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "workflow/decisions.h"
#include "workflow/safeguards.h"

namespace quell::importer {

// Committed state through the store's reads; lists from the memberships loaded once.
class DryRun::Env final : public policy::Environment {
 public:
  explicit Env(const DryRun& owner) : owner_(owner) {}
  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view list, std::string_view entity) override {
    auto it = owner_.lists_.find(AV(list));
    if (it == owner_.lists_.end()) return false;
    auto e = core::Entity::Parse(entity);  // entries are kept in the normal form
    return e.ok() && it->second.Has(*e);
  }
  // The store's state, then the file's earlier rows: as the import decides row after
  // row, a mitigation an earlier row creates is active (or counted) for the later ones.
  bool Active(std::string_view entity, std::string_view action) override {
    if (owner_.file_active_.contains(absl::StrCat(AV(entity), "\n", AV(action)))) return true;
    auto e = core::Entity::Parse(entity);
    return e.ok() && owner_.StoreHasLive(*e, std::string(action), core::MitigationState::kActive);
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override {
    auto in_file = owner_.file_created_.find(absl::StrCat(AV(entity), "\n", AV(action)));
    const int64_t file = in_file == owner_.file_created_.end() ? 0 : in_file->second;
    if (owner_.store_ == nullptr) return file;
    auto e = core::Entity::Parse(entity);
    if (!e.ok()) return file;
    auto n = owner_.store_->CountMitigations(*e, "", action, owner_.now_ - window, true);
    return file + (n.ok() ? *n : 0);
  }

 private:
  const DryRun& owner_;
};

DryRun::DryRun(std::shared_ptr<const policy::PolicySet> set, ledger::Store* store)
    : set_(std::move(set)), store_(store), now_(absl::Now()) {}

absl::StatusOr<std::unique_ptr<DryRun>> DryRun::Create(
    std::shared_ptr<const policy::PolicySet> set, ledger::Store* store,
    const workflow::SafeguardOptions& safeguards) {
  std::unique_ptr<DryRun> d(new DryRun(std::move(set), store));
  if (d->set_ != nullptr) {
    d->report_.policy_set = true;
    d->report_.policy_version = d->set_->version();
    for (const policy::ListDef& l : d->set_->lists()) {
      if (l.is_protected) d->protected_lists_.push_back(l.name);
    }
  }
  if (store != nullptr) {
    QUELL_ASSIGN_OR_RETURN(d->report_.seq, store->LastSeq());
    QUELL_ASSIGN_OR_RETURN(auto lists, store->Lists());
    for (const ledger::ListInfo& l : lists) {
      if (l.is_protected && std::find(d->protected_lists_.begin(), d->protected_lists_.end(),
                                      l.name) == d->protected_lists_.end()) {
        d->protected_lists_.push_back(l.name);
      }
    }
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> protected_entries;
    QUELL_RETURN_IF_ERROR(
        store
            ->ScanListEntries([&](std::string_view list, std::string_view entity) {
              d->lists_[std::string(list)].Insert(entity);
              if (std::find(d->protected_lists_.begin(), d->protected_lists_.end(), list) !=
                  d->protected_lists_.end()) {
                protected_entries[std::string(list)].emplace_back(list, entity);
              }
              return absl::OkStatus();
            })
            .status());
    for (const auto& [name, entries] : protected_entries) {
      d->protected_sets_.emplace_back(name, safeguards::ProtectedSet::Build(entries));
    }
  }
  // The safeguards as a server would start with them: immunity, the breakers' open states
  // and the decisions already in their windows (Load's recount).
  d->sg_ = std::make_unique<workflow::Safeguards>(safeguards, nullptr);
  d->pending_ttl_ = d->sg_->options().pending_ttl;
  if (store != nullptr) {
    QUELL_RETURN_IF_ERROR(
        d->sg_->Load(*store, d->now_, workflow::Safeguards::Delivery::kLocal, d->set_.get()));
  }
  if (d->set_ != nullptr && !d->set_->breakers().empty()) {
    d->bank_ = d->sg_->BreakerBankFor(*d->set_);
    d->breakers_before_ = d->bank_->Status(d->now_);
  }
  return d;
}

bool DryRun::IsProtected(const core::Entity& entity, std::string* list) const {
  for (const std::string& l : protected_lists_) {
    if (auto it = lists_.find(l); it != lists_.end() && it->second.HasEntry(entity.str())) {
      *list = l;
      return true;
    }
  }
  // Covered rather than named (an ip inside a protected cidr), as the safeguard holds it.
  for (const auto& [name, set] : protected_sets_) {
    if (set->Why(entity)) {
      *list = name;
      return true;
    }
  }
  return false;
}

void DryRun::Add(const engine::Detection& d) {
  ++report_.rows;
  // A re-sent row changes nothing: the import answers it duplicate without deciding.
  const uint64_t key = absl::HashOf(d.source, d.id);
  if (keys_.contains(key)) {
    ++report_.duplicates;
    return;
  }
  if (keys_.size() < kMaxKeys) keys_.insert(key);
  if (store_ != nullptr) {
    auto stored = store_->GetDetection(d.source, d.id);
    if (stored.ok() && stored->has_value()) {
      ++report_.duplicates;
      return;
    }
  }
  if (set_ == nullptr) return;
  Env env(*this);
  engine::Evaluation ev = engine::Evaluate(*set_, d, env, now_);
  for (const engine::Proposal& p : ev.proposals) {
    const std::string entity = p.entity.str();
    int64_t prior = 0;
    std::string hit_key = absl::StrCat(entity, "\n", p.policy);
    if (!p.escalate.empty()) {
      if (store_ != nullptr) {
        auto committed = workflow::PriorHitsCommitted(*store_, p, now_);
        if (committed.ok()) prior = *committed;
      }
      auto it = hits_.find(hit_key);
      if (it != hits_.end()) prior += it->second;
      ++hits_[hit_key];
    }
    const std::string& action = engine::EscalatedAction(p, prior);
    // As workflow::ApplyOne decides, in its order: a shadow decision is recorded every
    // time (never extended, never held); the others are screened (protected entity,
    // immunity, then the breakers: an extension counts in none but an open one holds it)
    // and CreateOrExtend then extends the live mitigation of the entity and action in the
    // state the decision would have (active, or scheduled for a delayed policy; pending
    // approval when held) or creates one.
    if (p.shadow) {
      ++report_.shadow;
      continue;
    }
    const core::MitigationState unheld = p.delay > absl::ZeroDuration()
                                             ? core::MitigationState::kScheduled
                                             : core::MitigationState::kActive;
    const std::string entity_action = absl::StrCat(entity, "\n", action);
    const std::string in_state = absl::StrCat(entity_action, "\n", AV(core::StateName(unheld)));
    const bool creates = !file_live_.contains(in_state) && !StoreHasLive(p.entity, action, unheld);
    // Held: goes to review, a pending approval (the store's for this entity and action, or
    // a new one), counted once per entity and action: later hits fold into it.
    auto held = [&](int64_t* total, std::map<std::string, int64_t>* by, const std::string& why) {
      if (!held_.insert(entity_action).second) return;
      ++file_created_[entity_action];  // prior() counts pending ones too
      ++*total;
      if (by != nullptr) ++(*by)[why];
    };
    std::string list;
    // A related entity's decision is held when the detection's own entity is protected,
    // as the safeguard holds it ("propagated from a protected entity").
    if (IsProtected(p.entity, &list) || (p.via_related && IsProtected(d.entity, &list))) {
      held(&report_.protected_, &report_.protected_by_list, list);
      continue;
    }
    if (sg_ != nullptr && (sg_->WhyImmune(entity, p.policy, p.action, now_) ||
                           sg_->WhyImmune(entity, p.policy, action, now_))) {
      held(&report_.immune, nullptr, "");
      continue;
    }
    if (bank_) {
      const safeguards::DecisionKey bk{p.policy, action, d.source};
      std::string by;
      if (!creates) {
        by = bank_->HeldBy(bk);
      } else {
        safeguards::BreakerBank::Outcome o = bank_->Record(bk, now_);
        for (std::string& name : o.opened) opened_.insert(std::move(name));
        by = std::move(o.held_by);
      }
      if (!by.empty()) {
        held(&report_.held, &report_.held_by_breaker, by);
        continue;
      }
    }
    if (!creates) {  // extends: the store's live one counts once, the file's own not
      if (!file_live_.contains(in_state) && already_.insert(in_state).second) ++report_.already;
      continue;
    }
    file_live_.insert(in_state);
    ++file_created_[entity_action];
    if (unheld == core::MitigationState::kActive) file_active_.insert(entity_action);
    ++report_.new_total;
    ++report_.new_by_action[action];
    ++report_.new_by_policy[p.policy];
  }
}

bool DryRun::StoreHasLive(const core::Entity& entity, const std::string& action,
                          core::MitigationState state) const {
  if (store_ == nullptr) return false;
  ledger::MitigationQuery q;
  q.entity = entity;
  q.action = action;
  q.state = state;
  q.limit = 100;
  auto page = store_->ListMitigations(q);
  if (!page.ok()) return false;
  for (const core::Mitigation& m : page->mitigations) {
    if (core::LiveAt(m, now_, pending_ttl_)) return true;  // not one past its expiry
  }
  return false;
}

DryRunReport DryRun::Report() const {
  DryRunReport r = report_;
  if (set_ == nullptr || !bank_) return r;
  for (const policy::BreakerDef& b : set_->breakers()) {
    BreakerImpact bi;
    bi.name = b.name;
    bi.limit = b.limit;
    bi.window = core::DurationString(b.window);
    bi.scope = b.scope == policy::BreakerDef::Scope::kGlobal
                   ? std::string("global")
                   : absl::StrCat(AV(policy::BreakerScopeName(b.scope)), " ", b.scope_value);
    for (const safeguards::BreakerStatus& before : breakers_before_) {
      if (before.spec.name != b.name) continue;
      bi.count_now = before.count;
      bi.open_now = before.open;
    }
    if (auto after = bank_->Find(b.name, now_)) bi.would_add = after->count - bi.count_now;
    bi.would_open = opened_.contains(b.name);
    if (auto it = r.held_by_breaker.find(b.name); it != r.held_by_breaker.end()) {
      bi.would_hold = it->second;
    }
    r.breakers.push_back(std::move(bi));
  }
  return r;
}

namespace {

std::string Tally(const std::map<std::string, int64_t>& m) {
  std::string out;
  for (const auto& [k, n] : m) absl::StrAppend(&out, out.empty() ? "" : ", ", k, " ", n);
  return out.empty() ? "-" : out;
}

void JsonMap(const std::map<std::string, int64_t>& m, std::string* out) {
  *out += '{';
  bool first = true;
  for (const auto& [k, n] : m) {
    if (!first) *out += ',';
    first = false;
    core::AppendJsonString(k, out);
    absl::StrAppend(out, ":", n);
  }
  *out += '}';
}

}  // namespace

std::string DryRunText(const DryRunReport& r) {
  // A --policies file's set has version 0: it is not published. It said "no policy set:
  // nothing would be mitigated" over the mitigations that set would make.
  std::string out =
      absl::StrCat("dry run against ",
                   !r.policy_set           ? std::string("no policy set")
                   : r.policy_version == 0 ? std::string("the --policies set (not published)")
                                           : absl::StrCat("policy set v", r.policy_version),
                   " (ledger seq ", r.seq, "; nothing was written)\n");
  if (!r.policy_set) out += "  no policy set: nothing would be mitigated\n";
  if (r.duplicates > 0) {
    absl::StrAppend(&out,
                    "  duplicates (stored already or repeated; change nothing): ", r.duplicates,
                    " of ", r.rows, " rows\n");
  }
  absl::StrAppend(&out, "  would newly mitigate: ", r.new_total, "\n");
  absl::StrAppend(&out, "    per action: ", Tally(r.new_by_action), "\n");
  absl::StrAppend(&out, "    per policy: ", Tally(r.new_by_policy), "\n");
  absl::StrAppend(&out, "  already mitigated:    ", r.already, "\n");
  absl::StrAppend(&out, "  protected (would go to review): ", r.protected_);
  if (!r.protected_by_list.empty()) absl::StrAppend(&out, " (", Tally(r.protected_by_list), ")");
  absl::StrAppend(
      &out, "\n  immune (a person overruled the policy there: would go to review): ", r.immune);
  absl::StrAppend(&out, "\n  shadow (recorded, never enforced): ", r.shadow, "\n");
  absl::StrAppend(&out, "  held for approval by breakers: ", r.held);
  if (!r.held_by_breaker.empty()) absl::StrAppend(&out, " (", Tally(r.held_by_breaker), ")");
  int open = 0, open_now = 0;
  for (const BreakerImpact& b : r.breakers) {
    open += b.would_open;
    open_now += b.open_now;
  }
  absl::StrAppend(&out, "\n  breakers that would open: ", open);
  if (open_now > 0) absl::StrAppend(&out, " (open already: ", open_now, ")");
  out += "\n";
  for (const BreakerImpact& b : r.breakers) {
    if (b.open_now) {
      absl::StrAppend(&out, "    open   ", b.name, " (", b.scope,
                      "): open now, every decision in its scope waits for approval");
    } else {
      absl::StrAppend(&out, "    ", b.would_open ? "OPEN   " : "closed ", b.name, " (", b.scope,
                      "): ", b.count_now, " in the window now +", b.would_add, " vs limit ",
                      b.limit, " per ", b.window);
    }
    if (b.would_hold > 0) absl::StrAppend(&out, "; would hold ", b.would_hold);
    out += "\n";
  }
  return out;
}

std::string DryRunJson(const DryRunReport& r) {
  std::string out = absl::StrCat("{\"policy_version\":", r.policy_version, ",\"seq\":", r.seq,
                                 ",\"rows\":", r.rows, ",\"duplicates\":", r.duplicates,
                                 ",\"new\":{\"total\":", r.new_total, ",\"by_action\":");
  JsonMap(r.new_by_action, &out);
  out += ",\"by_policy\":";
  JsonMap(r.new_by_policy, &out);
  absl::StrAppend(&out, "},\"already\":", r.already, ",\"protected\":{\"total\":", r.protected_,
                  ",\"by_list\":");
  JsonMap(r.protected_by_list, &out);
  absl::StrAppend(&out, "},\"immune\":", r.immune, ",\"shadow\":", r.shadow,
                  ",\"held\":{\"total\":", r.held, ",\"by_breaker\":");
  JsonMap(r.held_by_breaker, &out);
  out += "},\"breakers\":[";
  for (size_t i = 0; i < r.breakers.size(); ++i) {
    const BreakerImpact& b = r.breakers[i];
    if (i) out += ',';
    out += "{\"name\":";
    core::AppendJsonString(b.name, &out);
    out += ",\"scope\":";
    core::AppendJsonString(b.scope, &out);
    absl::StrAppend(
        &out, ",\"limit\":", b.limit, ",\"window\":\"", b.window, "\",\"count_now\":", b.count_now,
        ",\"open_now\":", b.open_now ? "true" : "false", ",\"would_add\":", b.would_add,
        ",\"would_open\":", b.would_open ? "true" : "false", ",\"would_hold\":", b.would_hold, "}");
  }
  out += "]}";
  return out;
}

}  // namespace quell::importer
