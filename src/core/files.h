// Reading the small files a command is pointed at (configs, policy sets): the whole file as
// text, or an error that names the path.
//
// Thread-safety: stateless; safe from any thread.
#ifndef QUELL_CORE_FILES_H_
#define QUELL_CORE_FILES_H_

#include <string>

#include "absl/status/statusor.h"

namespace quell::core {

//! The bytes of the regular file at `path`. kNotFound if it cannot be opened,
//! kInvalidArgument for a directory (an easy slip in a config that names files),
//! kDataLoss for a read error; each message starts with the path.
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace quell::core

#endif  // QUELL_CORE_FILES_H_
