// The variables of each Schema, and lookups shared by the checker and the builder.
//
// Thread-safety: pure functions and immutable tables.
#ifndef QUELL_POLICY_INTERNAL_FIELDS_H_
#define QUELL_POLICY_INTERNAL_FIELDS_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "policy/expr.h"
#include "policy/internal/ast.h"
#include "policy/internal/ip.h"
#include "re2/re2.h"

namespace quell::policy::internal {

enum class Field : uint8_t {
  kDetectionId,
  kDetectionSource,
  kDetectionType,
  kDetectionScore,
  kDetectionObservedAt,
  kDetectionEntity,
  kDetectionRelated,
  kDetectionEvidence,
  kEventType,
  kEventAt,
  kEventEntity,
  kEventAttrs,
  kEntity,
  kEntityType,
  kEntityId,
};

struct FieldInfo {
  std::string_view ns;    // "detection", "event" or "entity"
  std::string_view name;  // "score"
  Field field;
  Type type;
};

// The field `ns.name` if the schema has it.
std::optional<FieldInfo> FindField(const Schema& schema, std::string_view ns,
                                   std::string_view name);
// Field names of a namespace, in declaration order.
std::vector<std::string> FieldNames(const Schema& schema, std::string_view ns);

// A window or prior() duration: core::ParseDuration ("90s", "1h30m", "30d"), > 0.
std::optional<absl::Duration> ParseWindow(std::string_view text);

const CounterDecl* FindCounter(const Declarations& decls, std::string_view name);
// Index of `window` among the counter's declared windows (compared as durations), or -1.
int FindWindow(const CounterDecl& counter, absl::Duration window);

// Compiles a matches() pattern; on failure returns null and sets *error.
std::unique_ptr<RE2> CompileRegex(const std::string& pattern, std::string* error);

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_FIELDS_H_
