#include "api/server_metrics.h"

#include "core/status.h"

namespace quell::api {

absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(obs::Registry& registry,
                                                                       std::string_view version,
                                                                       ledger::Ledger* ledger,
                                                                       index::Index* index) {
  QUELL_RETURN_IF_ERROR(obs::AddBuildInfo(registry, version));
  std::vector<obs::CallbackHandle> handles;
  auto gauge = [&](std::string_view name, std::string_view help,
                   std::function<double()> fn) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(auto h, registry.AddCallbackGauge(name, help, std::move(fn)));
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
  return handles;
}

}  // namespace quell::api
