// libFuzzer target for the evidence / attrs reader (engine::internal::JsonMapArena): the
// JSON object of a detection's evidence or an event's attrs, turned into the policy
// language's map, then read by a few fixed conditions that walk maps, lists and arrays.
//
// Checks, beyond "no crash, no sanitizer report": a text that is not a JSON object gives
// an empty map; parsing is deterministic (the same text read twice, with another text
// read between, prints the same); every value reached is well formed (sizes within the
// text, lists of strings, arrays of values); evaluation does not depend on the arena's
// earlier contents.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/internal/json_map.h"
#include "policy/expr.h"

namespace {

using quell::engine::internal::JsonMapArena;
using quell::policy::Compilation;
using quell::policy::Declarations;
using quell::policy::DetectionInput;
using quell::policy::EmptyEnvironment;
using quell::policy::Input;
using quell::policy::MapView;
using quell::policy::Program;
using quell::policy::Schema;
using quell::policy::Value;
using quell::policy::ValueKind;

// Aborts naming the failed check's line, so that a crashing input says which one failed.
#define Check(ok)                                                       \
  do {                                                                  \
    if (!(ok)) {                                                        \
      std::fprintf(stderr, "evidence_fuzz.cc:%d: %s\n", __LINE__, #ok); \
      std::abort();                                                     \
    }                                                                   \
  } while (false)

// Walks `v`, checking every size against the text's length `n`; returns the values seen.
size_t Walk(const Value& v, size_t n, int depth) {
  Check(depth <= JsonMapArena::kMaxDepth + 1);
  size_t seen = 1;
  switch (v.kind()) {
    case ValueKind::kString:
      Check(v.string_value().size() <= n);
      break;
    case ValueKind::kList:
      Check(v.list_size() <= n);
      for (size_t i = 0; i < v.list_size(); ++i) Check(v.list_data()[i].size() <= n);
      break;
    case ValueKind::kArray: {
      Check(v.array_size() <= n);
      bool all_strings = v.array_size() > 0;
      for (size_t i = 0; i < v.array_size(); ++i) {
        const Value& item = v.array_data()[i];
        Check(!item.is_error());
        all_strings = all_strings && item.kind() == ValueKind::kString;
        seen += Walk(item, n, depth + 1);
      }
      Check(!all_strings);  // an array of strings is a list<string>
      break;
    }
    case ValueKind::kMap:
      Check(v.map_value()->size <= n);
      for (size_t i = 0; i < v.map_value()->size; ++i) {
        Check(v.map_value()->entries[i].key.size() <= n);
        seen += Walk(v.map_value()->entries[i].value, n, depth + 1);
      }
      break;
    case ValueKind::kError:
      std::abort();  // the reader makes no error values
    default:
      break;
  }
  return seen;
}

struct Programs {
  Programs() {
    Declarations decls;
    for (const char* src : {
             R"(1 in detection.evidence.a || "x" in detection.evidence.a)",
             R"(detection.evidence.a[0] == detection.evidence.a[1])",
             R"(size(detection.evidence.a) > 2 && detection.evidence.a[2].b == 1)",
             R"(detection.evidence.a == detection.evidence.b)",
             R"(detection.evidence.a.b[0][1] in [1, 2] || detection.evidence.a.b[1][0] == true)",
         }) {
      Compilation c =
          quell::policy::CompileExpressionWithDiagnostics(src, Schema::Detection(), decls);
      Check(c.program != nullptr);
      programs.push_back(std::move(c.program));
    }
  }
  std::vector<std::shared_ptr<const Program>> programs;
};

std::string Results(const Programs& p, const MapView& evidence) {
  DetectionInput d;
  d.id = "d1";
  d.source = "s";
  d.type = "t";
  d.score = 0.5;
  d.entity = "user:u1";
  d.evidence = evidence;
  const Input input = Input::ForDetection(d);
  EmptyEnvironment env;
  std::string out;
  for (const auto& program : p.programs) {
    out += program->Evaluate(input, env).DebugString();
    out += ';';
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Programs* programs = new Programs();
  static JsonMapArena* arena = new JsonMapArena();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  MapView m;
  const bool ok = arena->Parse(text, &m);
  if (!ok) {
    Check(m.size == 0);
    return 0;
  }
  Walk(Value::Map(&m), size, 0);
  const std::string first = Value::Map(&m).DebugString();
  const std::string results = Results(*programs, m);
  MapView other;
  (void)arena->Parse(R"({"a": [1, {"b": 1}, [2, "x"]], "b": ["q"]})", &other);
  Check(arena->Parse(text, &m));
  Check(Value::Map(&m).DebugString() == first);
  Check(Results(*programs, m) == results);
  return 0;
}
