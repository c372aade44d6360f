// Abstract syntax tree of a policy expression, annotated in place by the checker.
//
// Thread-safety: plain data; owned by one compilation.
#ifndef QUELL_POLICY_INTERNAL_AST_H_
#define QUELL_POLICY_INTERNAL_AST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "policy/internal/lexer.h"

namespace quell::policy::internal {

enum class ExprKind : uint8_t {
  kNull,
  kBool,
  kInt,
  kDouble,
  kString,
  kIdent,    // name
  kSelect,   // args[0].name
  kIndex,    // args[0][args[1]]
  kCall,     // name(args...)
  kMethod,   // args[0].name(args[1...])
  kUnary,    // op args[0]   (op is kNot or kMinus)
  kBinary,   // args[0] op args[1]
  kTernary,  // args[0] ? args[1] : args[2]
  kList,     // [args...]
};

// Static types. kObject is a namespace such as `detection` that has fields but no value.
enum class Type : uint8_t {
  kUnknown,  // not checked yet, or already reported as an error (suppresses cascades)
  kBool,
  kInt,
  kDouble,
  kString,
  kNull,
  kListString,
  kListInt,
  kListDouble,
  kListBool,
  kListDyn,
  kMap,
  kDyn,
  kObject,
};

const char* TypeName(Type t);

struct Expr {
  ExprKind kind = ExprKind::kNull;
  Pos pos;
  Tok op = Tok::kEnd;  // kUnary / kBinary
  bool bool_value = false;
  int64_t int_value = 0;
  double double_value = 0;
  std::string name;  // kString value, identifier, field, function or method name
  std::vector<std::unique_ptr<Expr>> args;
  bool parenthesized = false;

  // Set by the checker.
  Type type = Type::kUnknown;
  int field = -1;  // a schema field (internal::Field) for resolved selections
};

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_AST_H_
