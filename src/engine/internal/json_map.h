// Turns a JSON object (detection evidence, event attrs) into a policy::MapView without a
// heap allocation per call: the text is copied into a reusable buffer and parsed in place
// (RapidJSON SAX, iterative), and entries live in reusable arenas.
//
// Mapping: strings, integers (int64; larger unsigned -> double), doubles, booleans and
// null map to the matching Value; nested objects to nested maps; arrays whose items are
// all strings (and empty ones) to list<string>; any other array to a list<dyn> (Array) of
// its items, objects and arrays included. Nesting deeper than kMaxDepth, invalid JSON, or a
// top-level value that is not an object give an empty map and Parse() returns false. kMaxDepth is
// above what any input path accepts (core::kMaxJsonDepth, checked on every body and row):
// an evidence map nested as deep as Quell takes is read whole, not dropped.
//
// Thread-safety: not thread-safe; use one arena per thread. The MapView (and everything it
// points at) is valid until the next Parse() or the arena's destruction.
#ifndef QUELL_ENGINE_INTERNAL_JSON_MAP_H_
#define QUELL_ENGINE_INTERNAL_JSON_MAP_H_

#include <string>
#include <string_view>
#include <vector>

#include "core/json_text.h"
#include "policy/value.h"

namespace quell::engine::internal {

class JsonMapArena {
 public:
  static constexpr int kMaxDepth = core::kMaxJsonDepth + 1;

  // Parses `json` into *out. Returns false (and an empty map) if it is not a JSON object.
  bool Parse(std::string_view json, policy::MapView* out);

 private:
  friend class JsonMapHandler;
  struct Frame {
    bool array = false;
    size_t start = 0;      // first pending entry (objects) or item (arrays)
    std::string_view key;  // the key this container is stored under in its parent
  };

  std::string buffer_;
  std::vector<policy::MapEntry> pending_;     // entries of the open objects
  std::vector<policy::Value> pending_items_;  // items of the open arrays
  std::vector<policy::MapEntry> entries_;     // finished objects, contiguous
  std::vector<policy::MapView> maps_;         // finished objects
  std::vector<std::string_view> strings_;     // finished arrays of strings, contiguous
  std::vector<policy::Value> items_;          // finished other arrays, contiguous
  std::vector<Frame> frames_;
  std::string_view key_;
  policy::MapView root_;
  bool done_ = false;
};

}  // namespace quell::engine::internal

#endif  // QUELL_ENGINE_INTERNAL_JSON_MAP_H_
