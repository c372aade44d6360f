#include "cli/import_cmd.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/config.h"
#include "cli/flags.h"
#include "core/time.h"
#include "http_client/http_client.h"
#include "importer/importer.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::cli {
namespace {

constexpr char kImportUsage[] = R"(usage: quell import FILE... [flags]

Loads bulk detections (one per row) from NDJSON, CSV or Avro files, each optionally gzip
or zstd compressed; FILE - reads standard input. See docs/import.md.

where to:
  --server URL --key KEY   a running server (POST /v1/detections over keep-alive HTTP);
                           QUELL_SERVER and QUELL_KEY, unless --data or --dry-run
  --data DIR               the data directory itself (default ./var; refused while a
                           server owns it)
  --config FILE            the server's configuration (QUELL_CONFIG): its data: and,
                           without --server, its safeguards: (QUELL_SAFEGUARDS_* over them)
input:
  --format ndjson|csv|avro overrides detection by file name and content
  --max-row-bytes N        longer rows are rejected (default 1048576)
safety:
  --rejects PATH           rejected rows as NDJSON {"file","line","error","row"}
                           (default FILE.rejects.ndjson)
  --checkpoint PATH        default FILE.quell-checkpoint (see docs/import.md)
  --resume                 continue an interrupted import from its checkpoint
  --dry-run                evaluate every row, print the impact, write nothing
  --policies FILE          dry run against this policy set instead of the stored one
  --postgres URL           dry run against a PostgreSQL ledger (QUELL_POSTGRES), read
                           only; an import into one goes through a node (--server)
output:
  --json                   the final summary as one JSON object on stdout
  --progress auto|bar|lines|off   (default auto: a bar on a terminal)
tuning:
  --batch-rows N (1000)  --in-flight N (8)  --retry-for DURATION (60s)  --no-fsync
  --help                   this text

exit status: 0 every row accepted, duplicate or rejected (see --rejects); 1 stopped
(refused input, interrupted, server or store error: --resume continues); 2 bad usage.
)";

std::atomic<bool> g_stop{false};

void OnSignal(int) {
  g_stop.store(true);
  // A second Ctrl-C kills at once; the last checkpoint stays valid.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
}

// A configuration that does not hold (the file, a QUELL_* variable): its message, which
// names where, as serve reports it.
int ConfigError(const absl::Status& s) {
  std::cerr << "quell import: " << s.message() << "\n";
  return kUsage;
}

int ImportUsage(const std::string& message) {
  if (!message.empty()) std::cerr << "quell import: " << message << "\n\n";
  std::cerr << kImportUsage;
  return kUsage;
}

bool ParseCount(const std::optional<std::string>& v, int64_t lo, int64_t hi, int64_t* out) {
  if (!v) return true;
  return absl::SimpleAtoi(*v, out) && *out >= lo && *out <= hi;
}

}  // namespace

int ImportCommand(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(
      args,
      {"server", "key", "data", "config", "postgres", "format", "rejects", "checkpoint", "policies",
       "batch-rows", "in-flight", "retry-for", "max-row-bytes", "progress"},
      {"resume", "dry-run", "json", "help", "no-fsync"});
  if (!flags.ok()) return ImportUsage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kImportUsage;
    return kOk;
  }
  importer::ImportOptions o;
  o.files = flags->positional();
  if (o.files.empty())
    return ImportUsage("no input: name one or more files, or - for standard input");
  if (std::count(o.files.begin(), o.files.end(), "-") > 1) {
    return ImportUsage("- (standard input) can be read only once");
  }
  if (auto v = flags->Get("format")) {
    auto f = importer::ParseFormat(*v);
    if (!f.ok()) return ImportUsage(std::string(f.status().message()));
    o.format = *f;
  }
  o.server_url = flags->Get("server").value_or("");
  // QUELL_SERVER, as `quell check` reads it (with QUELL_KEY, which this already read: both
  // exported for check sent an import to ./var), unless the command line says to stay
  // local: --data, --postgres, or a dry run, which reads a ledger.
  bool server_from_env = false;
  if (const char* env = std::getenv("QUELL_SERVER");
      o.server_url.empty() && env != nullptr && *env != '\0' && !flags->Has("data") &&
      !flags->Has("postgres") && !flags->Has("dry-run")) {
    o.server_url = env;
    server_from_env = true;
  }
  o.key = flags->Get("key").value_or("");
  if (const char* env = std::getenv("QUELL_KEY"); o.key.empty() && env != nullptr) o.key = env;
  if (!o.server_url.empty() && o.key.empty()) {
    return ImportUsage(server_from_env
                           ? "QUELL_SERVER names a server: give --key KEY (or QUELL_KEY), "
                             "or --data DIR to write a data directory"
                           : "--server needs --key KEY (or QUELL_KEY)");
  }
  if (!o.server_url.empty()) {  // a malformed URL is bad usage (exit 2), found before any file
    if (auto u = http_client::ParseUrl(o.server_url); !u.ok()) {
      return ImportUsage(absl::StrCat("--server: ", u.status().message()));
    }
  }
  if (!o.server_url.empty() && flags->Has("data"))
    return ImportUsage("--server and --data exclude each other");
  // The configuration serve reads (file < QUELL_* < flags): an import without a server
  // decides with the safeguards that server would (immunity, pending_ttl), and the data
  // directory and ledger are the ones it names.
  Config config;
  std::optional<std::string> config_file = flags->Get("config");
  if (const char* env = std::getenv("QUELL_CONFIG"); !config_file && env != nullptr && *env) {
    config_file = env;
  }
  if (config_file) {
    auto loaded = LoadConfigFile(*config_file, config);
    if (!loaded.ok()) return ConfigError(loaded.status());
    config = *std::move(loaded);
  }
  if (absl::Status st = ApplyEnvironment(&config); !st.ok()) return ConfigError(st);
  o.safeguards = ToSafeguardOptions(config.safeguards);
  o.data_dir = config.data;
  if (auto v = flags->Get("data")) o.data_dir = *v;
  o.rejects_path = flags->Get("rejects").value_or("");
  o.checkpoint_path = flags->Get("checkpoint").value_or("");
  o.resume = flags->Has("resume");
  o.dry_run = flags->Has("dry-run");
  o.policies_file = flags->Get("policies").value_or("");
  if (!o.policies_file.empty() && !o.dry_run) return ImportUsage("--policies is for --dry-run");
  if (o.dry_run && !o.server_url.empty()) {
    return ImportUsage(
        "--dry-run reads the data directory (--data DIR; a running server may own it) or "
        "a PostgreSQL ledger (--postgres URL), and/or --policies FILE, not --server");
  }
  if (o.dry_run && o.resume) return ImportUsage("--dry-run and --resume exclude each other");
  // A PostgreSQL ledger (--postgres, or QUELL_POSTGRES): a dry run reads it. An import
  // writes it through a node, whose commit path holds the cluster's breakers and feeds
  // the others; writing ./var instead because the variable was not looked at would
  // import into the wrong ledger without a word.
  std::optional<PostgresLedger> postgres = PostgresLedgerOf(*flags);
  if (!postgres && !config.postgres.empty()) {
    postgres = PostgresLedger{config.postgres, false, "the configuration's postgres:"};
  }
  if (postgres && postgres->from_flag && !o.server_url.empty()) {
    return ImportUsage("--server and --postgres exclude each other");
  }
  if (postgres && o.server_url.empty()) {
    if (flags->Has("data")) return ImportUsage(TwoLedgers(*postgres));
    if (!o.dry_run) {
      return ImportUsage(absl::StrCat(
          postgres->from_flag ? "--postgres is for --dry-run"
                              : absl::StrCat(postgres->origin, " names a PostgreSQL ledger"),
          ": import into it through a node (--server URL --key KEY)",
          postgres->from_flag ? ""
          : postgres->origin == "QUELL_POSTGRES"
              ? ", or unset it to write a data directory (--data DIR)"
              : ", or give --data DIR"));
    }
    // Read-only: never migrate a database a newer or older node owns, nor make one.
    o.dry_run_ledger = [url = postgres->url]() {
      return ledger::OpenPostgresStore(
          {.url = url, .apply_migrations = false, .create_schema = false});
    };
  }
  o.durable = !flags->Has("no-fsync");
  int64_t n = 0;
  if (!ParseCount(flags->Get("batch-rows"), 1, 10000, &n))
    return ImportUsage("--batch-rows must be 1..10000");
  if (flags->Get("batch-rows")) o.batch_rows = static_cast<size_t>(n);
  if (!ParseCount(flags->Get("in-flight"), 1, 64, &n))
    return ImportUsage("--in-flight must be 1..64");
  if (flags->Get("in-flight")) o.in_flight = static_cast<int>(n);
  if (!ParseCount(flags->Get("max-row-bytes"), 64, int64_t{1} << 30, &n)) {
    return ImportUsage("--max-row-bytes must be 64..1073741824");
  }
  if (flags->Get("max-row-bytes")) o.max_row_bytes = static_cast<size_t>(n);
  if (auto v = flags->Get("retry-for")) {
    auto d = core::ParseDuration(*v);
    if (!d.ok()) return ImportUsage(absl::StrCat("--retry-for: ", d.status().message()));
    o.retry_for = *d;
  }
  std::string progress = flags->Get("progress").value_or("auto");
  if (progress == "auto") {
    o.progress = importer::Progress::AutoMode(stderr);
  } else if (progress == "bar") {
    o.progress = importer::Progress::Mode::kBar;
  } else if (progress == "lines") {
    o.progress = importer::Progress::Mode::kLines;
  } else if (progress == "off") {
    o.progress = importer::Progress::Mode::kOff;
  } else {
    return ImportUsage("--progress must be auto, bar, lines or off");
  }
  const bool json = flags->Has("json");

  g_stop.store(false);
  struct sigaction sa {};
  sa.sa_handler = &OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  o.stop = &g_stop;

  importer::ImportResult r = importer::Import(o);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);

  if (json) {
    std::cout << importer::SummaryJson(r) << "\n";
  }
  if (!r.status.ok()) std::cerr << "quell import: " << r.status.message() << "\n";
  if (!r.refused) {
    std::string text = importer::SummaryText(r);
    // With --json, stdout is for the machine; people read stderr.
    (json ? std::cerr : std::cout) << text;
  }
  if (r.status.ok()) return kOk;
  return r.bad_usage ? kUsage : kFailure;
}

}  // namespace quell::cli
