// `quell policy ...`: tools for policy authors (SPEC "CLI").
//
//   quell policy check FILE               validate; every error as FILE:line:col: message
//   quell policy test FILE --cases DIR    run the policy-as-code cases of DIR
//   quell policy backtest FILE --from T --to T [--data DIR] [--json]
//                                         replay stored detections (engine/backtest.h)
//
// Thread-safety: confined to main.
#ifndef QUELL_CLI_POLICY_CMD_H_
#define QUELL_CLI_POLICY_CMD_H_

#include <string>
#include <vector>

namespace quell::cli {

//! Runs `quell policy <args...>` (args exclude "policy"). Writes to stdout/stderr.
//! Returns the exit status: 0 success, 1 failure (invalid set, failing case), 2 bad usage.
int PolicyCommand(const std::vector<std::string>& args);

}  // namespace quell::cli

#endif  // QUELL_CLI_POLICY_CMD_H_
