// Operations on runtime Values shared by the evaluator nodes. All are allocation-free and
// implement the error semantics documented in policy/expr.h.
//
// Thread-safety: pure functions.
#ifndef QUELL_POLICY_INTERNAL_RUNTIME_H_
#define QUELL_POLICY_INTERNAL_RUNTIME_H_

#include "policy/internal/lexer.h"
#include "policy/value.h"

namespace quell::policy::internal {

// == (negate for !=). Present values of different kinds are unequal; ints and doubles
// compare numerically.
Value Equal(const Value& a, const Value& b);
// < <= > >= on numbers or strings; other kinds -> kTypeMismatch.
Value Order(Tok op, const Value& a, const Value& b);
// + - * / % with int overflow and division-by-zero checks.
Value Arith(Tok op, const Value& a, const Value& b);
// Number of Unicode code points in UTF-8 text.
int64_t CodePoints(std::string_view s);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_RUNTIME_H_
