#include "policy/internal/parser.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/strings.h"

namespace quell::policy::internal {
namespace {

using ExprPtr = std::unique_ptr<Expr>;

int BindingPower(Tok t) {
  switch (t) {
    case Tok::kOr:
      return 2;
    case Tok::kAnd:
      return 3;
    case Tok::kEq:
    case Tok::kNe:
    case Tok::kLt:
    case Tok::kLe:
    case Tok::kGt:
    case Tok::kGe:
    case Tok::kIn:
      return 4;
    case Tok::kPlus:
    case Tok::kMinus:
      return 5;
    case Tok::kStar:
    case Tok::kSlash:
    case Tok::kPercent:
      return 6;
    default:
      return 0;
  }
}

class Parser {
 public:
  Parser(std::vector<Token> toks, std::vector<LexError>* errors)
      : toks_(std::move(toks)), errors_(errors) {}

  ExprPtr Run() {
    ExprPtr e = ParseExpr();
    if (e == nullptr) return nullptr;
    if (Cur().kind != Tok::kEnd) {
      if (Cur().kind == Tok::kRParen) return Fail(Cur().pos, "unbalanced ')'");
      return Fail(Cur().pos, absl::StrCat("unexpected ", Describe(Cur()),
                                          " after a complete expression — missing && or ||?"));
    }
    return e;
  }

 private:
  const Token& Cur() const { return toks_[i_]; }
  const Token& Next() const { return toks_[i_ + 1 < toks_.size() ? i_ + 1 : i_]; }
  void Bump() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case Tok::kIdent:
        return absl::StrCat("identifier '", t.text, "'");
      case Tok::kString:
        return "string literal";
      case Tok::kInt:
      case Tok::kDouble:
        return "number";
      default:
        return std::string(TokName(t.kind));
    }
  }
  ExprPtr Fail(Pos p, std::string msg) {
    errors_->push_back({p, std::move(msg)});
    return nullptr;
  }
  bool Expect(Tok k, std::string_view context) {
    if (Cur().kind == k) {
      Bump();
      return true;
    }
    Fail(Cur().pos,
         absl::StrCat("expected ", TokName(k), " ", AV(context), ", found ", Describe(Cur())));
    return false;
  }
  static ExprPtr Make(ExprKind k, Pos p) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = p;
    return e;
  }

  // expr := or ('?' expr ':' expr)?
  ExprPtr ParseExpr() {
    if (++depth_ > kMaxDepth) return Fail(Cur().pos, "expression nested too deeply");
    ExprPtr cond = ParseBinary(0);
    if (cond != nullptr && Cur().kind == Tok::kQuestion) {
      Pos p = Cur().pos;
      Bump();
      ExprPtr then = ParseExpr();
      if (then == nullptr) return nullptr;
      if (!Expect(Tok::kColon, "in conditional ?:")) return nullptr;
      ExprPtr otherwise = ParseExpr();
      if (otherwise == nullptr) return nullptr;
      ExprPtr e = Make(ExprKind::kTernary, p);
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(then));
      e->args.push_back(std::move(otherwise));
      cond = std::move(e);
    }
    --depth_;
    return cond;
  }

  // Restores depth_ when a loop that deepens the tree (a left-associative operator chain,
  // a postfix chain) returns: the tree depth is bounded, not just the recursion depth.
  struct DepthGuard {
    explicit DepthGuard(int* d) : depth(d), saved(*d) {}
    ~DepthGuard() { *depth = saved; }
    int* depth;
    int saved;
  };

  ExprPtr ParseBinary(int min_bp) {
    ExprPtr left = ParseUnary();
    if (left == nullptr) return nullptr;
    DepthGuard guard(&depth_);
    while (true) {
      Tok op = Cur().kind;
      int bp = BindingPower(op);
      if (bp == 0 || bp <= min_bp) break;
      Pos p = Cur().pos;
      Bump();
      if (++depth_ > kMaxDepth) return Fail(p, "expression nested too deeply");
      ExprPtr right = ParseBinary(bp);
      if (right == nullptr) return nullptr;
      ExprPtr e = Make(ExprKind::kBinary, p);
      e->op = op;
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }

  ExprPtr ParseUnary() {
    Tok k = Cur().kind;
    if (k == Tok::kNot || k == Tok::kMinus) {
      Pos p = Cur().pos;
      Bump();
      if (++depth_ > kMaxDepth) return Fail(p, "expression nested too deeply");
      // A negative integer literal: fold it, so that -9223372036854775808 is valid.
      if (k == Tok::kMinus && Cur().kind == Tok::kInt && Next().kind != Tok::kDot &&
          Next().kind != Tok::kLBracket) {
        ExprPtr e = Make(ExprKind::kInt, p);
        e->int_value = Cur().int_is_min ? std::numeric_limits<int64_t>::min() : -Cur().int_value;
        Bump();
        --depth_;
        return e;
      }
      ExprPtr operand = ParseUnary();
      --depth_;
      if (operand == nullptr) return nullptr;
      ExprPtr e = Make(ExprKind::kUnary, p);
      e->op = k;
      e->args.push_back(std::move(operand));
      return e;
    }
    return ParsePostfix();
  }

  bool ParseArgs(std::vector<ExprPtr>* out, Tok close, std::string_view what) {
    // Cur() is just after the opening token.
    if (Cur().kind == close) {
      Bump();
      return true;
    }
    while (true) {
      ExprPtr a = ParseExpr();
      if (a == nullptr) return false;
      out->push_back(std::move(a));
      if (Cur().kind == Tok::kComma) {
        Bump();
        if (close == Tok::kRBracket && Cur().kind == close) {  // trailing comma in a list
          Bump();
          return true;
        }
        continue;
      }
      if (Cur().kind == close) {
        Bump();
        return true;
      }
      Fail(Cur().pos, absl::StrCat("expected ',' or ", TokName(close), " in ", AV(what), ", found ",
                                   Describe(Cur())));
      return false;
    }
  }

  ExprPtr ParsePostfix() {
    ExprPtr e = ParsePrimary();
    if (e == nullptr) return nullptr;
    DepthGuard guard(&depth_);
    while (true) {
      if (Cur().kind == Tok::kDot) {
        Pos p = Cur().pos;
        Bump();
        if (Cur().kind != Tok::kIdent) {
          return Fail(Cur().pos, absl::StrCat("expected a field or method name after '.', found ",
                                              Describe(Cur())));
        }
        std::string name = Cur().text;
        Pos name_pos = Cur().pos;
        Bump();
        if (++depth_ > kMaxDepth) return Fail(p, "expression nested too deeply");
        if (Cur().kind == Tok::kLParen) {
          Bump();
          ExprPtr m = Make(ExprKind::kMethod, name_pos);
          m->name = std::move(name);
          m->args.push_back(std::move(e));
          if (!ParseArgs(&m->args, Tok::kRParen, "method arguments")) return nullptr;
          e = std::move(m);
        } else {
          ExprPtr s = Make(ExprKind::kSelect, name_pos);
          s->name = std::move(name);
          s->args.push_back(std::move(e));
          e = std::move(s);
        }
      } else if (Cur().kind == Tok::kLBracket) {
        Pos p = Cur().pos;
        Bump();
        if (++depth_ > kMaxDepth) return Fail(p, "expression nested too deeply");
        ExprPtr index = ParseExpr();
        if (index == nullptr) return nullptr;
        if (!Expect(Tok::kRBracket, "after index")) return nullptr;
        ExprPtr x = Make(ExprKind::kIndex, p);
        x->args.push_back(std::move(e));
        x->args.push_back(std::move(index));
        e = std::move(x);
      } else if (Cur().kind == Tok::kLParen) {
        return Fail(Cur().pos, "only named functions can be called");
      } else {
        return e;
      }
    }
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    Pos p = t.pos;
    switch (t.kind) {
      case Tok::kInt: {
        if (t.int_is_min) return Fail(p, "integer literal out of range");
        ExprPtr e = Make(ExprKind::kInt, p);
        e->int_value = t.int_value;
        Bump();
        return e;
      }
      case Tok::kDouble: {
        ExprPtr e = Make(ExprKind::kDouble, p);
        e->double_value = t.double_value;
        Bump();
        return e;
      }
      case Tok::kString: {
        ExprPtr e = Make(ExprKind::kString, p);
        e->name = t.text;
        Bump();
        return e;
      }
      case Tok::kTrue:
      case Tok::kFalse: {
        ExprPtr e = Make(ExprKind::kBool, p);
        e->bool_value = t.kind == Tok::kTrue;
        Bump();
        return e;
      }
      case Tok::kNull: {
        Bump();
        return Make(ExprKind::kNull, p);
      }
      case Tok::kIdent: {
        std::string name = t.text;
        Bump();
        if (Cur().kind == Tok::kLParen) {
          Bump();
          ExprPtr e = Make(ExprKind::kCall, p);
          e->name = std::move(name);
          if (!ParseArgs(&e->args, Tok::kRParen, "function arguments")) return nullptr;
          return e;
        }
        ExprPtr e = Make(ExprKind::kIdent, p);
        e->name = std::move(name);
        return e;
      }
      case Tok::kLParen: {
        Bump();
        ExprPtr e = ParseExpr();
        if (e == nullptr) return nullptr;
        if (Cur().kind != Tok::kRParen) {
          return Fail(Cur().pos, absl::StrFormat("expected ')' to close '(' at %d:%d, found %s",
                                                 p.line, p.column, Describe(Cur())));
        }
        Bump();
        e->parenthesized = true;
        return e;
      }
      case Tok::kLBracket: {
        Bump();
        ExprPtr e = Make(ExprKind::kList, p);
        if (!ParseArgs(&e->args, Tok::kRBracket, "list literal")) return nullptr;
        return e;
      }
      case Tok::kLBrace:
        return Fail(p, "map literals are not supported");
      case Tok::kEnd:
        return Fail(p, "unexpected end of expression");
      default:
        return Fail(p, absl::StrCat("unexpected ", Describe(t)));
    }
  }

  std::vector<Token> toks_;
  std::vector<LexError>* errors_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

std::unique_ptr<Expr> Parse(std::string_view source, std::vector<LexError>* errors) {
  size_t before = errors->size();
  if (source.size() > kMaxSourceBytes) {
    errors->push_back(
        {Pos{}, absl::StrCat("expression is longer than ", kMaxSourceBytes, " bytes")});
    return nullptr;
  }
  std::vector<Token> toks = Lex(source, errors);
  bool lex_failed = errors->size() > before;
  if (toks.size() == 1 && !lex_failed) {
    errors->push_back({toks[0].pos, "empty expression"});
    return nullptr;
  }
  size_t lex_errors = errors->size();
  ExprPtr e = Parser(std::move(toks), errors).Run();
  if (lex_failed) {
    // Syntax errors after a lexical error are mostly its echo; report the cause only.
    errors->resize(lex_errors);
    return nullptr;
  }
  return e;
}

std::string DebugString(const Expr& e) {
  switch (e.kind) {
    case ExprKind::kNull:
      return "null";
    case ExprKind::kBool:
      return e.bool_value ? "true" : "false";
    case ExprKind::kInt:
      return absl::StrCat(e.int_value);
    case ExprKind::kDouble:
      return absl::StrFormat("%g", e.double_value);
    case ExprKind::kString:
      return absl::StrCat("\"", e.name, "\"");
    case ExprKind::kIdent:
      return e.name;
    case ExprKind::kSelect:
      return absl::StrCat(DebugString(*e.args[0]), ".", e.name);
    case ExprKind::kIndex:
      return absl::StrCat(DebugString(*e.args[0]), "[", DebugString(*e.args[1]), "]");
    case ExprKind::kCall:
    case ExprKind::kMethod: {
      std::string out;
      size_t first = 0;
      if (e.kind == ExprKind::kMethod) {
        out = absl::StrCat(DebugString(*e.args[0]), ".");
        first = 1;
      }
      absl::StrAppend(&out, e.name, "(");
      for (size_t i = first; i < e.args.size(); ++i) {
        if (i > first) out += ", ";
        out += DebugString(*e.args[i]);
      }
      return out + ")";
    }
    case ExprKind::kUnary:
      return absl::StrCat(e.op == Tok::kNot ? "!" : "-", DebugString(*e.args[0]));
    case ExprKind::kBinary: {
      std::string_view op = TokName(e.op);
      if (op.size() > 2 && op.front() == '\'') op = op.substr(1, op.size() - 2);
      return absl::StrCat("(", DebugString(*e.args[0]), " ", AV(op), " ", DebugString(*e.args[1]),
                          ")");
    }
    case ExprKind::kTernary:
      return absl::StrCat("(", DebugString(*e.args[0]), " ? ", DebugString(*e.args[1]), " : ",
                          DebugString(*e.args[2]), ")");
    case ExprKind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < e.args.size(); ++i) {
        if (i > 0) out += ", ";
        out += DebugString(*e.args[i]);
      }
      return out + "]";
    }
  }
  return "?";
}

}  // namespace quell::policy::internal
