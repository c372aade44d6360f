// A small blocking HTTP/1.1 client on POSIX sockets: one keep-alive connection, requests
// with a Content-Length body, responses with Content-Length or chunked bodies. For the
// CLI's commands that talk to a Quell server (`quell import --server` streams its batches
// through it, `quell check` asks for verdicts); no TLS (use a local proxy).
//
// Thread-safety: one connection per thread; not thread-safe.
#ifndef QUELL_HTTP_CLIENT_HTTP_CLIENT_H_
#define QUELL_HTTP_CLIENT_HTTP_CLIENT_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::http_client {

struct Url {
  std::string host;
  int port = 80;
  std::string prefix;  // path prefix without the trailing '/', "" for the root
};

//! Parses "http://host[:port][/prefix]". kInvalidArgument otherwise (https included).
absl::StatusOr<Url> ParseUrl(std::string_view url);

//! `s` as a query parameter value: every byte but A-Z a-z 0-9 - _ . ~ as %XX.
std::string PercentEncode(std::string_view s);

struct HttpResponse {
  int status = 0;
  std::string body;
  std::string retry_after;  // the Retry-After header, if any
};

class HttpConnection {
 public:
  explicit HttpConnection(Url url) : url_(std::move(url)) {}
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  //! Sends one request (connecting first if needed) and reads the reply. kUnavailable
  //! for connection errors (the connection is closed; the next call reconnects).
  absl::StatusOr<HttpResponse> Request(
      std::string_view method, std::string_view path,
      const std::vector<std::pair<std::string, std::string>>& headers, std::string_view body);
  void Close();

 private:
  absl::Status Connect();
  absl::Status ReadMore();

  Url url_;
  int fd_ = -1;
  std::string in_;  // bytes read and not yet consumed
};

}  // namespace quell::http_client

#endif  // QUELL_HTTP_CLIENT_HTTP_CLIENT_H_
