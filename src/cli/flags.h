// A small command-line parser: `--name value`, `--name=value`, boolean `--name`,
// repeatable flags, positional arguments. Unknown flags are errors (exit status 2), and so
// is a value flag given twice unless it is repeatable (which of the two was meant?).
//
// Thread-safety: confined to main.
#ifndef QUELL_CLI_FLAGS_H_
#define QUELL_CLI_FLAGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::cli {

// Exit statuses of every quell command: ok, failed, bad usage.
inline constexpr int kOk = 0, kFailure = 1, kUsage = 2;

class Flags {
 public:
  // `with_value`: flags that take a value; `booleans`: flags that do not; `repeatable`:
  // value flags that may be given more than once (read with All()).
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& with_value,
                                     const std::set<std::string>& booleans,
                                     const std::set<std::string>& repeatable = {});

  std::optional<std::string> Get(const std::string& name) const;
  std::vector<std::string> All(const std::string& name) const;
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::multimap<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// The PostgreSQL ledger a command was pointed at: --postgres, else a non-empty
// QUELL_POSTGRES.
struct PostgresLedger {
  std::string url;
  bool from_flag = false;  // --postgres (else the environment, or a configuration file)
  std::string origin = "QUELL_POSTGRES";  // where it was named, for messages
};
std::optional<PostgresLedger> PostgresLedgerOf(const Flags& flags);
//! The usage error for --data given with `pg`: which ledger was meant is not guessed.
std::string TwoLedgers(const PostgresLedger& pg);

}  // namespace quell::cli

#endif  // QUELL_CLI_FLAGS_H_
