// Pratt parser for the policy expression language.
//
// Thread-safety: Parse() is a pure function.
#ifndef QUELL_POLICY_INTERNAL_PARSER_H_
#define QUELL_POLICY_INTERNAL_PARSER_H_

#include <memory>
#include <string_view>
#include <vector>

#include "policy/internal/ast.h"
#include "policy/internal/lexer.h"

namespace quell::policy::internal {

// Parses `source`. Returns null if there was any lexical or syntax error; `errors` then
// holds every lexical error and the first syntax error. Nesting deeper than kMaxDepth is
// a syntax error.
std::unique_ptr<Expr> Parse(std::string_view source, std::vector<LexError>* errors);

// Prints an AST in a fully parenthesized form, for tests: (a && (b || c)), f(x), a.b,
// a[0], -x, (c ? t : e), [1, 2], "s", 1, 1.5, true, null.
std::string DebugString(const Expr& e);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_PARSER_H_
