#include "cli/policy_cmd.h"

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "engine/policy_cases.h"
#include "policy/policy_set.h"

namespace quell::cli {
namespace {

constexpr int kOk = 0, kFailure = 1, kUsage = 2;

constexpr char kPolicyUsage[] = R"(usage:
  quell policy check FILE              validate a policy set (exit 1 with every error)
  quell policy test FILE --cases DIR   run the test cases (*.yaml) of DIR against FILE

Errors are printed as FILE:line:column: message. `test` prints one line per case and a
summary "N passed, M failed"; it exits 1 if any case fails.
)";

int Usage(const std::string& message) {
  if (!message.empty()) std::cerr << "quell policy: " << message << "\n\n";
  std::cerr << kPolicyUsage;
  return kUsage;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream s;
  s << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return s.str();
}

// Loads FILE; on failure prints every error and returns null.
std::shared_ptr<const policy::PolicySet> LoadOrReport(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    std::cerr << "quell policy: " << text.status().message() << "\n";
    return nullptr;
  }
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(*text, 1);
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
  if (!flags.ok()) return Usage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kPolicyUsage;
    return kOk;
  }
  if (flags->positional().size() != 1) return Usage("check takes one FILE");
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
  if (!flags.ok()) return Usage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::cout << kPolicyUsage;
    return kOk;
  }
  if (flags->positional().size() != 1) return Usage("test takes one FILE");
  std::optional<std::string> dir = flags->Get("cases");
  if (!dir) return Usage("test needs --cases DIR");
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

}  // namespace

int PolicyCommand(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("");
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kPolicyUsage;
    return kOk;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "check") return Check(rest);
  if (args[0] == "test") return Test(rest);
  if (args[0] == "backtest") {
    std::cerr << "quell policy: backtest is not available yet\n";
    return kFailure;
  }
  return Usage(absl::StrCat("unknown policy command \"", args[0], "\""));
}

}  // namespace quell::cli
