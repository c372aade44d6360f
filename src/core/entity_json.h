// Entities inside JSON objects: event attributes name entities ("ip:2001:DB8::1"), and
// everything that reads them (counter keys, rules, the policy test cases) must see one
// spelling of each.
//
// Thread-safety: stateless; safe from any thread (each call on its own document).
#ifndef QUELL_CORE_ENTITY_JSON_H_
#define QUELL_CORE_ENTITY_JSON_H_

#include <string>
#include <string_view>

#include "rapidjson/document.h"

namespace quell::core {

//! Rewrites each string member of `object` that parses as an entity in its normal form
//! (Entity::Parse); other members are left as they are. `object` must be an object.
void NormalizeEntityMembers(rapidjson::Value& object,
                            rapidjson::Document::AllocatorType& allocator);

//! The same on JSON text: `object_json` with its entity members in normal form, written
//! compactly; the text unchanged if it is not a JSON object.
std::string NormalizeEntityMembers(std::string_view object_json);

}  // namespace quell::core

#endif  // QUELL_CORE_ENTITY_JSON_H_
