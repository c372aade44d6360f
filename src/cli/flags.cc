#include "cli/flags.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace quell::cli {

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& with_value,
                                   const std::set<std::string>& booleans,
                                   const std::set<std::string>& repeatable) {
  Flags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() < 3 || a.compare(0, 2, "--") != 0) {
      f.positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (booleans.count(name)) {
      if (value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      f.values_.emplace(name, "true");
    } else if (with_value.count(name)) {
      if (!value) {
        if (i + 1 >= args.size())
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = args[++i];
      }
      if (f.values_.count(name) > 0 && repeatable.count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " is given twice"));
      }
      f.values_.emplace(name, *value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return f;
}

std::optional<std::string> Flags::Get(const std::string& name) const {
  auto range = values_.equal_range(name);
  if (range.first == range.second) return std::nullopt;
  return std::prev(range.second)->second;  // the only one (Parse refuses repeats)
}

std::vector<std::string> Flags::All(const std::string& name) const {
  std::vector<std::string> out;
  auto range = values_.equal_range(name);
  for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
  return out;
}

std::optional<PostgresLedger> PostgresLedgerOf(const Flags& flags) {
  if (std::optional<std::string> url = flags.Get("postgres")) return PostgresLedger{*url, true};
  const char* env = std::getenv("QUELL_POSTGRES");
  if (env == nullptr || *env == '\0') return std::nullopt;
  return PostgresLedger{env, false};
}

std::string TwoLedgers(const PostgresLedger& pg) {
  return pg.from_flag ? "--data and --postgres both name a ledger: give one"
                      : absl::StrCat("--data and ", pg.origin, " both name a ledger: ",
                                     pg.origin == "QUELL_POSTGRES" ? "unset" : "drop", " one");
}

}  // namespace quell::cli
