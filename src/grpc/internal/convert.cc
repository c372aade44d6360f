#include "grpc/internal/convert.h"

#include <string>

#include "core/time.h"
#include "google/protobuf/timestamp.pb.h"

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
}

int GrpcCode(absl::StatusCode code) {
  // absl::StatusCode values are gRPC's, by design.
  return static_cast<int>(code);
}

}  // namespace quell::grpc_api::internal
