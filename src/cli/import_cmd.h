// `quell import FILE… [--server URL --key KEY | --data DIR] [--format ndjson|csv|avro]
//   [--rejects PATH] [--checkpoint PATH] [--resume] [--dry-run [--policies FILE]] [--json]`
// (SPEC "CLI"; docs/import.md).
//
// Thread-safety: confined to main (installs SIGINT/SIGTERM handlers for the run).
#ifndef QUELL_CLI_IMPORT_CMD_H_
#define QUELL_CLI_IMPORT_CMD_H_

#include <string>
#include <vector>

namespace quell::cli {

//! Runs `quell import <args...>` (args exclude "import"). Returns the exit status: 0 all
//! rows accounted for, 1 failure (refused input, interrupted, server or store errors; the
//! checkpoint allows --resume), 2 bad usage.
int ImportCommand(const std::vector<std::string>& args);

}  // namespace quell::cli

#endif  // QUELL_CLI_IMPORT_CMD_H_
