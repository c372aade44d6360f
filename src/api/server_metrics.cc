#include "api/server_metrics.h"

#include <unistd.h>

#include <algorithm>
#include <climits>

#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"

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

absl::Status ReviewQueueTracker::Load(ledger::Store& store) {
  // Only the pending ones, a page at a time (the store indexes mitigations by state):
  // not a second scan of every live mitigation at start.
  absl::flat_hash_map<std::string, absl::Time> open;
  ledger::MitigationQuery q;
  q.state = core::MitigationState::kPendingApproval;
  q.limit = 1000;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(ledger::MitigationPage page, store.ListMitigations(q));
    for (const core::Mitigation& m : page.mitigations) open.emplace(m.id, m.created_at);
    if (page.next_cursor.empty()) break;
    q.cursor = std::move(page.next_cursor);
  }
  absl::MutexLock lock(&mu_);
  open_ = std::move(open);
  return absl::OkStatus();
}

void ReviewQueueTracker::OnCommitted(const std::vector<ledger::Change>& changes) {
  absl::MutexLock lock(&mu_);
  for (const ledger::Change& c : changes) {
    if (c.kind != ledger::ChangeKind::kMitigation) continue;
    if (PayloadIsPendingApproval(c.payload)) {
      open_.emplace(c.subject, c.at);  // keeps the first time it was seen pending
    } else if (!open_.empty()) {
      open_.erase(c.subject);
    }
  }
}

int64_t ReviewQueueTracker::Depth() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(open_.size());
}

std::optional<absl::Time> ReviewQueueTracker::OldestSince() const {
  absl::MutexLock lock(&mu_);
  if (open_.empty()) return std::nullopt;
  absl::Time oldest = absl::InfiniteFuture();
  for (const auto& [id, since] : open_) oldest = std::min(oldest, since);
  return oldest;
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

absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(obs::Registry& registry,
                                                                       std::string_view version,
                                                                       ledger::Ledger* ledger,
                                                                       index::Index* index,
                                                                       std::string_view node) {
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
  QUELL_RETURN_IF_ERROR(gauge("quell_ledger_seq", "Last committed ledger seq.",
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

  // Review queue: pending approvals, tracked from the change stream.
  auto reviews = std::make_shared<ReviewQueueTracker>();
  QUELL_RETURN_IF_ERROR(reviews->Load(ledger->store()));
  ledger->AddListener(reviews.get());
  QUELL_RETURN_IF_ERROR(gauge("quell_review_queue_depth",
                              "Open reviews (mitigations pending approval).",
                              [reviews] { return static_cast<double>(reviews->Depth()); }));
  QUELL_RETURN_IF_ERROR(
      gauge("quell_review_queue_oldest_age_seconds",
            "Age of the oldest open review (0 when the queue is empty).", [reviews] {
              auto since = reviews->OldestSince();
              return since ? std::max(0.0, absl::ToDoubleSeconds(absl::Now() - *since)) : 0.0;
            }));
  return handles;
}

}  // namespace quell::api
