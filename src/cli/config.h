// Server configuration: a YAML file (--config), overridden by QUELL_* environment
// variables, overridden by flags (SPEC "CLI": flags win).
//
// Thread-safety: plain data, built once at start.
#ifndef QUELL_CLI_CONFIG_H_
#define QUELL_CLI_CONFIG_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/action.h"
#include "workflow/safeguards.h"

namespace quell::cli {

// `tracing:` — OTLP/HTTP span export (obs/trace.h). Off unless an endpoint is set.
struct TracingConfig {
  bool enabled = true;   // tracing.enabled: false keeps it off even with an endpoint
  std::string endpoint;  // e.g. http://127.0.0.1:4318/v1/traces; empty: off
  // Where `endpoint` was set, for an error about it: "FILE:LINE: tracing.endpoint" or
  // "QUELL_TRACING_ENDPOINT" (checked by serve, once the configuration is complete).
  std::string endpoint_from = "tracing.endpoint";
  double sample_ratio = 0;     // traces not sampled upstream; 0 records only sampled parents
  int max_queue_spans = 2048;  // finished spans waiting for export; more are dropped

  bool on() const { return enabled && !endpoint.empty(); }
};

// `counters:` — the velocity counters behind POST /v1/events (SPEC "Events").
struct CountersConfig {
  bool redis = false;  // backend: memory (default) | redis
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379;
  bool fail_closed = false;  // on_error: fail_open (default) | fail_closed
  absl::Duration lateness = absl::Minutes(5);
  int64_t max_keys = 1'000'000;
};

//! Parses "redis://HOST:PORT", "redis://HOST" or "HOST:PORT" into `c` (and selects the
//! redis backend). kInvalidArgument otherwise.
absl::Status ParseRedisUrl(std::string_view url, CountersConfig* c);

// `safeguards:` — workflow::SafeguardOptions (docs/safeguards.md). Unset fields keep that
// struct's defaults; QUELL_SAFEGUARDS_* environment variables override the file.
struct SafeguardsConfig {
  std::optional<absl::Duration> immunity;               // safeguards.immunity (> 0)
  std::optional<absl::Duration> pending_ttl;            // safeguards.pending_ttl (> 0)
  std::optional<int64_t> bulk_threshold;                // safeguards.bulk_threshold (>= 0)
  std::optional<absl::Duration> sweep_interval;         // safeguards.sweep_interval (> 0)
  std::optional<absl::Duration> idempotency_retention;  // safeguards.idempotency_retention (> 0)
};

// `webhooks:` — webhooks::DispatcherOptions (docs/webhooks.md). Unset fields keep that
// struct's defaults; QUELL_WEBHOOK_* environment variables override the file.
struct WebhooksConfig {
  std::optional<int> max_attempts;                // webhooks.max_attempts, in [1, 1000]
  std::optional<absl::Duration> backoff_initial;  // webhooks.backoff_initial (> 0)
  std::optional<absl::Duration> backoff_max;      // webhooks.backoff_max (> 0)
  std::optional<absl::Duration> timeout;          // webhooks.timeout (> 0)
  std::optional<absl::Duration> poll;             // webhooks.poll (> 0)
};

struct Config {
  std::string listen = "127.0.0.1:8080";
  std::string grpc_listen;  // grpc_listen: HOST:PORT of the gRPC server; "" = none
  std::string data = "./var";
  // postgres: the ledger in PostgreSQL (a libpq URL); --postgres and QUELL_POSTGRES
  // override it. Empty: the embedded store in `data`.
  std::string postgres;
  int threads = 0;               // HTTP event loops; 0 = one per core
  bool synchronous_full = true;  // store.synchronous: full | normal
  // store.entity_cache_mib: memory for the mitigations the embedded store's writer keeps
  // (ledger::SqliteOptions::entity_cache_bytes).
  size_t entity_cache_mib = 256;
  size_t max_body_bytes = 8 << 20;  // http.max_body_bytes
  bool access_log = true;           // http.access_log: one JSON line per request
  absl::Duration read_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Seconds(60);
  absl::Duration shutdown_grace = absl::Seconds(10);
  std::string log_level = "info";
  std::string node_name;        // node: labels this node's feed-lag metrics; "" = the host name
  bool metrics_enabled = true;  // metrics.enabled: false renders an empty /metrics
  TracingConfig tracing;
  std::shared_ptr<const core::ActionCatalog> catalog = core::ActionCatalog::Default();
  // `policies:` — a policy-set file published as version 1 on the first start (relative
  // paths are relative to the config file).
  std::string policies_file;
  // `detections: {retention: 30d}` — stored detections received longer ago are purged
  // (workflow/retention.h); a replay of a purged detection is no longer a duplicate.
  absl::Duration detection_retention = absl::Hours(24 * 30);
  CountersConfig counters;
  SafeguardsConfig safeguards;
  WebhooksConfig webhooks;
};

//! Reads `path` (YAML) over the defaults. kInvalidArgument names the key at fault.
absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base);
//! Applies QUELL_LISTEN, QUELL_DATA, QUELL_THREADS, QUELL_SYNCHRONOUS, QUELL_LOG_LEVEL,
//! QUELL_TRACING_ENDPOINT, QUELL_TRACING_SAMPLE_RATIO, QUELL_SAFEGUARDS_IMMUNITY,
//! _PENDING_TTL, _BULK_THRESHOLD, _SWEEP_INTERVAL, _IDEMPOTENCY_RETENTION and
//! QUELL_WEBHOOK_MAX_ATTEMPTS, _BACKOFF_INITIAL, _BACKOFF_MAX, _TIMEOUT, _POLL, with the
//! same checks as the file's keys (kInvalidArgument names the variable).
absl::Status ApplyEnvironment(Config* config);
//! The safeguards `s` sets, over workflow::SafeguardOptions' defaults: what serve runs
//! with, and what `quell import` without a server applies.
workflow::SafeguardOptions ToSafeguardOptions(const SafeguardsConfig& s);
//! Parses the `actions:` list of a YAML catalog (also used by policy sets).
absl::StatusOr<std::shared_ptr<const core::ActionCatalog>> ParseCatalogYaml(
    const std::string& yaml);

}  // namespace quell::cli

#endif  // QUELL_CLI_CONFIG_H_
