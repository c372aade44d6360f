#include "api/server_metrics.h"

#include <unistd.h>

#include <algorithm>
#include <climits>

#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "workflow/appeals.h"
#include "workflow/rollback.h"

namespace quell::api {

bool PayloadIsPendingApproval(std::string_view payload) {
  // The top-level "state" is the first "state" key MitigationToJson writes (after id,
  // entity and action, whose values are escaped strings, so they cannot hold the quoted
  // key); metadata keys come later.
  static constexpr std::string_view kKey = "\"state\":\"";
  const size_t at = payload.find(kKey);
  if (at == std::string_view::npos) return false;
  static constexpr std::string_view kPending = "pending_approval\"";
  return payload.substr(at + kKey.size(), kPending.size()) == kPending;
}

std::string_view ReviewKindName(ReviewKind kind) {
  switch (kind) {
    case ReviewKind::kMitigation:
      return "mitigation";
    case ReviewKind::kRollback:
      return "rollback";
    case ReviewKind::kAppeal:
      return "appeal";
  }
  return "unknown";
}

ReviewQueueTracker::ReviewQueueTracker(ReviewQueueOptions options)
    : clock_(options.clock != nullptr ? options.clock : core::RealClock::Get()),
      pending_ttl_(options.pending_ttl) {}

absl::Status ReviewQueueTracker::Load(ledger::Store& store) {
  // Rollback requests and appeals are only in the log (kReview changes), so those are
  // replayed through the same rules as the change stream; pending approvals are the
  // mitigations in that state now. Both reads may see changes past `last`: the stream
  // applies those again, and every rule is idempotent (open an open item, close a
  // closed one), so a restarted node shows the figures of one that followed every change.
  constexpr int kPage = 10000;
  QUELL_ASSIGN_OR_RETURN(const int64_t last, store.LastSeq());
  absl::MutexLock lock(&mu_);
  for (auto& m : open_) m.clear();
  for (int64_t after = 0;;) {
    QUELL_ASSIGN_OR_RETURN(std::vector<ledger::Change> page,
                           store.ReadChangesOfKind(ledger::ChangeKind::kReview, after, kPage));
    for (const ledger::Change& c : page) ApplyLocked(c);
    if (static_cast<int>(page.size()) < kPage) break;
    after = page.back().seq;
  }
  ledger::MitigationQuery held{.state = core::MitigationState::kPendingApproval, .limit = kPage};
  while (true) {
    QUELL_ASSIGN_OR_RETURN(ledger::MitigationPage page, store.ListMitigations(held));
    for (const core::Mitigation& m : page.mitigations) {
      OpenLocked(ReviewKind::kMitigation, m.id, m.created_at, /*expires=*/true);
    }
    if (page.next_cursor.empty()) break;
    held.cursor = page.next_cursor;
  }
  loaded_seq_ = last;
  return absl::OkStatus();
}

void ReviewQueueTracker::OnCommitted(const std::vector<ledger::Change>& changes) {
  absl::MutexLock lock(&mu_);
  for (const ledger::Change& c : changes) {
    if (c.seq != 0 && c.seq <= loaded_seq_) continue;  // already read by Load
    ApplyLocked(c);
  }
}

void ReviewQueueTracker::OpenLocked(ReviewKind kind, const std::string& id, absl::Time since,
                                    bool expires) {
  open_[static_cast<int>(kind)].insert_or_assign(
      id, Item{since, expires ? since + pending_ttl_ : absl::InfiniteFuture()});
}

void ReviewQueueTracker::ApplyLocked(const ledger::Change& c) {
  if (c.kind == ledger::ChangeKind::kMitigation) {
    auto& pending = open_[static_cast<int>(ReviewKind::kMitigation)];
    const bool held = c.mitigation != nullptr
                          ? c.mitigation->state == core::MitigationState::kPendingApproval
                          : PayloadIsPendingApproval(c.payload);
    if (!held) {
      if (!pending.empty()) pending.erase(c.subject);
      return;
    }
    if (pending.contains(c.subject)) return;  // e.g. a first approval of two: still open
    // PendingSince is what pending_ttl runs from: the committed record's, else the
    // payload's (policies that hold many decisions make this common: no parse when it is
    // attached).
    core::Mitigation scratch;
    absl::StatusOr<const core::Mitigation*> m = ledger::MitigationOf(c, &scratch);
    OpenLocked(ReviewKind::kMitigation, m.ok() ? (*m)->id : c.subject,
               m.ok() ? core::PendingSince(**m) : c.at, /*expires=*/true);
    return;
  }
  if (c.kind != ledger::ChangeKind::kReview) return;
  if (c.entity == workflow::kRollbackJournal) {
    absl::StatusOr<workflow::RollbackRequest> r =
        workflow::RollbackRequestFromPayload(c.payload, c.at);
    if (!r.ok()) return;
    if (r->state == "pending_approval") {
      OpenLocked(ReviewKind::kRollback, r->id, r->requested_at, /*expires=*/true);
    } else {
      open_[static_cast<int>(ReviewKind::kRollback)].erase(r->id);
    }
    return;
  }
  absl::StatusOr<workflow::Appeal> a = workflow::AppealFromPayload(c.payload, c.at);
  if (!a.ok()) return;
  auto& appeals = open_[static_cast<int>(ReviewKind::kAppeal)];
  if (a->state == "open") {
    if (!appeals.contains(a->id))
      OpenLocked(ReviewKind::kAppeal, a->id, a->filed_at, /*expires=*/false);
  } else {
    appeals.erase(a->id);
  }
}

ReviewQueueFigures ReviewQueueTracker::Figures(ReviewKind kind) const {
  const absl::Time now = clock_->Now();
  ReviewQueueFigures out;
  absl::MutexLock lock(&mu_);
  auto& items = open_[static_cast<int>(kind)];
  for (auto it = items.begin(); it != items.end();) {
    if (it->second.expires <= now) {
      items.erase(it++);
    } else {
      ++it;
    }
  }
  out.depth = static_cast<int64_t>(items.size());
  for (const auto& [id, item] : items) {
    if (!out.oldest || item.since < *out.oldest) out.oldest = item.since;
  }
  if (out.oldest) out.oldest_age = std::max(absl::ZeroDuration(), now - *out.oldest);
  return out;
}

std::string NodeName(std::string_view configured) {
  if (!configured.empty()) return std::string(configured);
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') return host;
  return "unknown";
}

namespace {

// This node's apply backlog: the ledger head (the store's, so that in a cluster the
// other nodes' commits count) minus the seq the index has applied, and how long the
// oldest unapplied change has waited. Sampled at most once per 500 ms (both gauges
// render from one sample). Thread-safe.
class FeedLag {
 public:
  FeedLag(ledger::Ledger* ledger, index::Index* index) : ledger_(ledger), index_(index) {}

  struct Sample {
    int64_t changes = 0;
    double seconds = 0;
  };

  Sample Get() {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now - taken_ < absl::Milliseconds(500)) return last_;
    taken_ = now;
    int64_t head = ledger_->last_seq();
    if (auto stored = ledger_->store().LastSeq(); stored.ok()) head = std::max(head, *stored);
    const int64_t applied = index_->seq();
    last_ = Sample{};
    if (head > applied) {
      last_.changes = head - applied;
      auto next = ledger_->store().ReadChanges(applied, 1);
      if (next.ok() && !next->empty()) {
        last_.seconds = std::max(0.0, absl::ToDoubleSeconds(now - next->front().at));
      }
    }
    return last_;
  }

 private:
  ledger::Ledger* const ledger_;
  index::Index* const index_;
  absl::Mutex mu_;
  absl::Time taken_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  Sample last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(
    obs::Registry& registry, std::string_view version, ledger::Ledger* ledger, index::Index* index,
    std::string_view node, ReviewQueueOptions review_options) {
  QUELL_RETURN_IF_ERROR(obs::AddBuildInfo(registry, version));
  std::vector<obs::CallbackHandle> handles;
  auto gauge = [&](std::string_view name, std::string_view help,
                   std::function<double()> fn) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(auto h, registry.AddCallbackGauge(name, help, std::move(fn)));
    handles.push_back(std::move(h));
    return absl::OkStatus();
  };
  auto labelled = [&](std::string_view name, std::string_view help, std::vector<std::string> labels,
                      std::function<std::vector<obs::LabelledValue>()> fn) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(
        auto h, registry.AddCallbackGaugeFamily(name, help, std::move(labels), std::move(fn)));
    handles.push_back(std::move(h));
    return absl::OkStatus();
  };
  auto counter = [&](std::string_view name, std::string_view help,
                     std::function<double()> fn) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(auto h, registry.AddCallbackCounter(name, help, std::move(fn)));
    handles.push_back(std::move(h));
    return absl::OkStatus();
  };
  QUELL_RETURN_IF_ERROR(gauge("quell_index_mitigations",
                              "Active mitigations held by the in-memory index.",
                              [index] { return static_cast<double>(index->size()); }));
  QUELL_RETURN_IF_ERROR(labelled("quell_index_mitigations_by_action",
                                 "Active mitigations held by the in-memory index, per action.",
                                 {"action"}, [index] {
                                   std::vector<obs::LabelledValue> out;
                                   for (auto& [name, n] : index->CountsByAction())
                                     out.push_back({{name}, static_cast<double>(n)});
                                   return out;
                                 }));
  QUELL_RETURN_IF_ERROR(gauge("quell_index_memory_bytes",
                              "Approximate heap bytes used by the index.",
                              [index] { return static_cast<double>(index->MemoryBytes()); }));
  QUELL_RETURN_IF_ERROR(gauge("quell_index_seq",
                              "Ledger seq of the last change applied to the index.",
                              [index] { return static_cast<double>(index->seq()); }));
  QUELL_RETURN_IF_ERROR(gauge("quell_ledger_seq", "Last committed and durable ledger seq.",
                              [ledger] { return static_cast<double>(ledger->last_seq()); }));
  QUELL_RETURN_IF_ERROR(counter("quell_ledger_commits_total",
                                "Group-commit transactions committed.",
                                [ledger] { return static_cast<double>(ledger->stats().commits); }));
  QUELL_RETURN_IF_ERROR(counter("quell_ledger_changes_total", "Ledger changes committed.",
                                [ledger] { return static_cast<double>(ledger->stats().changes); }));
  QUELL_RETURN_IF_ERROR(
      counter("quell_ledger_failed_commits_total", "Transactions that failed to commit.",
              [ledger] { return static_cast<double>(ledger->stats().failed_commits); }));
  QUELL_RETURN_IF_ERROR(counter("quell_ledger_commit_seconds_total", "Time spent in group commits.",
                                [ledger] { return ledger->stats().total_commit_seconds; }));
  QUELL_RETURN_IF_ERROR(
      gauge("quell_ledger_last_batch_size", "Mutations in the last group commit.",
            [ledger] { return static_cast<double>(ledger->stats().last_batch_size); }));

  // Feed lag, labelled with this node's name (a constant per process).
  auto lag = std::make_shared<FeedLag>(ledger, index);
  const std::string node_name = NodeName(node);
  QUELL_RETURN_IF_ERROR(
      labelled("quell_feed_lag_changes",
               "Ledger changes committed but not yet applied to this node's index.", {"node"},
               [lag, node_name] {
                 return std::vector<obs::LabelledValue>{
                     {{node_name}, static_cast<double>(lag->Get().changes)}};
               }));
  QUELL_RETURN_IF_ERROR(
      labelled("quell_feed_lag_seconds",
               "How long the oldest change not yet applied to this node's index has waited (0 when "
               "caught up).",
               {"node"}, [lag, node_name] {
                 return std::vector<obs::LabelledValue>{{{node_name}, lag->Get().seconds}};
               }));

  // Review queue: pending approvals, rollback requests and open appeals, per kind, tracked
  // from the change stream. Every kind is exported, 0 when it has no open item.
  auto reviews = std::make_shared<ReviewQueueTracker>(review_options);
  QUELL_RETURN_IF_ERROR(reviews->Load(ledger->store()));
  // A view for scrapes that no mutation reads: on the finisher thread, off the commit
  // thread (it took 1.7% of that thread in a server import; docs/benchmarks.md). Still
  // before each batch completes, so a caller that waited for its write sees it counted.
  ledger->AddListener(reviews.get(), ledger::ListenerTiming::kDurable);
  QUELL_RETURN_IF_ERROR(labelled(
      "quell_review_queue_depth",
      "Open reviews per kind: mitigation (pending approval), rollback (bulk rollback request "
      "pending approval), appeal (open appeal). Expired items do not count.",
      {"kind"}, [reviews] {
        std::vector<obs::LabelledValue> out;
        for (ReviewKind k : kReviewKinds) {
          out.push_back(
              {{std::string(ReviewKindName(k))}, static_cast<double>(reviews->Figures(k).depth)});
        }
        return out;
      }));
  QUELL_RETURN_IF_ERROR(labelled(
      "quell_review_queue_oldest_age_seconds",
      "Age of the oldest open review per kind (0 when that kind has none).", {"kind"}, [reviews] {
        std::vector<obs::LabelledValue> out;
        for (ReviewKind k : kReviewKinds) {
          out.push_back({{std::string(ReviewKindName(k))},
                         absl::ToDoubleSeconds(reviews->Figures(k).oldest_age)});
        }
        return out;
      }));
  return handles;
}

}  // namespace quell::api
