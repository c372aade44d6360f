// The policy expression language: a small, safe subset of CEL used by `when:` conditions.
//
//   auto program = policy::Compile(R"(detection.type == "bot" && detection.score >= 0.9)",
//                                  policy::Schema::Detection(), declarations, {.line = 12,
//                                  .column = 11});
//   policy::Result r = (*program)->Eval(policy::Input::ForDetection(d), environment);
//
// Language (see SPEC.md "Policies"): literals (int, double, string with escapes and r"raw"
// strings, true/false, null), field access a.b.c, index a["k"] / list[0], == != < <= > >=,
// && || !, + - * / %, unary -, `in` (list literals, list fields, map keys), ?:, parentheses,
// methods x.startsWith(y) / endsWith / contains / matches (RE2, pattern must be a literal) /
// size(), and the functions has(a.b), size(x), matches(x, re), in_cidr(ip, "10.0.0.0/8"),
// count(counter, key, window), distinct(counter, key, window), in_list(name, entity),
// active(entity, action), prior(entity, action, window). Counter, list and action names,
// windows, regexes and CIDRs must be string literals and are validated at compile time.
// String concatenation is not supported (it would allocate).
//
// Static types: bool, int, double, string, null, list<T>, map, dyn. Values inside
// detection.evidence / event.attrs are `dyn` and are checked at run time: a JSON array of
// strings is a list<string>, any other array a list of dyn items (ValueKind::kArray), which
// `in`, index and size() read item by item (`3 in detection.evidence.hours` as `==`). int and
// double mix in arithmetic and comparisons (promoted to double), and a ?: with an int branch and a
// double one is a double (an int result is promoted).
//
// Runtime error semantics (CEL-like). Some operations produce the *error* value instead of
// a result:
//   - reading an absent field (e.g. a detection without observed_at), an absent map key
//     (detection.evidence.nope) or a list index out of range        -> EvalError::kMissing
//   - a dyn value of the wrong type for an operation (attrs.ms_played < 5 when
//     ms_played is a string; ordering values of different types)   -> kTypeMismatch
//   - x / 0 and x % 0, for int and double                          -> kDivisionByZero
//   - int64 overflow in + - * / % and unary -                      -> kOverflow
//   - in_cidr() whose first argument is not an IP address          -> kInvalidArgument
// Errors propagate through arithmetic, comparisons (so `detection.evidence.nope == 1` is
// an error, which makes a `when` false), `!`, `?:` conditions, `in`, and function/method
// arguments. `==`/`!=` between two *present* values of different runtime types are
// false/true (not errors); maps cannot be compared (kTypeMismatch). `&&` and `||` are
// commutative as in CEL: false && error == false, error && false == false,
// true || error == true, error || true == true; otherwise an error operand makes the
// result an error. has(x) never errors: it is false when any
// step of x is absent. A `when` whose value is the error value does not match: Eval()
// returns Outcome::kError (with the EvalError) so callers can count it separately from
// kFalse. Operands of && / || may be evaluated in any order (cheap ones first), so when
// several operands are errors, which EvalError is reported is unspecified.
//
// Cost: the language has no loops or recursion; evaluation visits each AST node at most
// once, and the few linear-time operations (`in` over a list, map lookups, string
// methods, RE2 matching) are linear in their input. Source size and nesting depth are
// capped at compile time (kMaxSourceBytes, kMaxDepth).
//
// Thread-safety: Compile() is thread-safe (no shared state). A Program is immutable after
// construction and may be shared between threads (std::shared_ptr<const Program>);
// Eval() is const and allocation-free, with the one exception that RE2 may grow its
// internal DFA cache (RE2 is itself thread-safe). Environment implementations must be
// safe to call from the threads that call Eval() with them.
#ifndef QUELL_POLICY_EXPR_H_
#define QUELL_POLICY_EXPR_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "policy/value.h"

namespace quell::policy {

inline constexpr size_t kMaxSourceBytes = 64 * 1024;
// Maximum depth of the expression tree (parentheses, operator chains, a.b.c chains).
inline constexpr int kMaxDepth = 200;

// A 1-based position. For Compile()'s `base`: where the expression text starts in the
// policy file. Positions in line 1 of the expression are shifted by base.column - 1;
// positions on later lines keep their own column plus `continuation_indent` (the
// indentation the YAML loader stripped from block scalars) and are shifted by
// base.line - 1 lines.
struct Position {
  int line = 1;
  int column = 1;
  int continuation_indent = 0;
};

// One compile error: "3:14: unknown field detection.scor — did you mean detection.score?"
struct Diagnostic {
  int line = 0;
  int column = 0;
  std::string message;

  std::string ToString() const;  // "line:column: message"
  bool operator==(const Diagnostic&) const = default;
};

// Which variables an expression may use. Immutable value type.
//   Detection(): detection.{id, source, type, score (double), observed_at, entity,
//                related (list<string>), evidence (map of dyn)}, entity, entity.{type, id}
//   Event():     event.{type, at, entity, attrs (map of dyn)}, entity, entity.{type, id}
// `entity` is the full "type:id" string of the subject entity.
class Schema {
 public:
  enum class Kind : uint8_t { kDetection, kEvent };
  static Schema Detection() { return Schema(Kind::kDetection); }
  static Schema Event() { return Schema(Kind::kEvent); }
  Kind kind() const { return kind_; }

 private:
  explicit Schema(Kind kind) : kind_(kind) {}
  Kind kind_;
};

// Names the policy set declares; used to validate count()/distinct()/in_list()/active()/
// prior() arguments at compile time. Windows are duration strings ("1m", "1h", "24h").
struct CounterDecl {
  std::string name;
  std::vector<std::string> windows;
  bool distinct = false;  // a `distinct:` counter: use distinct(), not count()
};
struct Declarations {
  std::vector<CounterDecl> counters;
  std::vector<std::string> lists;
  std::vector<std::string> actions;
};

// Input records. All members are borrowed views; the caller keeps the storage alive for
// the duration of Eval(). A string field whose data() is nullptr (a default-constructed
// std::string_view) is *absent*: reading it yields the error value and has() is false.
// An empty but present string must have a non-null data() (e.g. std::string_view("")).
struct DetectionInput {
  std::string_view id;
  std::string_view source;
  std::string_view type;
  std::optional<double> score;
  std::string_view observed_at;
  std::string_view entity;
  absl::Span<const std::string_view> related;
  MapView evidence;
};
struct EventInput {
  std::string_view type;
  std::string_view at;
  std::string_view entity;
  MapView attrs;
};
struct Input {
  const DetectionInput* detection = nullptr;  // for Schema::Detection() programs
  const EventInput* event = nullptr;          // for Schema::Event() programs
  std::string_view entity;                    // "type:id"
  std::string_view entity_type;               // before the first ':'
  std::string_view entity_id;                 // after the first ':'

  // Borrow `d` (or `e`) and split its entity at the first ':'. If the entity has no ':',
  // entity_type and entity_id are left absent.
  static Input ForDetection(const DetectionInput& d);
  static Input ForEvent(const EventInput& e);
};

// The seam to state outside the expression (counters, lists, the ledger). Implemented by
// the engine; tests use fakes. String arguments are only valid during the call. Counter,
// list and action names are always declared ones and windows are always among the
// counter's declared windows (validated at compile time).
class Environment {
 public:
  virtual ~Environment() = default;
  // Events of `counter` for `key` within `window`.
  virtual int64_t Count(std::string_view counter, std::string_view key, absl::Duration window) = 0;
  // Distinct values counted by `counter` for `key` within `window`.
  virtual int64_t Distinct(std::string_view counter, std::string_view key,
                           absl::Duration window) = 0;
  // Whether `entity` is in the named list.
  virtual bool InList(std::string_view list, std::string_view entity) = 0;
  // Whether `entity` has an active mitigation with `action`.
  virtual bool Active(std::string_view entity, std::string_view action) = 0;
  // Mitigations with `action` that `entity` received within `window` that count as prior
  // offences (core::CountsAsPrior: not undone by a person, not expired unapproved).
  virtual int64_t Prior(std::string_view entity, std::string_view action,
                        absl::Duration window) = 0;
};

// An Environment that answers every function from `base` (borrowed; it must outlive this
// one): the base of a decorator, which overrides what it changes. As thread-safe as `base`.
class ForwardingEnvironment : public Environment {
 public:
  explicit ForwardingEnvironment(Environment& base) : base_(base) {}
  int64_t Count(std::string_view counter, std::string_view key, absl::Duration window) override {
    return base_.Count(counter, key, window);
  }
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration window) override {
    return base_.Distinct(counter, key, window);
  }
  bool InList(std::string_view list, std::string_view entity) override {
    return base_.InList(list, entity);
  }
  bool Active(std::string_view entity, std::string_view action) override {
    return base_.Active(entity, action);
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration window) override {
    return base_.Prior(entity, action, window);
  }

 private:
  Environment& base_;
};

// An Environment over an empty store: counts are 0, lists are empty, nothing is active.
// Stateless; thread-safe.
class EmptyEnvironment final : public Environment {
 public:
  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view, std::string_view) override { return false; }
  bool Active(std::string_view, std::string_view) override { return false; }
  int64_t Prior(std::string_view, std::string_view, absl::Duration) override { return 0; }
};

enum class Outcome : uint8_t { kFalse, kTrue, kError };

// Result of evaluating a `when` condition. matched() is true only for kTrue; an error
// never matches.
struct Result {
  Outcome outcome = Outcome::kFalse;
  EvalError error = EvalError::kNone;  // set when outcome == kError
  bool matched() const { return outcome == Outcome::kTrue; }
};

namespace internal {
class Node;
}

// A compiled expression. Immutable and thread-safe; share it as
// std::shared_ptr<const Program>.
class Program {
 public:
  ~Program();
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  // Evaluates a boolean program (as returned by Compile()). If the program's type is dyn
  // and the value is not a bool, the outcome is kError / kTypeMismatch. No allocation.
  Result Eval(const Input& input, Environment& env) const;

  // Evaluates any program (CompileExpression()) to its value. Strings, lists and maps in
  // the result point into `input` or into this Program.
  Value Evaluate(const Input& input, Environment& env) const;

  // The static type, e.g. "bool", "int", "list<string>", "dyn".
  const std::string& type_name() const { return type_name_; }

  // An index hint for the engine. If set, the program can only match a detection whose
  // detection.type is in this sorted list (it has a top-level && conjunct such as
  // `detection.type == "x"` or `detection.type in ["x", "y"]`); for any other detection
  // Eval() is kFalse, or kError if the type is absent. Unset: no such constraint.
  const std::optional<std::vector<std::string>>& detection_types() const {
    return detection_types_;
  }

 private:
  friend class ProgramBuilder;
  Program() = default;
  std::unique_ptr<const internal::Node> root_;
  std::string type_name_;
  std::optional<std::vector<std::string>> detection_types_;
};

// The structured compile result: either a program or at least one diagnostic.
struct Compilation {
  std::shared_ptr<const Program> program;  // null iff !errors.empty()
  std::vector<Diagnostic> errors;          // every error found, in source order
};

// Compiles a `when` condition, which must have type bool (or dyn, checked at run time).
// Returns all lexical, syntax and type errors it can find; after a syntax error only the
// errors found so far are reported (the parser does not guess how to recover).
Compilation CompileWithDiagnostics(std::string_view source, const Schema& schema,
                                   const Declarations& declarations, Position base = {});

// Like CompileWithDiagnostics(), but any type is accepted (used by tests and tools).
Compilation CompileExpressionWithDiagnostics(std::string_view source, const Schema& schema,
                                             const Declarations& declarations, Position base = {});

// Convenience wrapper of CompileWithDiagnostics(): on failure returns InvalidArgument whose
// message lists every diagnostic, one "line:column: message" per line.
absl::StatusOr<std::shared_ptr<const Program>> Compile(std::string_view source,
                                                       const Schema& schema,
                                                       const Declarations& declarations,
                                                       Position base = {});

}  // namespace quell::policy

#endif  // QUELL_POLICY_EXPR_H_
