// A plain blocking HTTP/1.1 POST client on POSIX sockets (http:// only), enough for
// webhook delivery: one request per connection ("Connection: close"), a connect timeout
// and an overall deadline for sending and reading the response status.
//
// Thread-safety: functions are thread-safe; each call uses its own socket.
#ifndef QUELL_WEBHOOKS_HTTP_POST_H_
#define QUELL_WEBHOOKS_HTTP_POST_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::webhooks {

struct HttpUrl {
  std::string host;
  int port = 80;
  std::string path = "/";  // path and query
};

//! Parses "http://host[:port][/path]". kInvalidArgument for anything else (https
//! included: not supported by this client).
absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url);

//! POSTs `body` and returns the response's status code. kUnavailable on connect or I/O
//! errors, kDeadlineExceeded past `timeout` (which bounds connect and the whole exchange).
absl::StatusOr<int> HttpPost(const HttpUrl& url,
                             const std::vector<std::pair<std::string, std::string>>& headers,
                             std::string_view body, absl::Duration timeout);

}  // namespace quell::webhooks

#endif  // QUELL_WEBHOOKS_HTTP_POST_H_
