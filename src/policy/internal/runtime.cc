#include "policy/internal/runtime.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/strings.h"
#include "policy/value.h"

namespace quell::policy {

std::string_view EvalErrorName(EvalError error) {
  switch (error) {
    case EvalError::kNone:
      return "none";
    case EvalError::kMissing:
      return "missing";
    case EvalError::kTypeMismatch:
      return "type_mismatch";
    case EvalError::kDivisionByZero:
      return "division_by_zero";
    case EvalError::kOverflow:
      return "overflow";
    case EvalError::kInvalidArgument:
      return "invalid_argument";
  }
  return "unknown";
}

std::string Value::DebugString() const {
  switch (kind_) {
    case ValueKind::kNull:
      return "null";
    case ValueKind::kBool:
      return u_.b ? "true" : "false";
    case ValueKind::kInt:
      return absl::StrCat(u_.i);
    case ValueKind::kDouble: {
      if (u_.d == std::floor(u_.d) && std::fabs(u_.d) < 1e15) {
        return absl::StrFormat("%.1f", u_.d);
      }
      std::string out = absl::StrFormat("%.17g", u_.d);
      // Keep doubles distinguishable from ints: 3.0 prints as "3.0", not "3".
      if (out.find_first_of(".eni") == std::string::npos) out += ".0";
      // Prefer the shortest spelling that round-trips (0.1, not 0.10000000000000001).
      for (int precision = 1; precision < 17; ++precision) {
        std::string shorter = absl::StrFormat("%.*g", precision, u_.d);
        if (std::strtod(shorter.c_str(), nullptr) == u_.d) {
          if (shorter.find_first_of(".eni") == std::string::npos) shorter += ".0";
          return shorter;
        }
      }
      return out;
    }
    case ValueKind::kString:
      return absl::StrCat("\"", AV(string_value()), "\"");
    case ValueKind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < size_; ++i) {
        if (i > 0) out += ", ";
        absl::StrAppend(&out, "\"", AV(u_.list[i]), "\"");
      }
      return out + "]";
    }
    case ValueKind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < size_; ++i) {
        if (i > 0) out += ", ";
        out += u_.array[i].DebugString();
      }
      return out + "]";
    }
    case ValueKind::kMap: {
      std::string out = "{";
      for (size_t i = 0; i < u_.map->size; ++i) {
        if (i > 0) out += ", ";
        absl::StrAppend(&out, "\"", AV(u_.map->entries[i].key),
                        "\": ", u_.map->entries[i].value.DebugString());
      }
      return out + "}";
    }
    case ValueKind::kError:
      return absl::StrCat("error(", AV(EvalErrorName(error_)), ")");
  }
  return "?";
}

namespace internal {

Value Equal(const Value& a, const Value& b) {
  if (a.is_error()) return a;
  if (b.is_error()) return b;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == ValueKind::kInt && b.kind() == ValueKind::kInt) {
      return Value::Bool(a.int_value() == b.int_value());
    }
    return Value::Bool(a.AsDouble() == b.AsDouble());
  }
  if (a.kind() != b.kind()) return Value::Bool(false);
  switch (a.kind()) {
    case ValueKind::kNull:
      return Value::Bool(true);
    case ValueKind::kBool:
      return Value::Bool(a.bool_value() == b.bool_value());
    case ValueKind::kString:
      return Value::Bool(a.string_value() == b.string_value());
    case ValueKind::kList: {
      if (a.list_size() != b.list_size()) return Value::Bool(false);
      for (size_t i = 0; i < a.list_size(); ++i) {
        if (a.list_data()[i] != b.list_data()[i]) return Value::Bool(false);
      }
      return Value::Bool(true);
    }
    case ValueKind::kArray: {
      // Item by item, as ==: an item that cannot be compared (a map) is an error, unless
      // the arrays differ elsewhere.
      if (a.array_size() != b.array_size()) return Value::Bool(false);
      Value err = Value::Bool(true);
      for (size_t i = 0; i < a.array_size(); ++i) {
        Value eq = Equal(a.array_data()[i], b.array_data()[i]);
        if (eq.is_error()) {
          err = eq;
        } else if (!eq.bool_value()) {
          return eq;
        }
      }
      return err;
    }
    default:
      return Value::Error(EvalError::kTypeMismatch);  // maps are not comparable
  }
}

Value Order(Tok op, const Value& a, const Value& b) {
  if (a.is_error()) return a;
  if (b.is_error()) return b;
  int cmp;
  if (a.kind() == ValueKind::kInt && b.kind() == ValueKind::kInt) {
    cmp = a.int_value() < b.int_value() ? -1 : (a.int_value() > b.int_value() ? 1 : 0);
  } else if (a.is_number() && b.is_number()) {
    double x = a.AsDouble();
    double y = b.AsDouble();
    if (std::isnan(x) || std::isnan(y)) return Value::Bool(false);
    cmp = x < y ? -1 : (x > y ? 1 : 0);
  } else if (a.kind() == ValueKind::kString && b.kind() == ValueKind::kString) {
    int c = a.string_value().compare(b.string_value());
    cmp = c < 0 ? -1 : (c > 0 ? 1 : 0);
  } else {
    return Value::Error(EvalError::kTypeMismatch);
  }
  switch (op) {
    case Tok::kLt:
      return Value::Bool(cmp < 0);
    case Tok::kLe:
      return Value::Bool(cmp <= 0);
    case Tok::kGt:
      return Value::Bool(cmp > 0);
    default:
      return Value::Bool(cmp >= 0);
  }
}

Value Arith(Tok op, const Value& a, const Value& b) {
  if (a.is_error()) return a;
  if (b.is_error()) return b;
  if (!a.is_number() || !b.is_number()) return Value::Error(EvalError::kTypeMismatch);
  if (a.kind() == ValueKind::kInt && b.kind() == ValueKind::kInt) {
    int64_t x = a.int_value();
    int64_t y = b.int_value();
    int64_t r;
    switch (op) {
      case Tok::kPlus:
        if (__builtin_add_overflow(x, y, &r)) return Value::Error(EvalError::kOverflow);
        return Value::Int(r);
      case Tok::kMinus:
        if (__builtin_sub_overflow(x, y, &r)) return Value::Error(EvalError::kOverflow);
        return Value::Int(r);
      case Tok::kStar:
        if (__builtin_mul_overflow(x, y, &r)) return Value::Error(EvalError::kOverflow);
        return Value::Int(r);
      case Tok::kSlash:
      case Tok::kPercent:
        if (y == 0) return Value::Error(EvalError::kDivisionByZero);
        if (x == std::numeric_limits<int64_t>::min() && y == -1) {
          return Value::Error(EvalError::kOverflow);
        }
        return Value::Int(op == Tok::kSlash ? x / y : x % y);
      default:
        return Value::Error(EvalError::kTypeMismatch);
    }
  }
  double x = a.AsDouble();
  double y = b.AsDouble();
  switch (op) {
    case Tok::kPlus:
      return Value::Double(x + y);
    case Tok::kMinus:
      return Value::Double(x - y);
    case Tok::kStar:
      return Value::Double(x * y);
    case Tok::kSlash:
      if (y == 0) return Value::Error(EvalError::kDivisionByZero);
      return Value::Double(x / y);
    default:
      return Value::Error(EvalError::kTypeMismatch);  // % needs ints
  }
}

int64_t CodePoints(std::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace internal
}  // namespace quell::policy
