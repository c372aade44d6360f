// Reading events from JSON (SPEC POST /v1/events) and what they feed: the one parser
// behind POST /v1/events and the events of POST /v1/policies/test, so that a test
// accepts, refuses and counts an event exactly as a submission does.
//
// Thread-safety: pure functions; a ParsedEvent is a plain value.
#ifndef QUELL_API_EVENT_CODEC_H_
#define QUELL_API_EVENT_CODEC_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "counters/counter_store.h"
#include "engine/engine.h"
#include "policy/policy_set.h"
#include "rapidjson/document.h"

namespace quell::api {

// How far ahead of the server clock an event's `at` may be.
inline constexpr absl::Duration kEventFutureSkew = absl::Seconds(5);

// A validated event with what its counters read.
struct ParsedEvent {
  engine::Event event;  // attrs_json: `attrs` with entities in their normal form
  std::vector<std::pair<std::string, std::string>> attrs;  // scalar attrs as counter-key text

  //! The text of scalar attribute `name`, or null.
  const std::string* Attr(std::string_view name) const;
};

// Why an event is refused.
struct EventError {
  std::string field;    // relative to the event ("at", "attrs.ip"); "" for the event itself
  std::string message;  // "older than the lateness bound (5m)"
  std::string reason;   // "invalid" | "too_late" | "too_early"
};

//! Reads one event object: `type`, `entity`, `at` (default `now`; within [now -
//! `lateness`, now + kEventFutureSkew]), `id`, `attrs`; unknown fields and a field given
//! twice (attrs included) are refused. Returns the first error, else fills *out.
std::optional<EventError> ReadEvent(const rapidjson::Value& value, absl::Time now,
                                    absl::Duration lateness, ParsedEvent* out);

//! The event types `set` counts or evaluates: its counters' and its event policies'. An
//! event of another type would change nothing, and is refused ("unknown_type").
absl::flat_hash_set<std::string> EventTypesOf(const policy::PolicySet& set);

//! The value of `field` in `e` (its entity, or a scalar attribute's text), or null.
const std::string* EventField(const counters::FieldRef& field, const ParsedEvent& e);

//! Appends `e`'s observations of the counters of `set` declared on its type, at
//! min(at, now): an event ahead of the clock (within the skew) counts now, for the rules
//! that follow it at once. The observations borrow `e`'s strings. Returns how many of
//! those counters it lacks the key or distinct value of (not counted: "missing_key").
int AppendObservations(const counters::CounterSet& set, const ParsedEvent& e, absl::Time now,
                       std::vector<counters::Observation>* out);

}  // namespace quell::api

#endif  // QUELL_API_EVENT_CODEC_H_
