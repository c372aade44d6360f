#include "grpc/internal/convert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/aggregate.h"
#include "core/strings.h"
#include "core/time.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/json_util.h"

namespace quell::grpc_api::internal {

quell::v1::Verdict ToProto(core::Verdict v) {
  switch (v) {
    case core::Verdict::kAllow:
      return quell::v1::VERDICT_ALLOW;
    case core::Verdict::kThrottle:
      return quell::v1::VERDICT_THROTTLE;
    case core::Verdict::kChallenge:
      return quell::v1::VERDICT_CHALLENGE;
    case core::Verdict::kDeny:
      return quell::v1::VERDICT_DENY;
  }
  return quell::v1::VERDICT_UNSPECIFIED;
}

void SetTimestamp(int64_t unix_micros, google::protobuf::Timestamp* out) {
  // Floor division so that times before 1970 keep nanos in [0, 1e9).
  int64_t seconds = unix_micros / 1000000;
  int64_t micros = unix_micros % 1000000;
  if (micros < 0) {
    micros += 1000000;
    --seconds;
  }
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(micros * 1000));
}

static_assert(core::FieldCount<core::Mitigation>() == 21,
              "core::Mitigation changed: add the new field to quell.v1.Mitigation and ToProto, "
              "then update this count");

void ToProto(const core::Mitigation& m, quell::v1::Mitigation* out) {
  out->set_id(m.id);
  out->set_entity(m.entity.str());
  out->set_action(m.action);
  out->set_state(std::string(core::StateName(m.state)));
  SetTimestamp(core::ToMicros(m.created_at), out->mutable_created_at());
  SetTimestamp(core::ToMicros(m.updated_at), out->mutable_updated_at());
  SetTimestamp(core::ToMicros(m.starts_at), out->mutable_starts_at());
  SetTimestamp(core::ToMicros(m.expires_at), out->mutable_expires_at());
  out->set_reason(m.reason);
  out->set_source(m.source);
  out->set_policy(m.policy);
  out->set_policy_version(m.policy_version);
  out->set_actor(m.actor);
  out->set_batch(m.batch);
  for (const std::string& d : m.detections) out->add_detections(d);
  out->set_state_reason(m.state_reason);
  out->set_seq(m.seq);
  for (const std::string& p : m.detection_policies) out->add_detection_policies(p);
  for (const std::string& a : m.approvals) out->add_approvals(a);
  for (const core::BatchExpiry& e : m.batch_expiries) {
    quell::v1::BatchExpiry* b = out->add_batch_expiries();
    b->set_batch(e.batch);
    b->set_source(e.source);
    b->set_policy(e.policy);
    SetTimestamp(core::ToMicros(e.expires_at), b->mutable_expires_at());
  }
  out->set_unlisted_detections(m.unlisted_detections);
}

namespace {

// protobuf's JSON printer stops at 100 message levels, and a JSON level of a Struct takes
// three: evidence nested 33 deep could not be printed, which POST /v1/detections takes up
// to its own limit (the intake checks the depth of what is printed here). This printer
// has no limit of its own: the message was parsed with a bounded recursion (ParseRaw).
bool AppendValueJson(const google::protobuf::Value& v, std::string* out);

bool AppendStructJson(const google::protobuf::Struct& s, std::string* out) {
  // Keys in order, as protobuf prints a map (the stored JSON does not depend on the wire
  // order of map entries).
  std::vector<const std::string*> keys;
  keys.reserve(s.fields_size());
  for (const auto& [k, unused] : s.fields()) keys.push_back(&k);
  std::sort(keys.begin(), keys.end(),
            [](const std::string* a, const std::string* b) { return *a < *b; });
  out->push_back('{');
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) out->push_back(',');
    core::AppendJsonString(*keys[i], out);
    out->push_back(':');
    if (!AppendValueJson(s.fields().at(*keys[i]), out)) return false;
  }
  out->push_back('}');
  return true;
}

bool AppendValueJson(const google::protobuf::Value& v, std::string* out) {
  switch (v.kind_case()) {
    case google::protobuf::Value::kNumberValue: {
      const double x = v.number_value();
      if (!std::isfinite(x)) return false;  // JSON has no NaN or infinity (nor has protobuf's)
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", x);  // exact; the intake prints it shortest
      out->append(buf);
      return true;
    }
    case google::protobuf::Value::kStringValue:
      core::AppendJsonString(v.string_value(), out);
      return true;
    case google::protobuf::Value::kBoolValue:
      out->append(v.bool_value() ? "true" : "false");
      return true;
    case google::protobuf::Value::kStructValue:
      return AppendStructJson(v.struct_value(), out);
    case google::protobuf::Value::kListValue: {
      out->push_back('[');
      const auto& values = v.list_value().values();
      for (int i = 0; i < values.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (!AppendValueJson(values[i], out)) return false;
      }
      out->push_back(']');
      return true;
    }
    case google::protobuf::Value::kNullValue:
    case google::protobuf::Value::KIND_NOT_SET:  // as protobuf prints it
      out->append("null");
      return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::string> DetectionJson(const quell::v1::Detection& d) {
  // Going through JSON (rather than filling an engine::Detection directly) runs every
  // item through the very reader HTTP uses (api::ReadDetection, behind the intake), so
  // limits, field errors and their wording cannot drift between the two front ends. The
  // cost is one print and one parse per item, small next to evaluation and the ledger.
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  // The evidence is printed apart (AppendStructJson), the rest by protobuf.
  const quell::v1::Detection* printed = &d;
  quell::v1::Detection without_evidence;
  if (d.has_evidence()) {
    without_evidence = d;
    without_evidence.clear_evidence();
    printed = &without_evidence;
  }
  auto s = google::protobuf::util::MessageToJsonString(*printed, &out, options);
  if (!s.ok()) {
    const auto& t = d.observed_at();
    const bool bad_time =
        d.has_observed_at() && (t.seconds() < -62135596800 || t.seconds() > 253402300799 ||
                                t.nanos() < 0 || t.nanos() > 999999999);
    return absl::InvalidArgumentError(absl::StrCat(
        bad_time ? "observed_at: " : "",
        "cannot be read as JSON: ", std::string(s.message().data(), s.message().size())));
  }
  if (d.has_evidence() && !out.empty() && out.back() == '}') {
    out.pop_back();
    out.append(out.size() > 1 ? ",\"evidence\":" : "\"evidence\":");
    if (!AppendStructJson(d.evidence(), &out)) {
      return absl::InvalidArgumentError("evidence: a number that is not finite");
    }
    out.push_back('}');
  }
  return out;
}

absl::Status ReadDetectionResult(std::string_view reply, quell::v1::DetectionResult* out) {
  google::protobuf::Struct r;
  google::protobuf::util::JsonParseOptions options;
  auto s = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(reply.data(), reply.size()), &r, options);
  if (!s.ok()) return absl::InternalError("unreadable detection reply");
  const auto& f = r.fields();
  auto str = [](const google::protobuf::Struct& st, const char* name) -> std::string {
    auto it = st.fields().find(name);
    return it == st.fields().end() ? std::string() : it->second.string_value();
  };
  const std::string status = str(r, "status");
  if (status == "accepted") {
    out->set_status(quell::v1::DetectionResult::STATUS_ACCEPTED);
  } else if (status == "duplicate") {
    out->set_status(quell::v1::DetectionResult::STATUS_DUPLICATE);
  } else if (status == "rejected") {
    out->set_status(quell::v1::DetectionResult::STATUS_REJECTED);
    auto err = f.find("error");
    if (err == f.end()) return absl::InternalError("rejected detection reply without error");
    const google::protobuf::Struct& e = err->second.struct_value();
    std::string text;
    auto details = e.fields().find("details");
    if (details != e.fields().end()) {
      for (const auto& v : details->second.list_value().values()) {
        absl::StrAppend(&text, text.empty() ? "" : "; ", str(v.struct_value(), "field"), ": ",
                        str(v.struct_value(), "message"));
      }
    }
    out->set_error(text.empty() ? str(e, "message") : text);
  } else {
    return absl::InternalError(absl::StrCat("detection reply with status \"", status, "\""));
  }
  auto decisions = f.find("decisions");
  if (decisions != f.end()) {
    for (const auto& v : decisions->second.list_value().values()) {
      const google::protobuf::Struct& d = v.struct_value();
      quell::v1::Decision* o = out->add_decisions();
      o->set_mitigation_id(str(d, "mitigation_id"));
      o->set_entity(str(d, "entity"));
      o->set_action(str(d, "action"));
      o->set_state(str(d, "state"));
      o->set_policy(str(d, "policy"));
      o->set_reason(str(d, "reason"));
    }
  }
  return absl::OkStatus();
}

int GrpcCode(absl::StatusCode code) {
  // absl::StatusCode values are gRPC's, by design.
  return static_cast<int>(code);
}

}  // namespace quell::grpc_api::internal
