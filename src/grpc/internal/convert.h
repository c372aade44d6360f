// Conversions between Quell's core types and the quell.v1 protobuf messages.
//
// Thread-safety: pure functions.
#ifndef QUELL_GRPC_INTERNAL_CONVERT_H_
#define QUELL_GRPC_INTERNAL_CONVERT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/action.h"
#include "core/mitigation.h"
#include "quell/v1/detections.pb.h"
#include "quell/v1/enforcement.pb.h"

namespace google::protobuf {
class Timestamp;
}

namespace quell::grpc_api::internal {

quell::v1::Verdict ToProto(core::Verdict v);
void SetTimestamp(int64_t unix_micros, google::protobuf::Timestamp* out);
void ToProto(const core::Mitigation& m, quell::v1::Mitigation* out);

//! A detection as the JSON object POST /v1/detections reads (proto field names; every
//! scalar printed, so an empty id or a zero score is validated as HTTP would; Timestamp
//! as RFC 3339; Struct as an object). kInvalidArgument when protobuf cannot print it
//! (a Timestamp out of range), naming the field when it can.
absl::StatusOr<std::string> DetectionJson(const quell::v1::Detection& d);

//! Reads one per-item reply of the detection intake (api/detection_intake.h: the HTTP
//! per-item result object) into `out`: status, decisions, and for a rejected item the
//! error ("field: message", every field error joined by "; "). kInternal if unreadable.
absl::Status ReadDetectionResult(std::string_view reply, quell::v1::DetectionResult* out);

//! The gRPC status code for an absl one (they map one to one).
int GrpcCode(absl::StatusCode code);

}  // namespace quell::grpc_api::internal

#endif  // QUELL_GRPC_INTERNAL_CONVERT_H_
