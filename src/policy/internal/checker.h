// Type checker and compiler from the AST to the closure tree (node.h).
//
// Thread-safety: pure functions over their arguments.
#ifndef QUELL_POLICY_INTERNAL_CHECKER_H_
#define QUELL_POLICY_INTERNAL_CHECKER_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/expr.h"
#include "policy/internal/ast.h"
#include "policy/internal/lexer.h"
#include "policy/internal/node.h"

namespace quell::policy::internal {

// Annotates `root` with types and resolved fields. Appends every error found to `errors`
// and returns the type of the whole expression (kUnknown after an error).
Type Check(Expr& root, const Schema& schema, const Declarations& decls,
           std::vector<LexError>* errors);

// Builds the evaluator for a checked, error-free AST.
std::unique_ptr<const Node> Build(const Expr& root, const Declarations& decls);

// For a checked AST: if the expression can only be true when detection.type is one of a
// fixed set of literals (a top-level && conjunct `detection.type == "x"` or
// `detection.type in ["x", ...]`), returns that set, sorted and unique.
std::optional<std::vector<std::string>> DetectionTypeGuard(const Expr& root);

// Levenshtein distance, and the closest candidate within a small distance ("" if none).
int EditDistance(std::string_view a, std::string_view b);
std::string Closest(std::string_view name, const std::vector<std::string>& candidates);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_CHECKER_H_
