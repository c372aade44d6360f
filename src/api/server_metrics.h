// The gauges and counters that read state owned by other modules (index size, ledger
// progress) at scrape time. Request metrics are recorded by the router itself.
//
// Thread-safety: the callbacks are thread-safe; keep the returned handles alive as long
// as the registry renders them (they unregister on destruction).
#ifndef QUELL_API_SERVER_METRICS_H_
#define QUELL_API_SERVER_METRICS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "index/index.h"
#include "ledger/ledger.h"
#include "obs/metrics.h"

namespace quell::api {

//! Registers build info and the ledger and index metrics. `ledger` and `index` are
//! borrowed and must outlive the handles.
absl::StatusOr<std::vector<obs::CallbackHandle>> RegisterServerMetrics(obs::Registry& registry,
                                                                       std::string_view version,
                                                                       ledger::Ledger* ledger,
                                                                       index::Index* index);

}  // namespace quell::api

#endif  // QUELL_API_SERVER_METRICS_H_
