#include "engine/internal/json_map.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "rapidjson/reader.h"

namespace quell::engine::internal {

using policy::MapEntry;
using policy::MapView;
using policy::Value;

// SAX handler building the arena. Capacity of every output vector is reserved up front
// from the text length, so the pointers handed out (MapView -> entries, List -> strings,
// Array -> items, Map values -> maps_) never move while parsing.
class JsonMapHandler {
 public:
  explicit JsonMapHandler(JsonMapArena& a) : a_(a) {}

  bool Null() { return Add(Value::Null()); }
  bool Bool(bool b) { return Add(Value::Bool(b)); }
  bool Int(int i) { return Add(Value::Int(i)); }
  bool Uint(unsigned u) { return Add(Value::Int(u)); }
  bool Int64(int64_t i) { return Add(Value::Int(i)); }
  bool Uint64(uint64_t u) {
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Add(Value::Double(static_cast<double>(u)));
    }
    return Add(Value::Int(static_cast<int64_t>(u)));
  }
  bool Double(double d) { return Add(Value::Double(d)); }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return false; }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    return Add(Value::String(std::string_view(s, n)));
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    a_.key_ = std::string_view(s, n);
    return true;
  }
  bool StartObject() { return Open(false); }
  bool EndObject(rapidjson::SizeType) {
    JsonMapArena::Frame f = a_.frames_.back();
    a_.frames_.pop_back();
    size_t first = a_.entries_.size();
    for (size_t i = f.start; i < a_.pending_.size(); ++i) a_.entries_.push_back(a_.pending_[i]);
    a_.pending_.resize(f.start);
    a_.maps_.push_back(MapView{a_.entries_.data() + first, a_.entries_.size() - first});
    const MapView* m = &a_.maps_.back();
    if (a_.frames_.empty()) {
      a_.root_ = *m;
      a_.done_ = true;
      return true;
    }
    a_.key_ = f.key;
    return Add(Value::Map(m));
  }
  bool StartArray() {
    if (a_.frames_.empty()) return false;  // the top level must be an object
    return Open(true);
  }
  bool EndArray(rapidjson::SizeType) {
    JsonMapArena::Frame f = a_.frames_.back();
    a_.frames_.pop_back();
    const Value* items = a_.pending_items_.data() + f.start;
    const size_t n = a_.pending_items_.size() - f.start;
    const bool strings = std::all_of(
        items, items + n, [](const Value& v) { return v.kind() == policy::ValueKind::kString; });
    Value v;
    if (strings) {  // list<string>, what most arrays are
      const size_t first = a_.strings_.size();
      for (size_t i = 0; i < n; ++i) a_.strings_.push_back(items[i].string_value());
      v = Value::List(a_.strings_.data() + first, n);
    } else {
      const size_t first = a_.items_.size();
      a_.items_.insert(a_.items_.end(), items, items + n);
      v = Value::Array(a_.items_.data() + first, n);
    }
    a_.pending_items_.resize(f.start);
    a_.key_ = f.key;
    return Add(v);
  }

 private:
  bool Open(bool array) {
    if (static_cast<int>(a_.frames_.size()) >= JsonMapArena::kMaxDepth) return false;
    JsonMapArena::Frame f;
    f.array = array;
    f.start = array ? a_.pending_items_.size() : a_.pending_.size();
    f.key = a_.key_;
    a_.frames_.push_back(f);
    return true;
  }
  bool Add(Value v) {
    if (a_.frames_.empty()) return false;  // a scalar at the top level
    if (a_.frames_.back().array) {
      a_.pending_items_.push_back(v);
    } else {
      a_.pending_.push_back(MapEntry{a_.key_, v});
    }
    return true;
  }

  JsonMapArena& a_;
};

bool JsonMapArena::Parse(std::string_view json, policy::MapView* out) {
  *out = MapView{};
  buffer_.assign(json.data(), json.size());
  // Upper bounds from the text: every entry, map or list item needs at least two bytes.
  size_t bound = json.size() / 2 + 2;
  for (auto* v : {&pending_, &entries_}) {
    v->clear();
    if (v->capacity() < bound) v->reserve(bound);
  }
  strings_.clear();
  if (strings_.capacity() < bound) strings_.reserve(bound);
  for (auto* v : {&pending_items_, &items_}) {
    v->clear();
    if (v->capacity() < bound) v->reserve(bound);
  }
  maps_.clear();
  if (maps_.capacity() < bound) maps_.reserve(bound);
  frames_.clear();
  key_ = {};
  root_ = {};
  done_ = false;

  JsonMapHandler handler(*this);
  rapidjson::Reader reader;
  rapidjson::InsituStringStream stream(buffer_.data());  // buffer_ is NUL-terminated
  constexpr unsigned kFlags = rapidjson::kParseInsituFlag | rapidjson::kParseIterativeFlag |
                              rapidjson::kParseFullPrecisionFlag;  // as the API reads numbers
  rapidjson::ParseResult r = reader.Parse<kFlags>(stream, handler);
  if (r.IsError() || !done_) return false;
  *out = root_;
  return true;
}

}  // namespace quell::engine::internal
