// A small blocking HTTP/1.1 client on POSIX sockets: one keep-alive connection, POST
// with a Content-Length body, responses with Content-Length or chunked bodies. Enough
// for streaming import batches to a Quell server; no TLS (use a local proxy).
//
// Thread-safety: one connection per thread; not thread-safe.
#ifndef QUELL_IMPORTER_INTERNAL_HTTP_CLIENT_H_
#define QUELL_IMPORTER_INTERNAL_HTTP_CLIENT_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::importer::internal {

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

}  // namespace quell::importer::internal

#endif  // QUELL_IMPORTER_INTERNAL_HTTP_CLIENT_H_
