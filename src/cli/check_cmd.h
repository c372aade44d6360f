// `quell check ENTITY… [--server URL] [--key KEY] [--surface S] [--json]` (SPEC "CLI"): the
// verdict for people, from a running server's in-memory index (POST /v1/check), with the
// mitigations that make it and why.
//
// Thread-safety: confined to main.
#ifndef QUELL_CLI_CHECK_CMD_H_
#define QUELL_CLI_CHECK_CMD_H_

#include <string>
#include <vector>

namespace quell::cli {

//! Runs `quell check <args...>` (args exclude "check"). Returns the exit status: 0 the
//! verdict printed (whatever it is), 1 the server could not answer, 2 bad usage.
int CheckCommand(const std::vector<std::string>& args);

}  // namespace quell::cli

#endif  // QUELL_CLI_CHECK_CMD_H_
