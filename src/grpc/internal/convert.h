// Conversions between Quell's core types and the quell.v1 protobuf messages.
//
// Thread-safety: pure functions.
#ifndef QUELL_GRPC_INTERNAL_CONVERT_H_
#define QUELL_GRPC_INTERNAL_CONVERT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "core/action.h"
#include "core/mitigation.h"
#include "quell/v1/enforcement.pb.h"

namespace google::protobuf {
class Timestamp;
}

namespace quell::grpc_api::internal {

quell::v1::Verdict ToProto(core::Verdict v);
void SetTimestamp(int64_t unix_micros, google::protobuf::Timestamp* out);
void ToProto(const core::Mitigation& m, quell::v1::Mitigation* out);

//! The gRPC status code for an absl one (they map one to one).
int GrpcCode(absl::StatusCode code);

}  // namespace quell::grpc_api::internal

#endif  // QUELL_GRPC_INTERNAL_CONVERT_H_
