// libFuzzer target for the policy expression language: lex, parse, type-check and compile
// the input as a `when` expression (for both schemas), then evaluate every program that
// compiles against a fixed detection/event and a fake Environment.
//
// Checks, beyond "no crash, no sanitizer report": every diagnostic has a valid position and
// a message; Eval() agrees with Evaluate(); evaluation is deterministic.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "policy/expr.h"

namespace {

using quell::policy::Compilation;
using quell::policy::Declarations;
using quell::policy::DetectionInput;
using quell::policy::Environment;
using quell::policy::EventInput;
using quell::policy::Input;
using quell::policy::MapEntry;
using quell::policy::MapView;
using quell::policy::Outcome;
using quell::policy::Result;
using quell::policy::Schema;
using quell::policy::Value;
using quell::policy::ValueKind;

class FakeEnvironment final : public Environment {
 public:
  int64_t Count(std::string_view c, std::string_view key, absl::Duration) override {
    return static_cast<int64_t>(c.size() + key.size());
  }
  int64_t Distinct(std::string_view, std::string_view key, absl::Duration) override {
    return static_cast<int64_t>(key.size());
  }
  bool InList(std::string_view list, std::string_view entity) override {
    return list.size() % 2 == entity.size() % 2;
  }
  bool Active(std::string_view entity, std::string_view) override { return entity.size() > 6; }
  int64_t Prior(std::string_view, std::string_view action, absl::Duration) override {
    return static_cast<int64_t>(action.size() % 3);
  }
};

struct Fixture {
  Fixture() {
    geo_entries[0] = MapEntry{"city", Value::String("Ume\xc3\xa5")};
    geo_entries[1] = MapEntry{"asn", Value::Int(1)};
    geo = MapView{geo_entries, 2};
    evidence_entries[0] = MapEntry{"asn", Value::Int(64500)};
    evidence_entries[1] = MapEntry{"country", Value::String("SE")};
    evidence_entries[2] = MapEntry{"ratio", Value::Double(0.5)};
    evidence_entries[3] = MapEntry{"tags", Value::List(tags, 2)};
    evidence_entries[4] = MapEntry{"geo", Value::Map(&geo)};
    evidence_entries[5] = MapEntry{"flag", Value::Bool(true)};
    evidence_entries[6] = MapEntry{"nothing", Value::Null()};
    evidence_entries[7] = MapEntry{"big", Value::Int(INT64_MAX)};
    hours[0] = Value::Int(3);
    hours[1] = Value::Double(4.5);
    hours[2] = Value::Map(&geo);
    evidence_entries[8] = MapEntry{"hours", Value::Array(hours, 3)};
    det.id = "d1";
    det.source = "bot-v3";
    det.type = "artificial_streaming";
    det.score = 0.97;
    det.observed_at = "2026-11-28T12:00:00Z";
    det.entity = "user:u1";
    det.related = absl::MakeConstSpan(related, 2);
    det.evidence = MapView{evidence_entries, 9};
    attrs_entries[0] = MapEntry{"ip", Value::String("ip:203.0.113.7")};
    attrs_entries[1] = MapEntry{"ms_played", Value::Int(31000)};
    attrs_entries[2] = MapEntry{"track", Value::String("track:t1")};
    event.type = "play";
    event.at = "2026-11-28T12:00:01Z";
    event.entity = "user:u2";
    event.attrs = MapView{attrs_entries, 3};
    decls.counters = {{"plays", {"1m", "1h", "24h"}, false}, {"accounts_per_ip", {"1h"}, true}};
    decls.lists = {"verified_artists", "protected"};
    decls.actions = {"exclude_royalties", "challenge", "suspend", "flag"};
  }
  std::string_view tags[2] = {"vpn", "dc"};
  std::string_view related[2] = {"device:d1", "ip:10.1.2.3"};
  MapEntry geo_entries[2];
  MapView geo;
  Value hours[3];
  MapEntry evidence_entries[9];
  MapEntry attrs_entries[3];
  DetectionInput det;
  EventInput event;
  Declarations decls;
};

void Check(bool ok) {
  if (!ok) std::abort();
}

void RunOne(std::string_view src, const Schema& schema, const Input& input,
            const Declarations& decls, bool any_type) {
  Compilation c = any_type ? CompileExpressionWithDiagnostics(src, schema, decls, {3, 7, 2})
                           : CompileWithDiagnostics(src, schema, decls);
  if (c.program == nullptr) {
    Check(!c.errors.empty());
    for (const auto& d : c.errors) Check(d.line >= 1 && d.column >= 1 && !d.message.empty());
    return;
  }
  Check(c.errors.empty());
  FakeEnvironment env;
  Value v1 = c.program->Evaluate(input, env);
  Value v2 = c.program->Evaluate(input, env);
  Check(v1.DebugString() == v2.DebugString());
  if (!any_type) {
    Result r = c.program->Eval(input, env);
    if (v1.kind() == ValueKind::kBool) {
      Check(r.outcome == (v1.bool_value() ? Outcome::kTrue : Outcome::kFalse));
    } else {
      Check(r.outcome == Outcome::kError);
    }
  }
  Input empty;  // no record at all: must not crash either
  c.program->Evaluate(empty, env);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Fixture* fx = new Fixture();
  std::string_view src(reinterpret_cast<const char*>(data), size);
  RunOne(src, Schema::Detection(), Input::ForDetection(fx->det), fx->decls, false);
  RunOne(src, Schema::Detection(), Input::ForDetection(fx->det), fx->decls, true);
  RunOne(src, Schema::Event(), Input::ForEvent(fx->event), fx->decls, false);
  return 0;
}
