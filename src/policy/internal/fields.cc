#include "policy/internal/fields.h"

#include "absl/strings/str_cat.h"
#include "core/time.h"

namespace quell::policy::internal {
namespace {

constexpr FieldInfo kDetectionFields[] = {
    {"detection", "id", Field::kDetectionId, Type::kString},
    {"detection", "source", Field::kDetectionSource, Type::kString},
    {"detection", "type", Field::kDetectionType, Type::kString},
    {"detection", "score", Field::kDetectionScore, Type::kDouble},
    {"detection", "observed_at", Field::kDetectionObservedAt, Type::kString},
    {"detection", "entity", Field::kDetectionEntity, Type::kString},
    {"detection", "related", Field::kDetectionRelated, Type::kListString},
    {"detection", "evidence", Field::kDetectionEvidence, Type::kMap},
};
constexpr FieldInfo kEventFields[] = {
    {"event", "type", Field::kEventType, Type::kString},
    {"event", "at", Field::kEventAt, Type::kString},
    {"event", "entity", Field::kEventEntity, Type::kString},
    {"event", "attrs", Field::kEventAttrs, Type::kMap},
};
constexpr FieldInfo kEntityFields[] = {
    {"entity", "type", Field::kEntityType, Type::kString},
    {"entity", "id", Field::kEntityId, Type::kString},
};

template <typename F>
void ForEachField(const Schema& schema, std::string_view ns, F f) {
  if (ns == "entity") {
    for (const auto& x : kEntityFields) f(x);
  } else if (ns == "detection" && schema.kind() == Schema::Kind::kDetection) {
    for (const auto& x : kDetectionFields) f(x);
  } else if (ns == "event" && schema.kind() == Schema::Kind::kEvent) {
    for (const auto& x : kEventFields) f(x);
  }
}

}  // namespace

std::optional<FieldInfo> FindField(const Schema& schema, std::string_view ns,
                                   std::string_view name) {
  std::optional<FieldInfo> out;
  ForEachField(schema, ns, [&](const FieldInfo& f) {
    if (f.name == name) out = f;
  });
  return out;
}

std::vector<std::string> FieldNames(const Schema& schema, std::string_view ns) {
  std::vector<std::string> out;
  ForEachField(schema, ns, [&](const FieldInfo& f) { out.emplace_back(f.name); });
  return out;
}

std::optional<absl::Duration> ParseWindow(std::string_view text) {
  absl::StatusOr<absl::Duration> d = core::ParseDuration(text);
  if (!d.ok()) return std::nullopt;
  return *d;
}

const CounterDecl* FindCounter(const Declarations& decls, std::string_view name) {
  for (const CounterDecl& c : decls.counters) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

int FindWindow(const CounterDecl& counter, absl::Duration window) {
  for (size_t i = 0; i < counter.windows.size(); ++i) {
    std::optional<absl::Duration> d = ParseWindow(counter.windows[i]);
    if (d.has_value() && *d == window) return static_cast<int>(i);
  }
  return -1;
}

std::unique_ptr<RE2> CompileRegex(const std::string& pattern, std::string* error) {
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_unique<RE2>(pattern, options);
  if (!re->ok()) {
    *error = absl::StrCat("invalid regular expression: ", re->error());
    return nullptr;
  }
  return re;
}

}  // namespace quell::policy::internal
