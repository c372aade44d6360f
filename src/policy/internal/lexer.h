// Tokenizer for the policy expression language.
//
// Thread-safety: Lex() is a pure function.
#ifndef QUELL_POLICY_INTERNAL_LEXER_H_
#define QUELL_POLICY_INTERNAL_LEXER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "policy/expr.h"

namespace quell::policy::internal {

enum class Tok : uint8_t {
  kEnd,
  kInt,     // int_value
  kDouble,  // double_value
  kString,  // text = decoded value
  kIdent,   // text
  kTrue,
  kFalse,
  kNull,
  kIn,
  kLParen,
  kRParen,
  kLBracket,
  kRBracket,
  kLBrace,
  kRBrace,
  kDot,
  kComma,
  kQuestion,
  kColon,
  kNot,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kAnd,
  kOr,
  kPlus,
  kMinus,
  kStar,
  kSlash,
  kPercent,
};

// Source position relative to the expression, 1-based; columns count UTF-8 code points.
struct Pos {
  int line = 1;
  int column = 1;
};

struct Token {
  Tok kind = Tok::kEnd;
  Pos pos;
  std::string text;         // identifier name or decoded string literal
  int64_t int_value = 0;    // kInt; the literal 9223372036854775808 is stored as
  bool int_is_min = false;  //   INT64_MIN with int_is_min (valid only after unary -)
  double double_value = 0;  // kDouble
};

const char* TokName(Tok kind);

struct LexError {
  Pos pos;
  std::string message;
};

// Tokenizes `source`. Always ends with a kEnd token. Lexical errors are appended to
// `errors`; the offending characters are skipped so lexing continues.
std::vector<Token> Lex(std::string_view source, std::vector<LexError>* errors);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_LEXER_H_
