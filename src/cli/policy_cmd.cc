#include "cli/policy_cmd.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "core/files.h"
#include "core/time.h"
#include "engine/backtest.h"
#include "engine/policy_cases.h"
#include "ledger/postgres/postgres_store.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"

namespace quell::cli {
namespace {

constexpr char kPolicyUsage[] = R"(usage:
  quell policy check FILE              validate a policy set (exit 1 with every error)
  quell policy test FILE --cases DIR [--verbose]
                                       run the test cases (*.yaml) of DIR against FILE
  quell policy backtest FILE --from T --to T [--data DIR | --postgres URL] [--json]
                     [--samples N]     replay the detections stored in DIR (default ./var)
                                       or in the PostgreSQL ledger at URL (or
                                       QUELL_POSTGRES); not both
                                       observed in [T, T) (RFC 3339) against FILE

Errors are printed as FILE:line:column: message. `test` prints each failing case (every
case with --verbose) and a summary "N passed, M failed"; it exits 1 if any case fails.
`backtest` reads the ledger directly (a running server may keep writing it) and
prints, per policy, the entities that would newly be mitigated, would no longer be, are
unchanged, or are only shadowed, with how many of them are on protected lists; --json
prints the same report as POST /v1/policies/backtest. Escalation counts only the hits replayed in the window.
)";

int PolicyUsage(const std::string& message) {
  if (!message.empty()) std::cerr << "quell policy: " << message << "\n\n";
  std::cerr << kPolicyUsage;
  return kUsage;
}

// Loads FILE as policy set `version`; on failure prints every error and returns null.
std::shared_ptr<const policy::PolicySet> LoadOrReport(const std::string& path,
                                                      int64_t version = 1) {
  absl::StatusOr<std::string> text = core::ReadFile(path);
  if (!text.ok()) {
    std::cerr << "quell policy: " << text.status().message() << "\n";
    return nullptr;
  }
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(*text, version);
  for (const policy::Diagnostic& d : r.errors) {
    std::cerr << path << ":" << d.line << ":" << d.column << ": " << d.message << "\n";
  }
  if (r.set == nullptr) {
    std::cerr << r.errors.size() << (r.errors.size() == 1 ? " error" : " errors") << "\n";
  }
  return r.set;
}

int Check(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {}, {"help"});
  if (!flags.ok()) return PolicyUsage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kPolicyUsage;
    return kOk;
  }
  if (flags->positional().size() != 1) return PolicyUsage("check takes one FILE");
  const std::string& path = flags->positional()[0];
  auto set = LoadOrReport(path);
  if (set == nullptr) return kFailure;
  int enforce = 0, shadow = 0, off = 0;
  for (const policy::Policy& p : set->policies()) {
    (p.mode == policy::Mode::kEnforce ? enforce : p.mode == policy::Mode::kShadow ? shadow : off)++;
  }
  std::cout << path << ": OK (" << set->policies().size() << " policies: " << enforce
            << " enforce, " << shadow << " shadow, " << off << " off; " << set->catalog().size()
            << " actions, " << set->counters().size() << " counters, " << set->lists().size()
            << " lists, " << set->breakers().size() << " breakers)\n";
  return kOk;
}

int Test(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {"cases"}, {"help", "verbose"});
  if (!flags.ok()) return PolicyUsage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kPolicyUsage;
    return kOk;
  }
  if (flags->positional().size() != 1) return PolicyUsage("test takes one FILE");
  std::optional<std::string> dir = flags->Get("cases");
  if (!dir) return PolicyUsage("test needs --cases DIR");
  auto set = LoadOrReport(flags->positional()[0]);
  if (set == nullptr) return kFailure;
  absl::StatusOr<engine::CaseRun> run = engine::RunCaseDirectory(*set, *dir);
  if (!run.ok()) {
    std::cerr << "quell policy: " << run.status().message() << "\n";
    return kFailure;
  }
  for (const engine::CaseResult& r : run->results) {
    if (!r.passed || flags->Has("verbose")) std::cout << r.Report() << "\n";
  }
  std::cout << run->passed << " passed, " << run->failed << " failed\n";
  return run->failed == 0 ? kOk : kFailure;
}

int Backtest(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {"from", "to", "data", "postgres", "samples"}, {"help", "json"});
  if (!flags.ok()) return PolicyUsage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kPolicyUsage;
    return kOk;
  }
  if (flags->positional().size() != 1) return PolicyUsage("backtest takes one FILE");
  engine::BacktestOptions options;
  for (const char* name : {"from", "to"}) {
    std::optional<std::string> text = flags->Get(name);
    if (!text) return PolicyUsage(absl::StrCat("backtest needs --", name, " T (RFC 3339)"));
    absl::StatusOr<absl::Time> t = core::ParseRfc3339(*text);
    if (!t.ok()) return PolicyUsage(absl::StrCat("--", name, ": not an RFC 3339 time: ", *text));
    (std::string_view(name) == "from" ? options.from : options.to) = *t;
  }
  if (options.from >= options.to) return PolicyUsage("--to must be after --from");
  if (std::optional<std::string> n = flags->Get("samples")) {
    int v = 0;
    if (!absl::SimpleAtoi(*n, &v) || v < 0 || v > 1000) return PolicyUsage("--samples: 0-1000");
    options.samples = static_cast<size_t>(v);
  }
  // The ledger: --postgres (or QUELL_POSTGRES), else --data. The two naming a ledger each
  // is refused rather than one chosen silently (--data is this command's ledger only).
  const std::optional<PostgresLedger> postgres = PostgresLedgerOf(*flags);
  if (postgres && flags->Get("data")) return PolicyUsage(TwoLedgers(*postgres));
  // Version 0, an unpublished candidate, as POST /v1/policies/backtest loads one: the
  // --json report is the route's.
  auto set = LoadOrReport(flags->positional()[0], /*version=*/0);
  if (set == nullptr) return kFailure;
  // Read-only use: never migrate a file or database a newer or older server owns, nor
  // make one.
  absl::StatusOr<std::unique_ptr<ledger::Store>> store =
      postgres ? ledger::OpenPostgresStore(
                     {.url = postgres->url, .apply_migrations = false, .create_schema = false})
               : ledger::OpenSqliteStore({.path = flags->Get("data").value_or("./var"),
                                          .apply_migrations = false,
                                          .create = false});
  if (!store.ok()) {
    std::cerr << "quell policy: " << store.status().message() << "\n";
    return kFailure;
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<engine::BacktestReport> report = engine::RunBacktest(**store, set, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!report.ok()) {
    std::cerr << "quell policy: backtest: " << report.status().message() << "\n";
    return kFailure;
  }
  if (flags->Has("json")) {
    std::cout << engine::BacktestReportToJson(*report) << "\n";
  } else {
    std::cout << engine::BacktestReportToText(*report);
  }
  std::cerr << "replayed " << report->detections << " detections in " << seconds << " s\n";
  return kOk;
}

}  // namespace

int PolicyCommand(const std::vector<std::string>& args) {
  if (args.empty()) return PolicyUsage("");
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kPolicyUsage;
    return kOk;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "check") return Check(rest);
  if (args[0] == "test") return Test(rest);
  if (args[0] == "backtest") return Backtest(rest);
  return PolicyUsage(absl::StrCat("unknown policy command \"", args[0], "\""));
}

}  // namespace quell::cli
