#include "api/errors.h"

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/utf8.h"

namespace quell::api {

ApiError ApiError::InvalidArgument(std::string message, std::vector<FieldError> details) {
  return {400, "invalid_argument", std::move(message), std::move(details)};
}
ApiError ApiError::Field(std::string field, std::string message) {
  std::string summary = absl::StrCat(field, ": ", message);
  return {400, "invalid_argument", std::move(summary), {{std::move(field), std::move(message)}}};
}
ApiError ApiError::NotFound(std::string message) {
  return {404, "not_found", std::move(message), {}};
}
ApiError ApiError::Unauthenticated(std::string_view how) {
  return {401, "unauthenticated", absl::StrCat("missing or invalid API key (", AV(how), ")"), {}};
}
ApiError ApiError::Forbidden(std::string message) {
  return {403, "permission_denied", std::move(message), {}};
}
ApiError ApiError::Conflict(std::string message) {
  return {409, "conflict", std::move(message), {}};
}
ApiError ApiError::CursorAhead(std::string message) {
  return {409, "cursor_ahead", std::move(message), {}};
}
ApiError ApiError::TooLarge(std::string message) {
  return {413, "too_large", std::move(message), {}};
}
ApiError ApiError::IdempotencyMismatch() {
  return {422, "idempotency_key_reused",
          "this Idempotency-Key was already used with a different request body"};
}
ApiError ApiError::Unavailable(std::string message, int retry_after_seconds) {
  ApiError e{503, "unavailable", std::move(message)};
  e.retry_after_seconds = retry_after_seconds;
  return e;
}

ApiError ApiError::FromStatus(const absl::Status& s) {
  std::string msg(SV(s.message()));
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return InvalidArgument(std::move(msg));
    case absl::StatusCode::kNotFound:
      return NotFound(std::move(msg));
    case absl::StatusCode::kUnauthenticated:
      return Unauthenticated();
    case absl::StatusCode::kPermissionDenied:
      return Forbidden(std::move(msg));
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      return Conflict(std::move(msg));
    case absl::StatusCode::kResourceExhausted: {
      ApiError e{429, "resource_exhausted", std::move(msg)};
      e.retry_after_seconds = 1;
      return e;
    }
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return Unavailable(std::move(msg));
    default:
      // Internal details stay in the log; the client learns only that it failed.
      return {500, "internal", "internal error"};
  }
}

namespace {

// Messages may quote what a client sent (a percent-decoded path, a name): bytes that are
// not UTF-8 become U+FFFD, so the body stays JSON a client can decode.
void AppendText(std::string_view s, std::string* out) {
  if (!core::FindInvalidUtf8(s)) return core::AppendJsonString(s, out);
  core::AppendJsonString(core::ReplaceInvalidUtf8(s), out);
}

}  // namespace

std::string ErrorJson(const ApiError& e) {
  std::string out = "{\"error\":{\"code\":";
  core::AppendJsonString(e.code, &out);
  out += ",\"message\":";
  AppendText(e.message, &out);
  if (!e.details.empty()) {
    out += ",\"details\":[";
    for (size_t i = 0; i < e.details.size(); ++i) {
      if (i) out += ',';
      out += "{\"field\":";
      AppendText(e.details[i].field, &out);
      out += ",\"message\":";
      AppendText(e.details[i].message, &out);
      if (e.details[i].index >= 0) absl::StrAppend(&out, ",\"index\":", e.details[i].index);
      out += '}';
    }
    out += ']';
  }
  out += "}}";
  return out;
}

http::Response ToResponse(const ApiError& e) {
  http::Response r;
  r.status = e.status;
  r.body = ErrorJson(e);
  if (!e.allow.empty()) r.headers.emplace_back("Allow", e.allow);
  if (e.retry_after_seconds > 0) {
    r.headers.emplace_back("Retry-After", std::to_string(e.retry_after_seconds));
  }
  return r;
}

}  // namespace quell::api
