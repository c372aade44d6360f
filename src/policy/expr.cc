#include "policy/expr.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/strings.h"
#include "policy/internal/ast.h"
#include "policy/internal/checker.h"
#include "policy/internal/node.h"
#include "policy/internal/parser.h"

namespace quell::policy {

std::string Diagnostic::ToString() const { return absl::StrCat(line, ":", column, ": ", message); }

namespace {

void SplitEntity(std::string_view entity, Input* in) {
  in->entity = entity;
  if (entity.data() == nullptr) return;
  size_t colon = entity.find(':');
  if (colon == std::string_view::npos) {
    // Not "type:id": leave type/id absent rather than guessing.
    return;
  }
  in->entity_type = entity.substr(0, colon);
  in->entity_id = entity.substr(colon + 1);
}

}  // namespace

Input Input::ForDetection(const DetectionInput& d) {
  Input in;
  in.detection = &d;
  SplitEntity(d.entity, &in);
  return in;
}

Input Input::ForEvent(const EventInput& e) {
  Input in;
  in.event = &e;
  SplitEntity(e.entity, &in);
  return in;
}

Program::~Program() = default;

Value Program::Evaluate(const Input& input, Environment& env) const {
  return root_->Eval(internal::Frame{input, env});
}

Result Program::Eval(const Input& input, Environment& env) const {
  Value v = root_->Eval(internal::Frame{input, env});
  if (v.kind() == ValueKind::kBool) {
    return Result{v.bool_value() ? Outcome::kTrue : Outcome::kFalse, EvalError::kNone};
  }
  return Result{Outcome::kError, v.is_error() ? v.error() : EvalError::kTypeMismatch};
}

class ProgramBuilder {
 public:
  static std::shared_ptr<const Program> Make(
      std::unique_ptr<const internal::Node> root, std::string type_name,
      std::optional<std::vector<std::string>> detection_types) {
    std::shared_ptr<Program> p(new Program());
    p->root_ = std::move(root);
    p->type_name_ = std::move(type_name);
    p->detection_types_ = std::move(detection_types);
    return p;
  }
};

namespace {

Compilation CompileImpl(std::string_view source, const Schema& schema,
                        const Declarations& declarations, Position base, bool want_bool) {
  std::vector<internal::LexError> errors;
  std::unique_ptr<internal::Expr> ast = internal::Parse(source, &errors);
  internal::Type type = internal::Type::kUnknown;
  if (ast != nullptr) {
    type = internal::Check(*ast, schema, declarations, &errors);
    if (errors.empty() && want_bool && type != internal::Type::kBool &&
        type != internal::Type::kDyn) {
      // Report at the first character of the expression, not at its top operator.
      internal::Pos start;
      for (char c : source) {
        if (c == '\n') {
          ++start.line;
          start.column = 1;
        } else if (c == ' ' || c == '\t' || c == '\r') {
          ++start.column;
        } else {
          break;
        }
      }
      errors.push_back(
          {start, absl::StrCat("condition must be a bool, got ", internal::TypeName(type))});
    }
  }
  Compilation out;
  if (errors.empty()) {
    out.program = ProgramBuilder::Make(internal::Build(*ast, declarations),
                                       std::string(internal::TypeName(type)),
                                       internal::DetectionTypeGuard(*ast));
    return out;
  }
  std::stable_sort(errors.begin(), errors.end(), [](const auto& a, const auto& b) {
    return a.pos.line != b.pos.line ? a.pos.line < b.pos.line : a.pos.column < b.pos.column;
  });
  for (const auto& e : errors) {
    Diagnostic d;
    if (e.pos.line == 1) {
      d.line = base.line;
      d.column = base.column + e.pos.column - 1;
    } else {
      d.line = base.line + e.pos.line - 1;
      d.column = e.pos.column + base.continuation_indent;
    }
    d.message = e.message;
    // The same error reported twice at one place (e.g. through two paths) is noise.
    if (!out.errors.empty() && out.errors.back() == d) continue;
    out.errors.push_back(std::move(d));
  }
  return out;
}

}  // namespace

Compilation CompileWithDiagnostics(std::string_view source, const Schema& schema,
                                   const Declarations& declarations, Position base) {
  return CompileImpl(source, schema, declarations, base, /*want_bool=*/true);
}

Compilation CompileExpressionWithDiagnostics(std::string_view source, const Schema& schema,
                                             const Declarations& declarations, Position base) {
  return CompileImpl(source, schema, declarations, base, /*want_bool=*/false);
}

absl::StatusOr<std::shared_ptr<const Program>> Compile(std::string_view source,
                                                       const Schema& schema,
                                                       const Declarations& declarations,
                                                       Position base) {
  Compilation c = CompileWithDiagnostics(source, schema, declarations, base);
  if (c.program != nullptr) return std::move(c.program);
  std::vector<std::string> lines;
  for (const Diagnostic& d : c.errors) lines.push_back(d.ToString());
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

}  // namespace quell::policy
