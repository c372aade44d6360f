// Runtime values of the policy expression language.
//
// A Value is 16 bytes, trivially copyable and never owns memory: strings, lists, arrays and maps
// point at storage owned by the caller's Input or by the compiled Program. This is what
// lets Program::Eval run without heap allocation.
//
// Thread-safety: plain value types; safe to copy and read from any thread. Pointers inside
// are only valid as long as the storage they point at.
#ifndef QUELL_POLICY_VALUE_H_
#define QUELL_POLICY_VALUE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

namespace quell::policy {

struct MapView;

enum class ValueKind : uint8_t {
  kNull,
  kBool,
  kInt,
  kDouble,
  kString,
  kList,   // list<string>: a contiguous array of std::string_view
  kArray,  // list<dyn>: a contiguous array of Value (a JSON array in evidence/attrs with an
           // item that is not a string: numbers, booleans, null, objects, arrays)
  kMap,    // string -> Value, see MapView
  kError,
};

// Why an evaluation produced the "error" value. Errors propagate through arithmetic,
// comparison, function calls and the commutative && / || (see expr.h).
enum class EvalError : uint8_t {
  kNone,
  kMissing,          // absent field, absent map key, list index out of range
  kTypeMismatch,     // a dyn value (evidence/attrs) of the wrong type for the operation
  kDivisionByZero,   // x / 0, x % 0 (int and double)
  kOverflow,         // int64 overflow in + - * / % or unary -
  kInvalidArgument,  // e.g. in_cidr() on a string that is not an IP address
};

std::string_view EvalErrorName(EvalError error);

class Value {
 public:
  constexpr Value() : kind_(ValueKind::kNull), error_(EvalError::kNone), size_(0), u_{.i = 0} {}

  static constexpr Value Null() { return Value(); }
  static constexpr Value Bool(bool b) {
    Value v(ValueKind::kBool);
    v.u_.b = b;
    return v;
  }
  static constexpr Value Int(int64_t i) {
    Value v(ValueKind::kInt);
    v.u_.i = i;
    return v;
  }
  static constexpr Value Double(double d) {
    Value v(ValueKind::kDouble);
    v.u_.d = d;
    return v;
  }
  // Strings longer than 4 GiB are truncated (inputs are validated far below that).
  static Value String(std::string_view s) {
    Value v(ValueKind::kString);
    v.u_.s = s.data();
    v.size_ = Clamp(s.size());
    return v;
  }
  static Value List(const std::string_view* items, size_t n) {
    Value v(ValueKind::kList);
    v.u_.list = items;
    v.size_ = Clamp(n);
    return v;
  }
  static Value Array(const Value* items, size_t n) {
    Value v(ValueKind::kArray);
    v.u_.array = items;
    v.size_ = Clamp(n);
    return v;
  }
  static Value Map(const MapView* map) {
    Value v(ValueKind::kMap);
    v.u_.map = map;
    return v;
  }
  static constexpr Value Error(EvalError e) {
    Value v(ValueKind::kError);
    v.error_ = e;
    return v;
  }

  ValueKind kind() const { return kind_; }
  bool is_error() const { return kind_ == ValueKind::kError; }
  bool is_number() const { return kind_ == ValueKind::kInt || kind_ == ValueKind::kDouble; }

  // Accessors: only valid for the matching kind.
  bool bool_value() const { return u_.b; }
  int64_t int_value() const { return u_.i; }
  double double_value() const { return u_.d; }
  // int or double, as double.
  double AsDouble() const { return kind_ == ValueKind::kInt ? static_cast<double>(u_.i) : u_.d; }
  std::string_view string_value() const { return std::string_view(u_.s, size_); }
  const std::string_view* list_data() const { return u_.list; }
  size_t list_size() const { return size_; }
  const Value* array_data() const { return u_.array; }
  size_t array_size() const { return size_; }
  const MapView* map_value() const { return u_.map; }
  EvalError error() const { return error_; }

  // For tests and diagnostics: `true`, `42`, `0.5`, `"abc"`, `["a", "b"]`, `[1, true]`,
  // `{...}`, `error(division_by_zero)`.
  std::string DebugString() const;

 private:
  explicit constexpr Value(ValueKind k)
      : kind_(k), error_(EvalError::kNone), size_(0), u_{.i = 0} {}
  static constexpr uint32_t Clamp(size_t n) {
    return n > std::numeric_limits<uint32_t>::max() ? std::numeric_limits<uint32_t>::max()
                                                    : static_cast<uint32_t>(n);
  }

  ValueKind kind_;
  EvalError error_;
  uint32_t size_;
  union {
    bool b;
    int64_t i;
    double d;
    const char* s;
    const std::string_view* list;
    const Value* array;
    const MapView* map;
  } u_;
};

static_assert(sizeof(Value) == 16, "Value must stay register-sized");

// One key of a map-valued field (detection.evidence, event.attrs).
namespace internal {
// String equality tuned for the short keys and literals of policies: overlapping word loads
// instead of a memcmp call for up to 32 bytes.
inline bool ShortEqual(std::string_view a, std::string_view b) {
  size_t n = a.size();
  if (n != b.size()) return false;
  const char* x = a.data();
  const char* y = b.data();
  auto load64 = [](const char* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  };
  auto load32 = [](const char* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  };
  if (n >= 8) {
    if (n <= 16) return load64(x) == load64(y) && load64(x + n - 8) == load64(y + n - 8);
    if (n <= 32) {
      return load64(x) == load64(y) && load64(x + 8) == load64(y + 8) &&
             load64(x + n - 16) == load64(y + n - 16) && load64(x + n - 8) == load64(y + n - 8);
    }
    return std::memcmp(x, y, n) == 0;
  }
  if (n >= 4) return load32(x) == load32(y) && load32(x + n - 4) == load32(y + n - 4);
  for (size_t i = 0; i < n; ++i) {
    if (x[i] != y[i]) return false;
  }
  return true;
}
}  // namespace internal

struct MapEntry {
  std::string_view key;
  Value value;  // may itself be a Map (nested JSON objects), a List of strings or an Array
};

// A borrowed, read-only view of a map. Lookup is a linear scan: evidence and attrs
// maps are small (tens of keys). Duplicate keys: the first one wins.
struct MapView {
  const MapEntry* entries = nullptr;
  size_t size = 0;

  // Returns nullptr when the key is absent.
  const Value* Find(std::string_view key) const {
    for (size_t i = 0; i < size; ++i) {
      if (internal::ShortEqual(entries[i].key, key)) return &entries[i].value;
    }
    return nullptr;
  }
};

}  // namespace quell::policy

#endif  // QUELL_POLICY_VALUE_H_
