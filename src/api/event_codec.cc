#include "api/event_codec.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "api/json_reader.h"
#include "core/entity_json.h"
#include "core/number_text.h"
#include "core/time.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::api {
namespace {

bool ValidEventType(std::string_view t) {
  if (t.empty() || t.size() > 64 || t == "detection") return false;
  for (char c : t) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

std::string_view Str(const rapidjson::Value& v) { return {v.GetString(), v.GetStringLength()}; }

}  // namespace

const std::string* ParsedEvent::Attr(std::string_view name) const {
  for (const auto& [k, v] : attrs) {
    if (k == name) return &v;
  }
  return nullptr;
}

std::optional<EventError> ReadEvent(const rapidjson::Value& v, absl::Time now,
                                    absl::Duration lateness, ParsedEvent* out) {
  auto fail = [](std::string field, std::string msg, std::string reason = "invalid") {
    return EventError{std::move(field), std::move(msg), std::move(reason)};
  };
  if (!v.IsObject()) return fail("", "must be an object");
  for (auto m = v.MemberBegin(); m != v.MemberEnd(); ++m) {
    std::string_view k = Str(m->name);
    if (k != "type" && k != "at" && k != "entity" && k != "attrs" && k != "id") {
      return fail(std::string(k), "unknown field");
    }
  }
  // A field given twice, here or within attrs: this reader took the first, a proxy or an
  // audit tool reading the same body may keep the last (another entity, another address).
  if (std::string twice = RepeatedKey(v); !twice.empty()) return fail(twice, "given twice");
  auto type = v.FindMember("type");
  if (type == v.MemberEnd() || !type->value.IsString() || !ValidEventType(Str(type->value))) {
    return fail("type", "required, 1-64 of [a-z0-9_.-], not \"detection\"");
  }
  out->event.type = std::string(Str(type->value));
  auto entity = v.FindMember("entity");
  if (entity == v.MemberEnd() || !entity->value.IsString())
    return fail("entity", "required, \"type:id\"");
  auto e = core::Entity::Parse(Str(entity->value));
  if (!e.ok()) return fail("entity", std::string(e.status().message()));
  out->event.entity = *std::move(e);
  auto at = v.FindMember("at");
  if (at == v.MemberEnd()) {
    out->event.at = now;
  } else {
    if (!at->value.IsString()) return fail("at", "must be an RFC 3339 time");
    auto t = core::ParseRfc3339(Str(at->value));
    if (!t.ok()) return fail("at", "must be an RFC 3339 time");
    out->event.at = *t;
  }
  auto id = v.FindMember("id");
  if (id != v.MemberEnd()) {
    if (!id->value.IsString() || id->value.GetStringLength() == 0 ||
        id->value.GetStringLength() > 128) {
      return fail("id", "must be 1-128 bytes");
    }
    out->event.id = std::string(Str(id->value));
  }
  auto attrs = v.FindMember("attrs");
  if (attrs != v.MemberEnd()) {
    if (!attrs->value.IsObject()) return fail("attrs", "must be an object");
    // An attribute naming an entity ("ip:2001:DB8::1") in its normal form, as entities
    // are everywhere else: one address spelt two ways is one counter key, and the rules
    // (event.attrs.*) see the same text.
    rapidjson::Document normal;
    normal.CopyFrom(attrs->value, normal.GetAllocator());
    core::NormalizeEntityMembers(normal, normal.GetAllocator());
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    normal.Accept(w);
    out->event.attrs_json.assign(buf.GetString(), buf.GetSize());
    for (auto m = normal.MemberBegin(); m != normal.MemberEnd(); ++m) {
      const rapidjson::Value& a = m->value;
      std::string text;
      if (a.IsString()) {
        text = std::string(Str(a));
      } else if (a.IsInt64()) {  // the text count()/distinct() read back (NumberKeyText)
        text = core::NumberKeyText(a.GetInt64());
      } else if (a.IsUint64()) {  // past int64: a double, as the policy engine reads it
        text = core::NumberKeyText(static_cast<double>(a.GetUint64()));
      } else if (a.IsDouble()) {
        text = core::NumberKeyText(a.GetDouble());
      } else if (a.IsBool()) {
        text = a.GetBool() ? "true" : "false";
      } else {
        continue;  // objects, arrays, null: not a counter key
      }
      out->attrs.emplace_back(std::string(Str(m->name)), std::move(text));
    }
  } else {
    out->event.attrs_json = "{}";
  }
  if (out->event.at < now - lateness) {
    return fail(
        "at", absl::StrCat("older than the lateness bound (", core::DurationString(lateness), ")"),
        "too_late");
  }
  if (out->event.at > now + kEventFutureSkew) {
    return fail(
        "at", absl::StrCat("more than ", core::DurationString(kEventFutureSkew), " in the future"),
        "too_early");
  }
  return std::nullopt;
}

absl::flat_hash_set<std::string> EventTypesOf(const policy::PolicySet& set) {
  absl::flat_hash_set<std::string> out;
  for (const auto& c : set.counters()) out.insert(c.on);
  for (const auto& p : set.policies()) {
    if (p.on != "detection") out.insert(p.on);
  }
  return out;
}

const std::string* EventField(const counters::FieldRef& f, const ParsedEvent& e) {
  switch (f.kind) {
    case counters::FieldRef::Kind::kEntity:
      return &e.event.entity.str();
    case counters::FieldRef::Kind::kAttr:
      return e.Attr(f.attr);
    case counters::FieldRef::Kind::kNone:
      break;
  }
  return nullptr;
}

int AppendObservations(const counters::CounterSet& set, const ParsedEvent& e, absl::Time now,
                       std::vector<counters::Observation>* out) {
  int missing = 0;
  for (int c : set.ForEvent(e.event.type)) {
    const bool distinct = set.spec(c).is_distinct();
    const std::string* key = EventField(set.key_field(c), e);
    const std::string* value = distinct ? EventField(set.distinct_field(c), e) : nullptr;
    if (key == nullptr || key->empty() || (distinct && (value == nullptr || value->empty()))) {
      ++missing;
      continue;
    }
    // An event up to the future skew ahead counts now: reads stop at now's bucket, and an
    // accepted event must count for the rules that follow it at once.
    out->push_back({c, *key, value ? std::string_view(*value) : std::string_view(),
                    std::min(e.event.at, now)});
  }
  return missing;
}

}  // namespace quell::api
