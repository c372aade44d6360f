// The number of fields of an aggregate, counted at compile time: a codec that writes a
// struct field by field states how many it writes, and a field added to the struct stops
// the build until the codec learns it (sizeof does not, for a field that fits in padding).
//
// Thread-safety: compile-time only.
#ifndef QUELL_CORE_AGGREGATE_H_
#define QUELL_CORE_AGGREGATE_H_

#include <cstddef>
#include <type_traits>

namespace quell::core {
namespace aggregate_internal {

// Converts to any field's type, in unevaluated contexts only.
struct AnyField {
  template <typename T>
  operator T() const;  // NOLINT(google-explicit-constructor): the point of it
};

template <typename T, typename... Fields>
constexpr size_t CountFields() {
  if constexpr (requires { T{Fields{}..., AnyField{}}; }) {
    return CountFields<T, Fields..., AnyField>();
  } else {
    return sizeof...(Fields);
  }
}

}  // namespace aggregate_internal

//! How many fields aggregate `T` has. For aggregates whose fields are not themselves
//! aggregates (brace elision would count their fields too) nor references.
template <typename T>
constexpr size_t FieldCount() {
  static_assert(std::is_aggregate_v<T>, "FieldCount needs an aggregate");
  return aggregate_internal::CountFields<T>();
}

}  // namespace quell::core

#endif  // QUELL_CORE_AGGREGATE_H_
