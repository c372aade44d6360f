// The SQLite schema as an ordered list of migrations, and the code that applies them.
//
// Thread-safety: ApplyMigrations uses the given connection only; concurrent processes
// are serialised by BEGIN IMMEDIATE (each step re-reads the version inside its lock).
#ifndef QUELL_LEDGER_SQLITE_INTERNAL_SCHEMA_H_
#define QUELL_LEDGER_SQLITE_INTERNAL_SCHEMA_H_

#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ledger/sqlite/internal/db.h"

namespace quell::ledger::sqlite_internal {

struct Migration {
  int version;           // 1, 2, 3... in order, never reused
  std::string_view sql;  // one or more statements
};

// Every migration this binary knows, in order.
std::span<const Migration> Migrations();

// The version recorded in the file (0 for a new file).
absl::StatusOr<int> CurrentVersion(Db& db);

// Applies every step newer than the file's version, each in its own transaction.
// kFailedPrecondition if the file is NEWER than the binary knows, or if it is older and
// `apply` is false. Returns the version after the call.
absl::StatusOr<int> ApplyMigrations(Db& db, bool apply, absl::Time now);

}  // namespace quell::ledger::sqlite_internal

#endif  // QUELL_LEDGER_SQLITE_INTERNAL_SCHEMA_H_
