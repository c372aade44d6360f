// Error-handling helpers on top of absl::Status. This abseil (20220623) has no
// RETURN_IF_ERROR macros, so they live here once.
//
// Thread-safety: macros and free functions only; nothing shared.
#ifndef QUELL_CORE_STATUS_H_
#define QUELL_CORE_STATUS_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QUELL_STATUS_CONCAT_INNER_(a, b) a##b
#define QUELL_STATUS_CONCAT_(a, b) QUELL_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define QUELL_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status quell_status_ = (expr);         \
    if (!quell_status_.ok()) return quell_status_; \
  } while (0)

// `QUELL_ASSIGN_OR_RETURN(auto x, F());` assigns the value of an
// absl::StatusOr<T> or returns its status from the enclosing function.
#define QUELL_ASSIGN_OR_RETURN(lhs, expr) \
  QUELL_ASSIGN_OR_RETURN_IMPL_(QUELL_STATUS_CONCAT_(quell_statusor_, __LINE__), lhs, expr)
#define QUELL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

// Aborts on a broken internal invariant. Never use on untrusted input.
#define QUELL_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: QUELL_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

#endif  // QUELL_CORE_STATUS_H_
