// Reading detections from JSON (SPEC POST /v1/detections), with every error named by
// its field path, and writing their normalised JSON for storage.
//
// Thread-safety: pure functions.
#ifndef QUELL_API_DETECTION_CODEC_H_
#define QUELL_API_DETECTION_CODEC_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "api/errors.h"
#include "engine/engine.h"
#include "rapidjson/document.h"

namespace quell::api {

struct DetectionLimits {
  absl::Duration max_future_skew = absl::Minutes(5);  // observed_at may be at most this ahead
  size_t max_evidence_bytes = 16 * 1024;
  size_t max_related = 100;
};

//! Reads one detection object at `path` ("" or "detections[3]"). On failure returns the
//! field errors (at least one).
absl::StatusOr<engine::Detection> ReadDetection(const rapidjson::Value& value,
                                                const std::string& path, absl::Time now,
                                                const DetectionLimits& limits,
                                                std::vector<FieldError>* errors);

//! An import batch id, as a detection's `batch` or POST /v1/detections?batch=: 1-64 bytes
//! of UTF-8 without control characters.
bool ValidBatchId(std::string_view batch);
inline constexpr std::string_view kBatchIdRule =
    "must be 1-64 bytes of UTF-8 without control characters";

//! The normalised JSON form stored with a detection (canonical entities, RFC 3339 time).
//! It starts with ledger::AppendDetectionJsonHead of d's own fields; `head_bytes`, if
//! given, is set to that head's length (see StoredDetection::json_head_bytes).
std::string DetectionToJson(const engine::Detection& d, size_t* head_bytes = nullptr);

//! Parses what DetectionToJson wrote (for backtests and imports).
absl::StatusOr<engine::Detection> DetectionFromJson(std::string_view json);

}  // namespace quell::api

#endif  // QUELL_API_DETECTION_CODEC_H_
