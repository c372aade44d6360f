// The `quell` binary: wires the modules together and runs one subcommand (SPEC "CLI").
// Exit status: 0 success, 1 failure, 2 bad usage.
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "api/api.h"
#include "api/detection_intake.h"
#include "api/http/http_server.h"
#include "api/index_applier.h"
#include "api/server_metrics.h"
#include "auth/keys.h"
#include "cli/check_cmd.h"
#include "cli/config.h"
#include "cli/flags.h"
#include "cli/import_cmd.h"
#include "cli/policy_cmd.h"
#include "core/files.h"
#include "core/net.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "grpc/grpc_server.h"
#include "importer/sink.h"
#include "index/index.h"
#include "ledger/audit.h"
#include "ledger/ledger.h"
#include "ledger/postgres/feed_follower.h"
#include "ledger/postgres/lease.h"
#include "ledger/postgres/postgres_store.h"
#include "ledger/sqlite/sqlite_store.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/trace.h"
#include "policy/policy_set.h"
#include "webhooks/dispatcher.h"
#include "workflow/expiry.h"
#include "workflow/policies.h"
#include "workflow/retention.h"

namespace quell::cli {
namespace {

constexpr char kUsageText[] = R"(quell — fraud and abuse mitigation platform

usage: quell <command> [flags]

commands:
  serve            run the server       (--data DIR --listen HOST:PORT --config FILE --dev --threads N
                                         [--grpc-listen HOST:PORT] [--redis URL])
  keys create      make an API key      (--role ROLE [--source NAME]... [--name TEXT] [--data DIR])
  keys list        list API keys        ([--data DIR])
  keys revoke ID   revoke an API key    ([--data DIR])
  audit verify     walk the hash chain, check the tables served from it, name the first break ([--data DIR])
  migrate          apply schema migrations ([--data DIR])
  import FILE...   bulk detections (NDJSON, CSV, Avro; gzip/zstd; - for stdin)
                   ([--server URL --key KEY | --data DIR] [--rejects PATH] [--resume] [--dry-run] [--json])
  check ENTITY...  the verdict, for people ([--server URL] [--key KEY] [--surface S] [--json])
  policy check FILE                validate a policy set; every error as FILE:line:col
  policy test FILE --cases DIR     run policy-as-code test cases
  policy backtest FILE --from T --to T   replay stored detections against a candidate set
  version          print the version

serve, keys, audit, migrate, policy backtest and import --dry-run take --postgres URL (or
QUELL_POSTGRES): the ledger is then that PostgreSQL database instead of the SQLite file
under --data.

Every command takes --help. Configuration: --config FILE (YAML), QUELL_* environment
variables, then flags; flags win.
)";

// `quell COMMAND --help` for the commands parsed here (import, check and policy have
// their own): what the command does, its flags, their environment variables, exit codes.
constexpr char kServeHelp[] = R"(usage: quell serve [flags]

Runs the server: the HTTP API (and gRPC with --grpc-listen) over the embedded store
(DIR/quell.db, SQLite) or, with --postgres, over PostgreSQL (several nodes).

flags (configuration file < QUELL_* environment < flags):
  --data DIR                data directory (./var; QUELL_DATA; data: in the file)
  --listen HOST:PORT        HTTP address (127.0.0.1:8080; QUELL_LISTEN; listen:)
  --grpc-listen HOST:PORT   gRPC address, not --listen's (off unless given; grpc_listen:)
  --config FILE             YAML configuration (QUELL_CONFIG): docs/operations.md
  --threads N               HTTP event loops, 0 = one per core (QUELL_THREADS; threads:)
  --redis URL               velocity counters in Redis, redis://HOST:PORT (counters.redis:);
                            in this process's memory otherwise
  --postgres URL            the ledger in PostgreSQL (QUELL_POSTGRES)
  --dev                     on a ledger with no API key, create an admin key and print it once
  --help                    this text

SIGTERM, SIGINT or SIGHUP: drain in-flight requests and queued writes, exit 0.
exit status: 0 stopped by a signal; 1 could not start (address in use, data directory,
store, policies file); 2 bad usage or configuration.
)";

constexpr char kKeysHelp[] =
    R"(usage: quell keys create --role ROLE [--source NAME]... [--name TEXT] [flags]
       quell keys list [flags]
       quell keys revoke ID [flags]

API keys, in the store itself (a running server sees a new key on first use and a
revoked one within 200 ms). Roles: admin, detector (needs --source: the detection
sources it may submit as), enforcer, reviewer, viewer.

flags:
  --data DIR        data directory (./var; QUELL_DATA)
  --postgres URL    the ledger in PostgreSQL (QUELL_POSTGRES)
  --config FILE     take data: from a configuration file (QUELL_CONFIG)
  --help            this text

create prints the key (shown once); list prints id, role, sources, created, status, name.
revoke may revoke the last active admin key (the API refuses that with a 409): whoever
can reach the store can create another with `keys create --role admin`.
exit status: 0 ok; 1 failed (no ledger there, unknown id); 2 bad usage.
)";

constexpr char kAuditHelp[] = R"(usage: quell audit verify [flags]

Walks the hash chain from seq 1, checks every change's hash and link, and checks the
tables served from it (the mitigations table and its due times, the policy sets, the
lists) against what the changes make. Safe on a running server's data (WAL).
Prints "ok: N changes verified ..." or "BROKEN at seq N: <reason>".

flags:
  --data DIR        data directory (./var; QUELL_DATA)
  --postgres URL    the ledger in PostgreSQL (QUELL_POSTGRES)
  --config FILE     take data: from a configuration file (QUELL_CONFIG)
  --help            this text

exit status: 0 ok; 1 BROKEN or could not read; 2 bad usage.
)";

constexpr char kMigrateHelp[] = R"(usage: quell migrate [flags]

Applies the store's schema migrations (serve applies them too when it starts) and prints
the schema version. A store of a newer version is refused: upgrade quell.

flags:
  --data DIR        data directory (./var; QUELL_DATA)
  --postgres URL    the ledger in PostgreSQL (QUELL_POSTGRES)
  --config FILE     take data: from a configuration file (QUELL_CONFIG)
  --help            this text

exit status: 0 ok; 1 failed; 2 bad usage.
)";

int Usage(const std::string& message, const char* usage_text = kUsageText) {
  if (!message.empty()) std::cerr << "quell: " << message << "\n\n";
  std::cerr << usage_text;
  return kUsage;
}

// The usage text of serve, keys, audit or migrate (the overview for another name).
const char* CommandHelp(std::string_view cmd) {
  static const std::map<std::string_view, const char*> kHelp = {
      {"serve", kServeHelp}, {"keys", kKeysHelp}, {"audit", kAuditHelp}, {"migrate", kMigrateHelp}};
  auto it = kHelp.find(cmd);
  return it == kHelp.end() ? kUsageText : it->second;
}

// A configuration that does not hold (the file, a QUELL_* variable, a flag's value): the
// message alone, which names where (FILE:LINE, the variable), not the whole usage text.
int ConfigError(const absl::Status& s) {
  std::cerr << "quell: " << s.message() << "\n";
  return kUsage;
}

int Failure(const absl::Status& s) {
  std::cerr << "quell: " << s.message() << "\n";
  return kFailure;
}

// From --postgres or QUELL_POSTGRES, set once in Main: the ledger is in PostgreSQL.
std::string postgres_url;

// `create`: a store with no ledger yet gets one (serve, keys create); otherwise (commands
// that read or change what is there) a data directory without one, or a PostgreSQL
// database without Quell's schema, is refused: a mistyped --data, not a ledger to make.
absl::StatusOr<std::unique_ptr<ledger::Store>> OpenStore(const Config& c, bool create = true) {
  if (!postgres_url.empty()) {
    return ledger::OpenPostgresStore({.url = postgres_url, .create_schema = create});
  }
  ledger::SqliteOptions o;
  o.path = c.data;
  o.create = create;
  o.synchronous_full = c.synchronous_full;
  o.entity_cache_bytes = c.entity_cache_mib << 20;
  return ledger::OpenSqliteStore(o);
}

// A command that takes no arguments: a stray one is most often a path meant for --data.
std::optional<int> NoArguments(const Flags& flags, size_t expected) {
  const auto& pos = flags.positional();
  if (pos.size() <= expected) return std::nullopt;
  return Usage(absl::StrCat(pos[0], ": unexpected argument \"", pos[expected], "\"",
                            pos[expected].find('/') != std::string::npos
                                ? absl::StrCat(" (--data ", pos[expected], "?)")
                                : ""),
               CommandHelp(pos[0]));
}

// Defaults <- --config file <- QUELL_* <- flags.
absl::StatusOr<Config> BuildConfig(const Flags& flags) {
  Config c;
  std::optional<std::string> file = flags.Get("config");
  if (!file) {
    if (const char* env = std::getenv("QUELL_CONFIG")) file = env;
  }
  if (file) {
    QUELL_ASSIGN_OR_RETURN(c, LoadConfigFile(*file, c));
  }
  QUELL_RETURN_IF_ERROR(ApplyEnvironment(&c));
  // --postgres and QUELL_POSTGRES (read in Main) win over the file's postgres:. An
  // explicit --data with it names two ledgers: which one was meant is not guessed (an
  // audit of a backup directory verified the production database instead).
  if (postgres_url.empty() && !c.postgres.empty()) {
    if (flags.Has("data")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--data ", *flags.Get("data"),
                       " and the configuration's postgres: both name a "
                       "ledger: drop one (or pass --postgres to use the database)"));
    }
    postgres_url = c.postgres;
  }
  if (auto v = flags.Get("data")) c.data = *v;
  if (auto v = flags.Get("listen")) c.listen = *v;
  if (auto v = flags.Get("grpc-listen")) c.grpc_listen = *v;
  if (auto v = flags.Get("redis")) {
    if (auto s = ParseRedisUrl(*v, &c.counters); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--redis: ", s.message()));
    }
  }
  if (auto v = flags.Get("threads")) {
    if (!absl::SimpleAtoi(*v, &c.threads) || c.threads < 0) {
      return absl::InvalidArgumentError("--threads must be a non-negative integer");
    }
  }
  return c;
}

// `flag`: how the address was given, for the message ("--listen (listen:)").
absl::Status SplitListen(const std::string& listen, std::string_view flag, std::string* host,
                         int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(flag), " must be HOST:PORT, got \"", listen, "\""));
  }
  *host = listen.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  // ":8080" passed the start-up probe (an empty host is the wildcard to getaddrinfo) and
  // then failed to resolve in the server, after the data directory and a --dev key
  // were written. Every address is said explicitly.
  if (host->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(flag), " must be HOST:PORT, got \"", listen,
                     "\" (every address: 0.0.0.0:PORT or [::]:PORT)"));
  }
  return absl::OkStatus();
}

// Whether HOST:PORT can be listened on, asked before anything is written (the data
// directory, the --dev key, the first policy set), which a start failing at the bind used
// to leave behind. The server binds for real later: a port taken in between still fails
// there. Port 0 and names that do not resolve are left to the server.
absl::Status ProbeListen(const std::string& host, int port) {
  if (port == 0) return absl::OkStatus();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int rc =
          ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
      rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", host, ":", port, ": ", ::gai_strerror(rc)));
  }
  // Any failure to bind (in use, not permitted, not an address of this machine) stops
  // the start before anything is written.
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  bool bound = false;
  if (fd >= 0) {
    const int one = 1;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as the server does
    bound = ::bind(fd, found->ai_addr, found->ai_addrlen) == 0;
  }
  const int err = errno;
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(found);
  if (bound) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("cannot listen on ", host, ":", port, ": ", std::strerror(err)));
}

// Whether a TCP connection to HOST:PORT opens within `timeout` (for a start-up warning:
// a dependency the server can run without, but not as configured).
absl::Status ProbeConnect(const std::string& host, int port, absl::Duration timeout) {
  absl::StatusOr<int> fd = core::ConnectTcp(host, port, absl::Now() + timeout);
  if (!fd.ok()) return fd.status();
  ::close(*fd);
  return absl::OkStatus();
}

// First start with `policies: FILE` configured and nothing published yet: the file
// becomes version 1. Afterwards the ledger's latest version wins (publish new ones with
// PUT /v1/policies), and a differing file is only reported.
absl::Status PublishInitialPolicies(const Config& config, ledger::Ledger* ledger,
                                    obs::Logger& logger) {
  if (config.policies_file.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> yaml_or = core::ReadFile(config.policies_file);
  if (!yaml_or.ok()) {
    return absl::Status(yaml_or.status().code(),
                        absl::StrCat("policies file: ", yaml_or.status().message()));
  }
  const std::string& yaml = *yaml_or;
  QUELL_ASSIGN_OR_RETURN(auto latest, ledger->store().LatestPolicySet());
  if (latest.has_value()) {
    if (latest->yaml != yaml) {
      logger.Info("policies file differs from the active policy set; the ledger's version stays",
                  {{"file", config.policies_file}, {"active_version", latest->version}});
    }
    return absl::OkStatus();
  }
  auto set = policy::LoadPolicySet(yaml, 1);
  if (!set.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config.policies_file, " does not load:\n", set.status().message()));
  }
  auto version = std::make_shared<int64_t>(0);
  QUELL_RETURN_IF_ERROR(
      ledger->SubmitAndWait(workflow::PublishPolicySet(yaml, "config", version)).status());
  logger.Info("published the configured policy set",
              {{"file", config.policies_file}, {"version", *version}});
  return absl::OkStatus();
}

int Serve(const Flags& flags) {
  if (auto usage = NoArguments(flags, 1)) return *usage;
  auto config = BuildConfig(flags);
  if (!config.ok()) return ConfigError(config.status());
  std::string host;
  int port = 0;
  if (auto s = SplitListen(config->listen, "--listen (listen:)", &host, &port); !s.ok())
    return Usage(std::string(SV(s.message())), kServeHelp);
  if (auto s = ProbeListen(host, port); !s.ok()) return Failure(s);
  // The gRPC address too, before anything is written (it failed after the data directory
  // and a --dev key were made), and never the HTTP one's port on an overlapping address
  // (gRPC used to bind with SO_REUSEPORT and share it; it fails now, but only after the
  // data directory is written).
  if (!config->grpc_listen.empty()) {
    std::string grpc_host;
    int grpc_port = 0;
    if (auto s = SplitListen(config->grpc_listen, "--grpc-listen (grpc_listen:)", &grpc_host,
                             &grpc_port);
        !s.ok())
      return Usage(std::string(SV(s.message())), kServeHelp);
    // The same port on the same address, or on any address when either is a wildcard or
    // a name (which may resolve to the other's address).
    auto literal = [](std::string h) {  // an IP address, not the wildcard
      if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
      in6_addr a6;
      in_addr a4;
      if (::inet_pton(AF_INET, h.c_str(), &a4) == 1) return a4.s_addr != INADDR_ANY;
      return ::inet_pton(AF_INET6, h.c_str(), &a6) == 1 && !IN6_IS_ADDR_UNSPECIFIED(&a6);
    };
    const bool distinct = literal(host) && literal(grpc_host) && host != grpc_host;
    if (grpc_port != 0 && grpc_port == port && !distinct) {
      return Usage(absl::StrCat("grpc_listen: ", config->grpc_listen,
                                " is the HTTP address (listen): give gRPC a port of its own"),
                   kServeHelp);
    }
    if (auto s = ProbeListen(grpc_host, grpc_port); !s.ok()) return Failure(s);
  }
  // On a first start the policies file loads before anything is written either: a typo in
  // its name left a data directory and a --dev key (shown once, then lost) behind. Later
  // starts keep the ledger's version (PublishInitialPolicies), so a file edited since is
  // not checked here.
  if (!config->policies_file.empty() && postgres_url.empty() &&
      !ledger::CheckSqliteLedger(config->data).ok()) {
    absl::StatusOr<std::string> yaml = core::ReadFile(config->policies_file);
    if (!yaml.ok()) {
      return Failure(absl::Status(yaml.status().code(),
                                  absl::StrCat("policies file: ", yaml.status().message())));
    }
    if (auto set = policy::LoadPolicySet(*yaml, 1); !set.ok()) {
      return Failure(absl::InvalidArgumentError(
          absl::StrCat(config->policies_file, " does not load:\n", set.status().message())));
    }
  }
  auto level = obs::ParseLevel(config->log_level);
  if (!level.ok()) return Usage(absl::StrCat("log_level: ", level.status().message()), kServeHelp);
  // Info lines (one access-log line per request) are written by a background thread
  // every 10 ms, so a request thread never waits in write(2); warnings and errors
  // are written at once (obs/log.h).
  obs::Logger logger(
      obs::Logger::Options{.min_level = *level, .flush_interval = absl::Milliseconds(10)});
  // Declared before everything that records spans or metrics, so both outlive them.
  obs::Registry metrics;
  std::unique_ptr<obs::Tracer> tracer;
  if (config->tracing.on()) {
    obs::OtlpHttpExporter::Options eo;
    eo.resource.service_version = QUELL_VERSION;
    auto exporter = obs::OtlpHttpExporter::Create(config->tracing.endpoint, eo);
    if (!exporter.ok())
      return Usage(absl::StrCat(config->tracing.endpoint_from, ": ", exporter.status().message()),
                   kServeHelp);
    obs::Tracer::Options to;
    to.sample_ratio = config->tracing.sample_ratio;
    to.max_queue_spans = static_cast<size_t>(config->tracing.max_queue_spans);
    auto t = obs::Tracer::Create(*std::move(exporter), to, &metrics, &logger);
    if (!t.ok()) return Usage(absl::StrCat("tracing: ", t.status().message()), kServeHelp);
    tracer = *std::move(t);
  }

  // Block the signals we wait for before any thread starts, so only sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  // A closed terminal or ssh session: the same drain as SIGTERM, not the default abrupt
  // exit (there is no configuration to reload).
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  core::Clock* clock = core::RealClock::Get();
  // One owner per data directory: `quell import --data DIR` takes the same lock. On
  // PostgreSQL the directory holds nothing of the ledger (webhook state is in the
  // database too), and several nodes may run from one directory: no lock.
  absl::StatusOr<int> data_lock = -1;
  if (postgres_url.empty()) {
    data_lock = importer::LockDataDir(
        config->data, "server.lock",
        absl::StrCat(config->data, " is in use by another quell server or import"));
    if (!data_lock.ok()) return Failure(data_lock.status());
  }
  auto store = OpenStore(*config);
  if (!store.ok()) return Failure(store.status());
  // Several nodes on PostgreSQL: listeners (index, policies, safeguards, feed waiters)
  // follow the database's change feed, started below, not this node's commits.
  ledger::LedgerOptions ledger_options;
  ledger_options.external_delivery = !postgres_url.empty();
  ledger_options.metrics = config->metrics_enabled ? &metrics : nullptr;  // commit histograms
  ledger_options.tracer = tracer.get();  // commit and apply spans of traced writes
  auto ledger = ledger::Ledger::Open(*std::move(store), ledger_options, clock);
  if (!ledger.ok()) return Failure(ledger.status());

  index::Index index;
  api::IndexApplier applier(&index);
  if (auto s = applier.Load((*ledger)->store()); !s.ok()) return Failure(s);
  (*ledger)->AddListener(&applier);

  auto keys = auth::KeyRing::Create(&(*ledger)->store(), clock);
  if (!keys.ok()) return Failure(keys.status());
  if (flags.Has("dev")) {
    auto list = (*ledger)->store().ListKeys();
    if (!list.ok()) return Failure(list.status());
    if (list->empty()) {
      auto key = auth::MakeKey(auth::Role::kAdmin, {}, "created by serve --dev", clock->Now());
      if (!key.ok()) return Failure(key.status());
      if (auto s = (*ledger)->store().CreateKey(key->record); !s.ok()) return Failure(s);
      (void)(*keys)->Refresh();
      std::printf("quell: --dev: created admin key (shown once): %s\n", key->token.c_str());
      std::fflush(stdout);
    }
  }

  // Webhooks: their own state file beside the ledger (docs/webhooks.md).
  // `webhooks:` of the config file, QUELL_WEBHOOK_* over it (cli/config.cc).
  webhooks::DispatcherOptions webhook_options;
  const WebhooksConfig& wc = config->webhooks;
  if (wc.max_attempts) webhook_options.max_attempts = *wc.max_attempts;
  if (wc.backoff_initial) webhook_options.backoff_initial = *wc.backoff_initial;
  if (wc.backoff_max) webhook_options.backoff_max = *wc.backoff_max;
  if (wc.timeout) webhook_options.timeout = *wc.timeout;
  if (wc.poll) webhook_options.poll = *wc.poll;
  if (webhook_options.backoff_max < webhook_options.backoff_initial)
    webhook_options.backoff_max = webhook_options.backoff_initial;
  // Several nodes (--postgres): the state is shared in the ledger's database and only the
  // "webhooks" lease holder delivers (below; docs/cluster.md).
  auto webhook_state =
      postgres_url.empty()
          ? webhooks::OpenSqliteStateStore(absl::StrCat(config->data, "/webhooks.db"))
          : webhooks::OpenPostgresStateStore({.url = postgres_url});
  if (!webhook_state.ok()) return Failure(webhook_state.status());
  webhook_options.ledger = ledger->get();
  auto webhook_dispatcher =
      webhooks::Dispatcher::Create(*std::move(webhook_state), &(*ledger)->store(), clock,
                                   webhook_options, config->metrics_enabled ? &metrics : nullptr);
  if (!webhook_dispatcher.ok()) return Failure(webhook_dispatcher.status());
  (*ledger)->AddListener(webhook_dispatcher->get(), ledger::ListenerTiming::kDurable);

  // `safeguards:` of the config file, QUELL_SAFEGUARDS_* over it (cli/config.cc): the
  // API's (below), whose pending_ttl the review-queue gauges also use to drop approvals
  // and rollback requests.
  const workflow::SafeguardOptions sg_options = ToSafeguardOptions(config->safeguards);
  api::ReviewQueueOptions review_queue{.clock = clock, .pending_ttl = sg_options.pending_ttl};
  auto metric_handles = api::RegisterServerMetrics(metrics, QUELL_VERSION, ledger->get(), &index,
                                                   config->node_name, review_queue);
  if (!metric_handles.ok()) return Failure(metric_handles.status());

  // The change feed (--postgres) as /readyz sees it: set once it runs; the server stops
  // before the feed does.
  std::atomic<ledger::PostgresChangeFeed*> feed_for_health{nullptr};
  api::ApiDeps deps;
  if (!postgres_url.empty()) {
    deps.follower_status = [&feed_for_health]() -> absl::Status {
      ledger::PostgresChangeFeed* f = feed_for_health.load();
      return f == nullptr ? absl::UnavailableError("not started") : f->status();
    };
  }
  deps.ledger = ledger->get();
  deps.index = &index;
  deps.keys = keys->get();
  deps.clock = clock;
  deps.catalog = config->catalog;
  deps.metrics = config->metrics_enabled ? &metrics : nullptr;
  deps.logger = &logger;
  deps.tracer = tracer.get();
  deps.webhooks = webhook_dispatcher->get();
  api::ApiOptions api_options;
  api_options.access_log = config->access_log;
  api_options.counters.redis = config->counters.redis;
  api_options.counters.redis_host = config->counters.redis_host;
  api_options.counters.redis_port = config->counters.redis_port;
  api_options.counters.fail_closed = config->counters.fail_closed;
  api_options.counters.lateness = config->counters.lateness;
  api_options.counters.max_keys = config->counters.max_keys;
  api_options.safeguards = sg_options;
  api_options.start_background = postgres_url.empty();  // else: under the lease, below
  auto created = api::Api::Create(deps, api_options);
  if (!created.ok()) return Failure(created.status());
  std::unique_ptr<api::Api> api = *std::move(created);
  std::unique_ptr<ledger::PostgresChangeFeed> feed;  // every node's writes, from the index's seq
  if (!postgres_url.empty()) {
    auto started = ledger::FollowLedger(ledger->get(), {.url = postgres_url, .after = index.seq()});
    if (!started.ok()) return Failure(started.status());
    feed = *std::move(started);
    feed_for_health.store(feed.get());
  }
  if (auto s = PublishInitialPolicies(*config, ledger->get(), logger); !s.ok()) return Failure(s);

  http::ServerOptions so;
  so.host = host;
  so.port = port;
  so.threads = config->threads;
  so.max_body_bytes = config->max_body_bytes;
  so.read_timeout = config->read_timeout;
  so.idle_timeout = config->idle_timeout;
  so.shutdown_grace = config->shutdown_grace;
  auto server = http::Server::Start(so, api.get());
  if (!server.ok()) return Failure(server.status());
  std::unique_ptr<grpc_api::GrpcServer> grpc;
  if (!config->grpc_listen.empty()) {
    grpc_api::GrpcDeps gd{ledger->get(), &index, keys->get(), clock,
                          [a = api.get()] { return a->Catalog(); }};
    gd.tracer = tracer.get();  // a server span per call, continuing the caller's traceparent
    gd.metrics = deps.metrics;
    gd.access_log = config->access_log ? &logger : nullptr;
    // Detections.Submit takes the HTTP API's decision path (same validation and semantics).
    // The call's span context goes along: the ledger's commit spans parent on it.
    gd.submit_detections =
        [a = api.get()](const auth::Principal& who, std::vector<absl::StatusOr<std::string>> items,
                        grpc_api::GrpcDeps::SubmitDone done, const obs::SpanContext& trace_parent) {
          a->detection_intake().SubmitJson(who, std::move(items), std::move(done), trace_parent);
        };
    auto started = grpc_api::GrpcServer::Start(std::move(gd), {.listen = config->grpc_listen});
    if (!started.ok()) return Failure(started.status());
    grpc = *std::move(started);
    logger.Info("grpc serving", {{"listen", config->grpc_listen}, {"port", grpc->port()}});
  }

  workflow::ExpiryScheduler expiry(ledger->get(), clock, absl::Seconds(1), api->WhyHeld());
  std::unique_ptr<ledger::PostgresLease> expiry_lease;
  if (postgres_url.empty()) {
    expiry.Start();
  } else {  // several nodes: expiry runs on the one holding the lease (docs/cluster.md)
    // The same lease runs the API's sweeper (pending approvals expiring, idempotency
    // purge): one node at a time.
    auto lease = ledger::PostgresLease::Start({.url = postgres_url, .name = "expiry"},
                                              [&expiry, &api](bool held) {
                                                if (held) {
                                                  expiry.Start();
                                                  api->StartBackground();
                                                } else {
                                                  expiry.Stop();
                                                  api->StopBackground();
                                                }
                                              });
    if (!lease.ok()) return Failure(lease.status());
    expiry_lease = *std::move(lease);
  }
  std::unique_ptr<ledger::PostgresLease> webhooks_lease;
  if (postgres_url.empty()) {
    (*webhook_dispatcher)->Start();
  } else {  // delivery on one node at a time; a new holder resumes from the shared cursors
    auto lease = ledger::PostgresLease::Start(
        {.url = postgres_url, .name = "webhooks"},
        [d = webhook_dispatcher->get()](bool held) { held ? d->Start() : d->Stop(); });
    if (!lease.ok()) return Failure(lease.status());
    webhooks_lease = *std::move(lease);
  }
  workflow::DetectionRetention retention(&(*ledger)->store(), clock, config->detection_retention);
  retention.Start();

  // Keys created or revoked by another process take effect within this period.
  std::atomic<bool> stop_refresh{false};
  std::thread refresher([&] {
    core::NameThisThread("quell-keys");
    while (!stop_refresh.load()) {
      (void)(*keys)->Refresh();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });

  // Redis may come up after Quell (the counters connect on first use), but one that does
  // not answer at start is most often a wrong address: said now, not at the first event.
  const std::string counters =
      config->counters.redis
          ? absl::StrCat("redis://", config->counters.redis_host, ":", config->counters.redis_port)
          : "memory";
  if (config->counters.redis) {
    if (absl::Status up = ProbeConnect(config->counters.redis_host, config->counters.redis_port,
                                       absl::Seconds(1));
        !up.ok()) {
      logger.Warn(
          "counters: redis does not answer; velocity rules read their counts as 0 (or fail, "
          "with counters.on_error: fail_closed) until it does",
          {{"redis", counters}, {"error", std::string(SV(up.message()))}});
    }
  }
  logger.Info("quell serving",
              {{"listen", absl::StrCat(host, ":", (*server)->port())},
               {"counters", counters},
               {"data", config->data},
               {"seq", (*ledger)->last_seq()},
               {"active", index.size()},
               {"version", QUELL_VERSION},
               {"tracing", config->tracing.on() ? config->tracing.endpoint : "off"},
               {"sample_ratio", config->tracing.sample_ratio}});

  int sig = 0;
  sigwait(&signals, &sig);
  logger.Info("shutting down", {{"signal", sig}});
  api->Drain();           // not ready; long-polls answer now
  (*server)->Shutdown();  // finishes in-flight requests
  expiry_lease.reset();   // releases it (another node takes over) and stops expiry
  expiry.Stop();
  webhooks_lease.reset();         // releases it: another node delivers
  (*webhook_dispatcher)->Stop();  // before the ledger and its store go
  retention.Stop();
  stop_refresh.store(true);
  refresher.join();
  server->reset();
  if (grpc) grpc->Shutdown();  // before the ledger: open Watch streams end
  feed.reset();                // before the listeners it feeds (the api's) go
  api.reset();
  ledger->reset();
  metric_handles->clear();                         // drains the commit queue
  if (tracer) tracer->Shutdown(absl::Seconds(2));  // exports what the last requests recorded
  logger.Info("stopped");
  return kOk;
}

int Keys(const Flags& flags) {
  const auto& pos = flags.positional();
  if (pos.size() < 2) return Usage("keys: create, list or revoke ID", kKeysHelp);
  auto config = BuildConfig(flags);
  if (!config.ok()) return ConfigError(config.status());
  const std::string& verb = pos[1];
  if (verb == "create") {
    if (auto usage = NoArguments(flags, 2)) return *usage;
    auto role_text = flags.Get("role");
    if (!role_text)
      return Usage("keys create needs --role admin|detector|enforcer|reviewer|viewer", kKeysHelp);
    auto role = auth::ParseRole(*role_text);
    if (!role) return Usage(absl::StrCat("unknown role \"", *role_text, "\""), kKeysHelp);
    auto key = auth::MakeKey(*role, flags.All("source"), flags.Get("name").value_or(""),
                             core::RealClock::Get()->Now());
    if (!key.ok()) return Usage(std::string(SV(key.status().message())), kKeysHelp);
    // Creates the ledger if there is none yet: a key before the first start is fine.
    auto store = OpenStore(*config);
    if (!store.ok()) return Failure(store.status());
    if (auto s = (*store)->CreateKey(key->record); !s.ok()) return Failure(s);
    std::cerr << "created " << key->record.role << " key " << key->record.id
              << " (the key is shown once)\n";
    std::cout << key->token << "\n";
    return kOk;
  }
  if (verb != "list" && verb != "revoke") {
    return Usage(absl::StrCat("keys: unknown command \"", verb, "\""), kKeysHelp);
  }
  if (auto usage = NoArguments(flags, verb == "list" ? 2 : 3)) return *usage;
  for (const char* only_create : {"role", "source", "name"}) {
    if (flags.Has(only_create)) {
      return Usage(absl::StrCat("keys ", verb, ": --", only_create, " is for keys create"),
                   kKeysHelp);
    }
  }
  if (verb == "revoke" && pos.size() != 3) return Usage("keys revoke needs the key ID", kKeysHelp);
  auto store = OpenStore(*config, /*create=*/false);
  if (!store.ok()) return Failure(store.status());
  if (verb == "list") {
    auto keys = (*store)->ListKeys();
    if (!keys.ok()) return Failure(keys.status());
    // The name last: it is free text (spaces), and what tells keys of one role apart.
    std::printf("%-30s %-9s %-25s %-27s %-8s %s\n", "ID", "ROLE", "SOURCES", "CREATED", "STATUS",
                "NAME");
    for (const auto& k : *keys) {
      std::string sources;
      for (const auto& s : k.sources) absl::StrAppend(&sources, sources.empty() ? "" : ",", s);
      // CREATED is 27 wide: RFC 3339 with microseconds ("2026-12-01T01:22:43.032263Z").
      std::printf("%-30s %-9s %-25s %-27s %-8s %s\n", k.id.c_str(), k.role.c_str(),
                  sources.empty() ? "-" : sources.c_str(),
                  core::FormatRfc3339(k.created_at).c_str(), k.revoked_at ? "revoked" : "active",
                  k.name.c_str());
    }
    return kOk;
  }
  if (auto s = (*store)->RevokeKey(pos[2], core::RealClock::Get()->Now()); !s.ok())
    return Failure(s);
  std::cerr << "revoked " << pos[2] << "\n";
  return kOk;
}

int Audit(const Flags& flags) {
  const auto& pos = flags.positional();
  // What is wrong, as the other commands say it ("audit verify [--data DIR]" alone did not).
  if (pos.size() < 2) return Usage("audit: name what to do: audit verify", kAuditHelp);
  if (pos[1] != "verify") {
    return Usage(absl::StrCat("audit: unknown subcommand \"", pos[1], "\" (audit verify)"),
                 kAuditHelp);
  }
  if (auto stray = NoArguments(flags, 2)) return *stray;
  auto config = BuildConfig(flags);
  if (!config.ok()) return ConfigError(config.status());
  auto store = OpenStore(*config, /*create=*/false);
  if (!store.ok()) return Failure(store.status());
  auto report = ledger::VerifyChain(**store);
  if (!report.ok()) return Failure(report.status());
  if (report->ok()) {
    std::printf(
        "ok: %lld changes verified, chain intact up to seq %lld (hash %s); the mitigations "
        "table, the policy sets and the lists agree with it\n",
        static_cast<long long>(report->checked), static_cast<long long>(report->last_seq),
        report->last_seq > 0 ? report->last_hash.c_str() : "-");
    return kOk;
  }
  std::printf("BROKEN at seq %lld: %s (the chain verified up to seq %lld)\n",
              static_cast<long long>(report->broken_seq), report->reason.c_str(),
              static_cast<long long>(report->last_seq));
  return kFailure;
}

int Migrate(const Flags& flags) {
  if (auto usage = NoArguments(flags, 1)) return *usage;
  auto config = BuildConfig(flags);
  if (!config.ok()) return ConfigError(config.status());
  // Migrates a ledger; does not make one where --data is mistyped (serve makes them).
  // Opening applies pending migrations. A data directory is made by serve, not here (a
  // mistyped --data); on PostgreSQL, migrate is how the schema is made.
  auto store = OpenStore(*config, /*create=*/!postgres_url.empty());
  if (!store.ok()) return Failure(store.status());
  std::printf("schema at version %d\n", postgres_url.empty() ? ledger::SqliteSchemaVersion()
                                                             : ledger::PostgresSchemaVersion());
  return kOk;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return Usage("");
  const std::string cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsageText;
    return kOk;
  }
  if (cmd == "version" || cmd == "--version") {
    if (args.size() == 2 && (args[1] == "--help" || args[1] == "-h")) {
      std::cout << "usage: quell version\n\nPrints the version. exit status: 0.\n";
      return kOk;
    }
    if (args.size() > 1) return Usage(absl::StrCat(cmd, ": unexpected argument \"", args[1], "\""));
    std::cout << "quell " << QUELL_VERSION << "\n";
    return kOk;
  }
  // `quell policy ...` parses its own flags (--cases...); -h is --help for every command.
  std::vector<std::string> rest(args.begin() + 1, args.end());
  for (std::string& a : rest) {
    if (a == "-h") a = "--help";
  }
  if (cmd == "policy") return PolicyCommand(rest);
  if (cmd == "import") return ImportCommand(rest);
  if (cmd == "check") return CheckCommand(rest);
  // Each command takes its own flags: one meant for another (`migrate --listen X`) is a
  // slip to report, not to ignore.
  struct Command {
    std::set<std::string> with_value, booleans;
    int (*run)(const Flags&);
    std::set<std::string> repeatable = {};
  };
  static const std::map<std::string, Command> kCommands = {
      {"serve",
       {{"data", "postgres", "listen", "grpc-listen", "redis", "config", "threads"},
        {"dev", "help"},
        &Serve}},
      {"keys",
       {{"data", "postgres", "config", "role", "source", "name"}, {"help"}, &Keys, {"source"}}},
      {"audit", {{"data", "postgres", "config"}, {"help"}, &Audit}},
      {"migrate", {{"data", "postgres", "config"}, {"help"}, &Migrate}},
  };
  auto command = kCommands.find(cmd);
  if (command == kCommands.end()) return Usage(absl::StrCat("unknown command \"", cmd, "\""));
  // --help (or -h) anywhere among the command's arguments: its own text, whatever else
  // is there (a half-typed command line asking for help is not bad usage).
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::cout << CommandHelp(cmd);
      return kOk;
    }
  }
  auto flags = Flags::Parse(args, command->second.with_value, command->second.booleans,
                            command->second.repeatable);
  if (!flags.ok())
    return Usage(absl::StrCat(cmd, ": ", flags.status().message()), CommandHelp(cmd));
  if (auto pg = PostgresLedgerOf(*flags)) {
    // --data with --postgres or QUELL_POSTGRES names two ledgers: which one was meant is
    // not guessed (with QUELL_POSTGRES exported, `keys create --data ./var` put an admin
    // key in that database, and `audit verify --data BACKUP` audited it), as policy
    // backtest and import already refused. serve is the exception: on PostgreSQL its
    // --data is the node's own directory (its lock; docs/cluster.md).
    if (flags->Has("data") && cmd != "serve") return Usage(TwoLedgers(*pg), CommandHelp(cmd));
    postgres_url = pg->url;
  }
  return command->second.run(*flags);
}

}  // namespace
}  // namespace quell::cli

int main(int argc, char** argv) { return quell::cli::Main(argc, argv); }
