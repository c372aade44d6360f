// A small blocking HTTP/1.1 client on POSIX sockets, for exporters (OTLP/HTTP).
// One connection per request ("Connection: close"); plain http only.
//
// Thread-safety: pure functions; each call uses its own socket.
#ifndef QUELL_OBS_INTERNAL_HTTP_CLIENT_H_
#define QUELL_OBS_INTERNAL_HTTP_CLIENT_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::obs::internal {

struct HttpUrl {
  std::string host;  // without brackets for IPv6 literals
  int port = 80;
  std::string path = "/";  // path and query, starts with '/'
};

//! Parses "http://host[:port][/path]". Errors: kInvalidArgument (other schemes,
//! https included; userinfo; empty host; bad port; control characters or spaces).
absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url);

struct HttpResponse {
  int status = 0;
  std::string body;  // at most the first 64 KiB
};

//! POSTs `body`. The connect step (name resolution included) gives up after
//! `connect_timeout`, the whole exchange
//! after `request_timeout`. Errors: kUnavailable (resolution, connection refused or
//! reset, malformed reply), kDeadlineExceeded (a timeout).
absl::StatusOr<HttpResponse> HttpPost(const HttpUrl& url, std::string_view content_type,
                                      std::string_view body, absl::Duration connect_timeout,
                                      absl::Duration request_timeout);

}  // namespace quell::obs::internal

#endif  // QUELL_OBS_INTERNAL_HTTP_CLIENT_H_
