#include "policy/internal/checker.h"

#include <algorithm>
#include <iterator>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/strings.h"
#include "policy/internal/fields.h"
#include "policy/internal/ip.h"

namespace quell::policy::internal {

const char* TypeName(Type t) {
  switch (t) {
    case Type::kUnknown:
      return "unknown";
    case Type::kBool:
      return "bool";
    case Type::kInt:
      return "int";
    case Type::kDouble:
      return "double";
    case Type::kString:
      return "string";
    case Type::kNull:
      return "null";
    case Type::kListString:
      return "list<string>";
    case Type::kListInt:
      return "list<int>";
    case Type::kListDouble:
      return "list<double>";
    case Type::kListBool:
      return "list<bool>";
    case Type::kListDyn:
      return "list<dyn>";
    case Type::kMap:
      return "map";
    case Type::kDyn:
      return "dyn";
    case Type::kObject:
      return "object";
  }
  return "?";
}

int EditDistance(std::string_view a, std::string_view b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      int up = row[j];
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + cost});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string Closest(std::string_view name, const std::vector<std::string>& candidates) {
  int limit = name.size() <= 3 ? 1 : (name.size() <= 6 ? 2 : 3);
  std::string best;
  int best_d = limit + 1;
  for (const std::string& c : candidates) {
    int d = EditDistance(name, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

namespace {

bool IsNumeric(Type t) { return t == Type::kInt || t == Type::kDouble; }
bool IsList(Type t) {
  return t == Type::kListString || t == Type::kListInt || t == Type::kListDouble ||
         t == Type::kListBool || t == Type::kListDyn;
}
Type ElementType(Type list) {
  switch (list) {
    case Type::kListString:
      return Type::kString;
    case Type::kListInt:
      return Type::kInt;
    case Type::kListDouble:
      return Type::kDouble;
    case Type::kListBool:
      return Type::kBool;
    default:
      return Type::kDyn;
  }
}
Type ListOf(Type elem) {
  switch (elem) {
    case Type::kString:
      return Type::kListString;
    case Type::kInt:
      return Type::kListInt;
    case Type::kDouble:
      return Type::kListDouble;
    case Type::kBool:
      return Type::kListBool;
    default:
      return Type::kListDyn;
  }
}
// Whether a value of type `t` may be used where `want` is expected (dyn fits anything).
bool Fits(Type t, Type want) { return t == want || t == Type::kDyn || t == Type::kUnknown; }

const std::vector<std::string>& FunctionNames() {
  static const auto* names = new std::vector<std::string>{
      "has", "size", "matches", "in_cidr", "count", "distinct", "in_list", "active", "prior"};
  return *names;
}
const std::vector<std::string>& MethodNames() {
  static const auto* names =
      new std::vector<std::string>{"startsWith", "endsWith", "contains", "matches", "size"};
  return *names;
}

class Checker {
 public:
  Checker(const Schema& schema, const Declarations& decls, std::vector<LexError>* errors)
      : schema_(schema), decls_(decls), errors_(errors) {}

  Type Check(Expr& e, bool list_literal_ok = false) {
    Type t = CheckImpl(e, list_literal_ok);
    e.type = t;
    return t;
  }

 private:
  void Error(Pos p, std::string msg) { errors_->push_back({p, std::move(msg)}); }

  const char* OwnNamespace() const {
    return schema_.kind() == Schema::Kind::kDetection ? "detection" : "event";
  }

  // Validates a namespace identifier; returns false (after reporting) if unavailable.
  bool NamespaceAvailable(const Expr& ident) {
    if (ident.name == "entity" || ident.name == OwnNamespace()) return true;
    if (ident.name == "detection") {
      Error(ident.pos, "detection is not available in an event policy (use event.* or entity)");
    } else {
      Error(ident.pos, "event is not available in a detection policy (use detection.* or entity)");
    }
    return false;
  }

  bool IsNamespaceIdent(const Expr& e) const {
    return e.kind == ExprKind::kIdent &&
           (e.name == "detection" || e.name == "event" || e.name == "entity");
  }

  Type CheckImpl(Expr& e, bool list_literal_ok) {
    switch (e.kind) {
      case ExprKind::kNull:
        return Type::kNull;
      case ExprKind::kBool:
        return Type::kBool;
      case ExprKind::kInt:
        return Type::kInt;
      case ExprKind::kDouble:
        return Type::kDouble;
      case ExprKind::kString:
        return Type::kString;
      case ExprKind::kIdent:
        return CheckIdent(e);
      case ExprKind::kSelect:
        return CheckSelect(e);
      case ExprKind::kIndex:
        return CheckIndex(e);
      case ExprKind::kUnary:
        return CheckUnary(e);
      case ExprKind::kBinary:
        return CheckBinary(e);
      case ExprKind::kTernary:
        return CheckTernary(e);
      case ExprKind::kList:
        return CheckList(e, list_literal_ok);
      case ExprKind::kCall:
        return CheckCall(e);
      case ExprKind::kMethod:
        return CheckMethod(e);
    }
    return Type::kUnknown;
  }

  Type CheckIdent(Expr& e) {
    if (e.name == "entity") {
      e.field = static_cast<int>(Field::kEntity);
      return Type::kString;
    }
    if (e.name == "detection" || e.name == "event") {
      if (!NamespaceAvailable(e)) return Type::kUnknown;
      Error(e.pos, absl::StrCat(e.name, " is not a value; select one of its fields, e.g. ", e.name,
                                ".type"));
      return Type::kUnknown;
    }
    // "score" instead of "detection.score"?
    if (FindField(schema_, OwnNamespace(), e.name).has_value()) {
      Error(e.pos, absl::StrCat("unknown variable ", e.name, " — did you mean ", OwnNamespace(),
                                ".", e.name, "?"));
      return Type::kUnknown;
    }
    std::vector<std::string> vars = {std::string(OwnNamespace()), "entity"};
    std::string best = Closest(e.name, vars);
    if (!best.empty()) {
      Error(e.pos, absl::StrCat("unknown variable ", e.name, " — did you mean ", best, "?"));
    } else {
      Error(e.pos, absl::StrCat("unknown variable ", e.name, " (available: ", OwnNamespace(),
                                ".*, entity)"));
    }
    return Type::kUnknown;
  }

  Type CheckSelect(Expr& e) {
    Expr& operand = *e.args[0];
    if (IsNamespaceIdent(operand)) {
      if (!NamespaceAvailable(operand)) return Type::kUnknown;
      operand.type = Type::kObject;
      std::optional<FieldInfo> f = FindField(schema_, operand.name, e.name);
      if (f.has_value()) {
        e.field = static_cast<int>(f->field);
        return f->type;
      }
      std::vector<std::string> names = FieldNames(schema_, operand.name);
      std::string best = Closest(e.name, names);
      if (!best.empty()) {
        Error(e.pos, absl::StrCat("unknown field ", operand.name, ".", e.name, " — did you mean ",
                                  operand.name, ".", best, "?"));
      } else {
        Error(e.pos, absl::StrCat("unknown field ", operand.name, ".", e.name, " (fields of ",
                                  operand.name, ": ", absl::StrJoin(names, ", "), ")"));
      }
      return Type::kUnknown;
    }
    Type t = Check(operand);
    if (t == Type::kUnknown) return t;
    if (t == Type::kMap || t == Type::kDyn) return Type::kDyn;
    Error(e.pos, absl::StrCat("cannot select field ", e.name, " of a ", TypeName(t)));
    return Type::kUnknown;
  }

  Type CheckIndex(Expr& e) {
    Type t = Check(*e.args[0]);
    Type k = Check(*e.args[1]);
    if (t == Type::kUnknown || k == Type::kUnknown) return Type::kUnknown;
    if (t == Type::kMap) {
      if (Fits(k, Type::kString)) return Type::kDyn;
      Error(e.args[1]->pos, absl::StrCat("map keys are strings, got ", TypeName(k)));
      return Type::kUnknown;
    }
    if (t == Type::kListString) {
      if (Fits(k, Type::kInt)) return Type::kString;
      Error(e.args[1]->pos, absl::StrCat("list index must be an int, got ", TypeName(k)));
      return Type::kUnknown;
    }
    if (t == Type::kDyn) {
      if (Fits(k, Type::kString) || k == Type::kInt) return Type::kDyn;
      Error(e.args[1]->pos, absl::StrCat("index must be a string or an int, got ", TypeName(k)));
      return Type::kUnknown;
    }
    Error(e.pos, absl::StrCat("cannot index a ", TypeName(t)));
    return Type::kUnknown;
  }

  Type CheckUnary(Expr& e) {
    Type t = Check(*e.args[0]);
    if (t == Type::kUnknown) return t;
    if (e.op == Tok::kNot) {
      if (Fits(t, Type::kBool)) return Type::kBool;
      Error(e.pos, absl::StrCat("operator ! expects a bool, got ", TypeName(t)));
      return Type::kUnknown;
    }
    if (IsNumeric(t) || t == Type::kDyn) return t;
    Error(e.pos, absl::StrCat("unary - expects a number, got ", TypeName(t)));
    return Type::kUnknown;
  }

  // Reports why `a op b` cannot be compared with == / !=; returns false then.
  bool CheckEquality(const Expr& e, Type a, Type b) {
    if (a == Type::kDyn || b == Type::kDyn) return true;
    if (a == b && a != Type::kMap && !IsList(a)) return true;
    if (a == Type::kListString && b == Type::kListString) return true;
    if (IsNumeric(a) && IsNumeric(b)) return true;
    if (a == Type::kNull || b == Type::kNull) {
      Type other = a == Type::kNull ? b : a;
      Error(e.pos, absl::StrCat("cannot compare ", TypeName(other),
                                " with null — use has() to test whether a field is present"));
      return false;
    }
    if (a == b) {
      Error(e.pos, absl::StrCat("values of type ", TypeName(a), " cannot be compared"));
      return false;
    }
    Error(e.pos, absl::StrCat("cannot compare ", TypeName(a), " with ", TypeName(b)));
    return false;
  }

  Type CheckBinary(Expr& e) {
    Tok op = e.op;
    if (op == Tok::kIn) return CheckIn(e);
    Type a = Check(*e.args[0]);
    Type b = Check(*e.args[1]);
    std::string_view op_name = TokName(op);
    if (op_name.size() > 2 && op_name.front() == '\'') {
      op_name = op_name.substr(1, op_name.size() - 2);
    }
    switch (op) {
      case Tok::kAnd:
      case Tok::kOr: {
        bool ok = true;
        for (int i = 0; i < 2; ++i) {
          Type t = i == 0 ? a : b;
          if (!Fits(t, Type::kBool)) {
            Error(e.args[static_cast<size_t>(i)]->pos,
                  absl::StrCat("operator ", AV(op_name), " expects bool operands, got ",
                               TypeName(t)));
            ok = false;
          }
        }
        return ok && a != Type::kUnknown && b != Type::kUnknown ? Type::kBool : Type::kUnknown;
      }
      case Tok::kEq:
      case Tok::kNe:
        if (a == Type::kUnknown || b == Type::kUnknown) return Type::kUnknown;
        return CheckEquality(e, a, b) ? Type::kBool : Type::kUnknown;
      case Tok::kLt:
      case Tok::kLe:
      case Tok::kGt:
      case Tok::kGe: {
        if (a == Type::kUnknown || b == Type::kUnknown) return Type::kUnknown;
        auto orderable = [](Type t) {
          return IsNumeric(t) || t == Type::kString || t == Type::kDyn;
        };
        if (!orderable(a) || !orderable(b)) {
          Type bad = orderable(a) ? b : a;
          Error(e.pos,
                absl::StrCat("operator ", AV(op_name), " is not defined for ", TypeName(bad)));
          return Type::kUnknown;
        }
        if (a != Type::kDyn && b != Type::kDyn && !(IsNumeric(a) && IsNumeric(b)) && a != b) {
          Error(e.pos, absl::StrCat("cannot compare ", TypeName(a), " with ", TypeName(b)));
          return Type::kUnknown;
        }
        return Type::kBool;
      }
      default: {  // + - * / %
        if (a == Type::kUnknown || b == Type::kUnknown) return Type::kUnknown;
        bool ok = true;
        for (int i = 0; i < 2; ++i) {
          Type t = i == 0 ? a : b;
          if (!IsNumeric(t) && t != Type::kDyn) {
            std::string msg =
                absl::StrCat("operator ", AV(op_name), " expects numbers, got ", TypeName(t));
            if (op == Tok::kPlus && t == Type::kString) {
              absl::StrAppend(&msg, " (string concatenation is not supported)");
            }
            Error(e.args[static_cast<size_t>(i)]->pos, std::move(msg));
            ok = false;
          }
        }
        if (!ok) return Type::kUnknown;
        if (op == Tok::kPercent && (a == Type::kDouble || b == Type::kDouble)) {
          Error(e.pos, "operator % expects int operands, got double");
          return Type::kUnknown;
        }
        if (a == Type::kInt && b == Type::kInt) return Type::kInt;
        if (a == Type::kDouble || b == Type::kDouble) return Type::kDouble;
        return Type::kDyn;
      }
    }
  }

  Type CheckIn(Expr& e) {
    Type a = Check(*e.args[0]);
    Type b = Check(*e.args[1], /*list_literal_ok=*/true);
    if (a == Type::kUnknown || b == Type::kUnknown) return Type::kUnknown;
    if (IsList(a) || a == Type::kMap) {
      Error(e.args[0]->pos,
            absl::StrCat("left side of in must be a single value, got ", TypeName(a)));
      return Type::kUnknown;
    }
    if (IsList(b)) {
      Type elem = ElementType(b);
      bool ok =
          elem == Type::kDyn || a == Type::kDyn || a == elem || (IsNumeric(a) && IsNumeric(elem));
      if (!ok) {
        Error(e.pos, absl::StrCat("cannot look for ", TypeName(a), " in ", TypeName(b)));
        return Type::kUnknown;
      }
      return Type::kBool;
    }
    if (b == Type::kMap) {
      if (Fits(a, Type::kString)) return Type::kBool;
      Error(e.pos, absl::StrCat("map keys are strings, got ", TypeName(a)));
      return Type::kUnknown;
    }
    if (b == Type::kDyn) return Type::kBool;
    Error(e.args[1]->pos,
          absl::StrCat("right side of in must be a list or a map, got ", TypeName(b)));
    return Type::kUnknown;
  }

  Type CheckTernary(Expr& e) {
    Type c = Check(*e.args[0]);
    Type a = Check(*e.args[1]);
    Type b = Check(*e.args[2]);
    if (c != Type::kUnknown && !Fits(c, Type::kBool)) {
      Error(e.args[0]->pos, absl::StrCat("condition of ?: must be a bool, got ", TypeName(c)));
      return Type::kUnknown;
    }
    if (c == Type::kUnknown || a == Type::kUnknown || b == Type::kUnknown) return Type::kUnknown;
    if (a == b) return a;
    if (IsNumeric(a) && IsNumeric(b)) return Type::kDouble;
    if (a == Type::kDyn || b == Type::kDyn || a == Type::kNull || b == Type::kNull) {
      return Type::kDyn;
    }
    Error(e.pos,
          absl::StrCat("branches of ?: have different types ", TypeName(a), " and ", TypeName(b)));
    return Type::kUnknown;
  }

  Type CheckList(Expr& e, bool list_literal_ok) {
    if (!list_literal_ok) {
      Error(e.pos, "list literals are only supported on the right of in and in size()");
    }
    Type elem = Type::kUnknown;
    bool first = true;
    bool bad = false;
    for (auto& a : e.args) {
      Type t = Check(*a);
      if (t == Type::kUnknown) {
        bad = true;
        continue;
      }
      if (IsList(t) || t == Type::kMap || t == Type::kNull) {
        Error(a->pos, absl::StrCat("list elements must be scalar values, got ", TypeName(t)));
        bad = true;
        continue;
      }
      if (first) {
        elem = t;
        first = false;
      } else if (t != elem) {
        if (IsNumeric(t) && IsNumeric(elem)) {
          elem = Type::kDouble;
        } else if (t == Type::kDyn || elem == Type::kDyn) {
          elem = Type::kDyn;
        } else {
          Error(a->pos, absl::StrCat("list elements must have one type: ", TypeName(elem), " and ",
                                     TypeName(t)));
          bad = true;
        }
      }
    }
    if (bad || !list_literal_ok) return Type::kUnknown;
    return first ? Type::kListDyn : ListOf(elem);
  }

  // Returns the literal, or reports "`what` must be a string literal".
  const std::string* StringLiteral(const Expr& e, std::string_view what) {
    if (e.kind == ExprKind::kString) return &e.name;
    Error(e.pos, absl::StrCat(AV(what), " must be a string literal"));
    return nullptr;
  }

  // Checks that argument `e` has a type fitting `want`; `what` names it in the message.
  void Expect(Expr& e, Type want, std::string_view what) {
    Type t = Check(e);
    if (t == Type::kUnknown || Fits(t, want)) return;
    Error(e.pos, absl::StrCat(AV(what), " must be a ", TypeName(want), ", got ", TypeName(t)));
  }

  bool Arity(const Expr& e, size_t got, size_t want, std::string_view usage) {
    if (got == want) return true;
    Error(e.pos, absl::StrCat(e.name, "() takes ", want, " argument", want == 1 ? "" : "s",
                              ", got ", got, " — usage: ", AV(usage)));
    for (auto& a : e.args) Check(*a, true);  // still report errors inside the arguments
    return false;
  }

  void CheckWindow(const Expr& e, const CounterDecl* counter) {
    const std::string* w = StringLiteral(e, "the window");
    if (w == nullptr) return;
    std::optional<absl::Duration> d = ParseWindow(*w);
    if (!d.has_value()) {
      Error(e.pos, absl::StrCat("invalid window \"", *w,
                                "\" — expected a duration such as \"1h\" or \"30d\""));
      return;
    }
    if (counter == nullptr) return;
    if (FindWindow(*counter, *d) < 0) {
      Error(e.pos, absl::StrCat("counter ", counter->name, " has no window ", *w,
                                " (declared: ", absl::StrJoin(counter->windows, ", "), ")"));
    }
  }

  void CheckName(const Expr& e, const std::string* name, const std::vector<std::string>& known,
                 std::string_view kind) {
    if (name == nullptr) return;
    if (std::find(known.begin(), known.end(), *name) != known.end()) return;
    std::string best = Closest(*name, known);
    if (!best.empty()) {
      Error(e.pos, absl::StrCat("unknown ", AV(kind), " ", *name, " — did you mean ", best, "?"));
    } else if (known.empty()) {
      Error(e.pos, absl::StrCat("unknown ", AV(kind), " ", *name, " (none are declared)"));
    } else {
      Error(e.pos, absl::StrCat("unknown ", AV(kind), " ", *name,
                                " (declared: ", absl::StrJoin(known, ", "), ")"));
    }
  }

  Type CheckHas(Expr& e) {
    if (!Arity(e, e.args.size(), 1, "has(detection.evidence.key)")) return Type::kUnknown;
    Expr& a = *e.args[0];
    if (a.kind != ExprKind::kSelect && a.kind != ExprKind::kIndex) {
      Error(a.pos, "has() takes a field selection such as has(detection.evidence.asn)");
      if (a.kind != ExprKind::kIdent) Check(a);
      return Type::kUnknown;
    }
    Type t = Check(a);
    if (t == Type::kUnknown) return t;
    if (a.kind == ExprKind::kIndex && a.args[0]->type == Type::kListString) {
      Error(a.pos, "has() takes a field selection, not a list index");
      return Type::kUnknown;
    }
    return Type::kBool;
  }

  Type CheckCall(Expr& e) {
    const std::string& n = e.name;
    size_t argc = e.args.size();
    if (n == "has") return CheckHas(e);
    if (n == "size") {
      if (!Arity(e, argc, 1, "size(x)")) return Type::kUnknown;
      return CheckSizeArg(*e.args[0]);
    }
    if (n == "matches") {
      if (!Arity(e, argc, 2, "matches(text, \"regex\")")) return Type::kUnknown;
      Expect(*e.args[0], Type::kString, "the text of matches()");
      CheckRegex(*e.args[1]);
      return Type::kBool;
    }
    if (n == "in_cidr") {
      if (!Arity(e, argc, 2, "in_cidr(ip, \"10.0.0.0/8\")")) return Type::kUnknown;
      Expect(*e.args[0], Type::kString, "the address of in_cidr()");
      if (const std::string* net = StringLiteral(*e.args[1], "the network of in_cidr()")) {
        std::string err;
        if (!ParseNetwork(*net, &err).has_value()) Error(e.args[1]->pos, err);
      }
      return Type::kBool;
    }
    if (n == "count" || n == "distinct") {
      if (!Arity(e, argc, 3, absl::StrCat(n, "(\"counter\", key, \"1h\")"))) {
        return Type::kUnknown;
      }
      const CounterDecl* counter = nullptr;
      if (const std::string* name = StringLiteral(*e.args[0], "the counter name")) {
        counter = FindCounter(decls_, *name);
        if (counter == nullptr) {
          std::vector<std::string> names;
          for (const auto& c : decls_.counters) names.push_back(c.name);
          CheckName(*e.args[0], name, names, "counter");
        } else if (counter->distinct && n == "count") {
          Error(e.args[0]->pos,
                absl::StrCat("counter ", *name, " counts distinct values — use distinct()"));
        } else if (!counter->distinct && n == "distinct") {
          Error(e.args[0]->pos,
                absl::StrCat("counter ", *name, " has no distinct: field — use count()"));
        }
      }
      // A key is counted by its text: a number or a boolean too (POST /v1/events keys
      // attrs so), never a container.
      if (const Type k = Check(*e.args[1]); k != Type::kUnknown && !Fits(k, Type::kString) &&
                                            k != Type::kInt && k != Type::kDouble &&
                                            k != Type::kBool) {
        Error(e.args[1]->pos, absl::StrCat("the counter key must be a string, a number or a "
                                           "boolean, got ",
                                           TypeName(k)));
      }
      CheckWindow(*e.args[2], counter);
      return Type::kInt;
    }
    if (n == "in_list") {
      if (!Arity(e, argc, 2, "in_list(\"list\", entity)")) return Type::kUnknown;
      CheckName(*e.args[0], StringLiteral(*e.args[0], "the list name"), decls_.lists, "list");
      Expect(*e.args[1], Type::kString, "the entity");
      return Type::kBool;
    }
    if (n == "active") {
      if (!Arity(e, argc, 2, "active(entity, \"action\")")) return Type::kUnknown;
      Expect(*e.args[0], Type::kString, "the entity");
      CheckName(*e.args[1], StringLiteral(*e.args[1], "the action"), decls_.actions, "action");
      return Type::kBool;
    }
    if (n == "prior") {
      if (!Arity(e, argc, 3, "prior(entity, \"action\", \"30d\")")) return Type::kUnknown;
      Expect(*e.args[0], Type::kString, "the entity");
      CheckName(*e.args[1], StringLiteral(*e.args[1], "the action"), decls_.actions, "action");
      CheckWindow(*e.args[2], nullptr);
      return Type::kInt;
    }
    for (auto& a : e.args) Check(*a, true);
    const auto& methods = MethodNames();
    if (std::find(methods.begin(), methods.end(), n) != methods.end()) {
      Error(e.pos, absl::StrCat(n, " is a method — write x.", n, "(...)"));
      return Type::kUnknown;
    }
    std::vector<std::string> all = FunctionNames();
    all.insert(all.end(), methods.begin(), methods.end());
    std::string best = Closest(n, all);
    Error(e.pos, best.empty()
                     ? absl::StrCat("unknown function ", n)
                     : absl::StrCat("unknown function ", n, " — did you mean ", best, "?"));
    return Type::kUnknown;
  }

  Type CheckSizeArg(Expr& a) {
    Type t = Check(a, /*list_literal_ok=*/true);
    if (t == Type::kUnknown) return t;
    if (t == Type::kString || IsList(t) || t == Type::kMap || t == Type::kDyn) return Type::kInt;
    Error(a.pos, absl::StrCat("size() expects a string, list or map, got ", TypeName(t)));
    return Type::kUnknown;
  }

  void CheckRegex(const Expr& a) {
    const std::string* re = StringLiteral(a, "the pattern of matches()");
    if (re == nullptr) return;
    std::string err;
    if (CompileRegex(*re, &err) == nullptr) Error(a.pos, err);
  }

  Type CheckMethod(Expr& e) {
    const std::string& n = e.name;
    size_t argc = e.args.size() - 1;
    Expr& target = *e.args[0];
    if (n == "size") {
      if (argc != 0) {
        Error(e.pos, absl::StrCat("size() takes no arguments here, got ", argc));
        return Type::kUnknown;
      }
      return CheckSizeArg(target);
    }
    if (n == "startsWith" || n == "endsWith" || n == "contains" || n == "matches") {
      Expect(target, Type::kString, absl::StrCat("the target of ", n, "()"));
      if (argc != 1) {
        Error(e.pos, absl::StrCat(n, "() takes 1 argument, got ", argc));
        return Type::kUnknown;
      }
      if (n == "matches") {
        CheckRegex(*e.args[1]);
      } else {
        Expect(*e.args[1], Type::kString, absl::StrCat("the argument of ", n, "()"));
      }
      return Type::kBool;
    }
    Check(target, true);
    for (size_t i = 1; i < e.args.size(); ++i) Check(*e.args[i], true);
    const auto& funcs = FunctionNames();
    if (std::find(funcs.begin(), funcs.end(), n) != funcs.end()) {
      Error(e.pos, absl::StrCat(n, " is a function, not a method — write ", n, "(...)"));
      return Type::kUnknown;
    }
    std::string best = Closest(n, MethodNames());
    Error(e.pos, best.empty() ? absl::StrCat("unknown method ", n,
                                             " (methods: ", absl::StrJoin(MethodNames(), ", "), ")")
                              : absl::StrCat("unknown method ", n, " — did you mean ", best, "?"));
    return Type::kUnknown;
  }

  const Schema& schema_;
  const Declarations& decls_;
  std::vector<LexError>* errors_;
};

}  // namespace

namespace {

bool IsDetectionType(const Expr& e) {
  return e.kind == ExprKind::kSelect && e.field == static_cast<int>(Field::kDetectionType);
}

// The guard contributed by one conjunct, if it is a detection.type test.
std::optional<std::vector<std::string>> ConjunctGuard(const Expr& e) {
  if (e.kind != ExprKind::kBinary) return std::nullopt;
  const Expr& l = *e.args[0];
  const Expr& r = *e.args[1];
  if (e.op == Tok::kEq) {
    if (IsDetectionType(l) && r.kind == ExprKind::kString) return std::vector{r.name};
    if (IsDetectionType(r) && l.kind == ExprKind::kString) return std::vector{l.name};
  }
  if (e.op == Tok::kIn && IsDetectionType(l) && r.kind == ExprKind::kList) {
    std::vector<std::string> out;
    for (const auto& a : r.args) {
      if (a->kind != ExprKind::kString) return std::nullopt;
      out.push_back(a->name);
    }
    return out;
  }
  return std::nullopt;
}

void Conjuncts(const Expr& e, std::vector<const Expr*>* out) {
  if (e.kind == ExprKind::kBinary && e.op == Tok::kAnd) {
    Conjuncts(*e.args[0], out);
    Conjuncts(*e.args[1], out);
  } else {
    out->push_back(&e);
  }
}

}  // namespace

std::optional<std::vector<std::string>> DetectionTypeGuard(const Expr& root) {
  std::vector<const Expr*> conjuncts;
  Conjuncts(root, &conjuncts);
  std::optional<std::vector<std::string>> guard;
  for (const Expr* c : conjuncts) {
    std::optional<std::vector<std::string>> g = ConjunctGuard(*c);
    if (!g.has_value()) continue;
    std::sort(g->begin(), g->end());
    g->erase(std::unique(g->begin(), g->end()), g->end());
    if (!guard.has_value()) {
      guard = std::move(g);
    } else {
      std::vector<std::string> both;
      std::set_intersection(guard->begin(), guard->end(), g->begin(), g->end(),
                            std::back_inserter(both));
      guard = std::move(both);
    }
  }
  return guard;
}

Type Check(Expr& root, const Schema& schema, const Declarations& decls,
           std::vector<LexError>* errors) {
  return Checker(schema, decls, errors).Check(root);
}

}  // namespace quell::policy::internal
