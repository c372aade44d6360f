// Plain HTTP types shared by the server and the router: a parsed request, a
// response, and the query-string / percent-decoding helpers. No Boost here, so
// the rest of the project never compiles Beast headers.
//
// Thread-safety: value types; a Request or Response may be moved between
// threads but is not synchronised. The free functions are pure and thread-safe.
#ifndef QUELL_API_HTTP_HTTP_TYPES_H_
#define QUELL_API_HTTP_HTTP_TYPES_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace quell::http {

using HeaderList = std::vector<std::pair<std::string, std::string>>;
using QueryList = std::vector<std::pair<std::string, std::string>>;

// One parsed HTTP request. Movable; owns all its strings.
struct Request {
  std::string method;  // as received: "GET", "POST", ...
  std::string target;  // raw request-target, e.g. "/v1/check?entity=user%3A1"
  std::string path;    // percent-decoded path without the query ("+" kept as "+")
  QueryList query;     // decoded ("+" is a space), in order, repeats kept
  HeaderList headers;  // names lower-cased, values as received, in order
  std::string body;
  std::string remote_address;  // peer IP address, e.g. "127.0.0.1" or "::1"
  int version = 11;            // 10 for HTTP/1.0, 11 for HTTP/1.1

  //! Value of the first header named `lower_name` (lower case), or "" if absent.
  std::string_view Header(std::string_view lower_name) const;
  //! As Header, in the same one pass telling whether more than one line has that name
  //! (`*repeated`): for fields that must be given once (credentials, idempotency keys).
  std::string_view Header(std::string_view lower_name, bool* repeated) const;
  //! Value of the first query parameter named `name`, or nullopt if absent.
  std::optional<std::string_view> QueryParam(std::string_view name) const;
};

// A reply. `Content-Length` (or chunked encoding), `Content-Type` and
// `Connection` are written by the server; entries in `headers` that name one of
// those, or that contain CR/LF, are dropped.
struct Response {
  int status = 200;
  std::string content_type = "application/json";
  HeaderList headers;
  std::string body;
  // When set, `body` is ignored and the body is streamed with chunked transfer
  // encoding: the server calls `stream` repeatedly on the connection's IO thread;
  // each call appends to *chunk and returns true while more follows, false at the
  // end. It must not block. Destroyed on the IO thread once the stream ends or the
  // client goes away.
  std::function<bool(std::string* chunk)> stream;
};

//! A JSON error reply in SPEC's shape: {"error":{"code":CODE,"message":MESSAGE}}.
Response ErrorResponse(int status, std::string_view code, std::string_view message);

//! The standard reason phrase of `status` ("OK", "Not Found"), or "Unknown".
std::string_view ReasonPhrase(int status);

//! Decodes %XX escapes; with `plus_as_space`, also "+" to " ". Malformed escapes
//! ("%", "%4", "%zz") are kept literally. May produce any byte, NUL included.
std::string PercentDecode(std::string_view in, bool plus_as_space);

//! Splits a query string (without the leading "?") at "&" into decoded
//! name/value pairs, in order. Empty segments are skipped; a segment without "="
//! has an empty value.
QueryList ParseQuery(std::string_view query);

//! Fills request->path and request->query from request->target. Accepts
//! origin-form ("/a?b") and absolute-form ("http://host/a?b") targets.
void SplitTarget(Request* request);

}  // namespace quell::http

#endif  // QUELL_API_HTTP_HTTP_TYPES_H_
