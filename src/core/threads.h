// Names for the threads Quell starts, as `top -H`, `ps -L`, perf, gdb and
// /proc/PID/task/TID/comm show them: on call, "quell-commit at 100%" says which part is
// saturated where a bare thread id does not.
//
// Thread-safety: NameThisThread names only the calling thread; safe from any thread.
#ifndef QUELL_CORE_THREADS_H_
#define QUELL_CORE_THREADS_H_

#include <string_view>

namespace quell::core {

// Linux keeps 15 bytes of a thread's name; longer names are cut to that.
inline constexpr size_t kMaxThreadName = 15;

//! Names the calling thread `name` (cut to kMaxThreadName bytes). Best effort: a platform
//! without thread names, or a failure, leaves the name unchanged.
void NameThisThread(std::string_view name);

//! `prefix` followed by `n`, e.g. "quell-http-1", cut as NameThisThread cuts it, then
//! given to the calling thread.
void NameThisThread(std::string_view prefix, int n);

}  // namespace quell::core

#endif  // QUELL_CORE_THREADS_H_
