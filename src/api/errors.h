// API errors: the one place where outcomes become HTTP status codes (STYLE: "HTTP status
// codes are chosen only in api/"). Body shape per SPEC:
//   {"error": {"code": "invalid_argument", "message": "...",
//              "details": [{"field": "detections[3].entity", "message": "..."}]}}
//
// Thread-safety: value types and pure functions.
#ifndef QUELL_API_ERRORS_H_
#define QUELL_API_ERRORS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "api/http/http_types.h"

namespace quell::api {

struct FieldError {
  std::string field;  // JSON path: "entity", "detections[3].score", "query.limit"
  std::string message;
  // >= 0: the request item it is about, sent as "index" (an NDJSON body's fields are
  // bare, so the index is what names its line); -1: not sent.
  int64_t index = -1;
};

struct ApiError {
  int status = 400;
  std::string code;     // stable machine-readable code
  std::string message;  // for people
  std::vector<FieldError> details;
  int retry_after_seconds = 0;  // > 0: sent as Retry-After (429/503)
  std::string allow;            // non-empty: sent as Allow (405: the methods the path takes)

  static ApiError InvalidArgument(std::string message, std::vector<FieldError> details = {});
  static ApiError Field(std::string field, std::string message);
  static ApiError NotFound(std::string message);
  // `how` names the credential the route takes.
  static ApiError Unauthenticated(std::string_view how = "Authorization: Bearer <key>");
  static ApiError Forbidden(std::string message);
  static ApiError Conflict(std::string message);
  // 409 cursor_ahead: a feed cursor past the ledger's last change (ledger::CheckCursor).
  static ApiError CursorAhead(std::string message);
  static ApiError TooLarge(std::string message);
  static ApiError IdempotencyMismatch();
  static ApiError Unavailable(std::string message, int retry_after_seconds = 1);
  //! Maps a Status from below api/ to the HTTP status its code means.
  static ApiError FromStatus(const absl::Status& status);
};

//! Renders the error as a response (JSON body, Retry-After when set).
http::Response ToResponse(const ApiError& error);
//! The JSON body alone.
std::string ErrorJson(const ApiError& error);

}  // namespace quell::api

#endif  // QUELL_API_ERRORS_H_
