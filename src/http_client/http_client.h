// A small blocking HTTP/1.1 client on POSIX sockets: one keep-alive connection, requests
// with a Content-Length body, responses with Content-Length or chunked bodies. For the
// CLI's commands that talk to a Quell server (`quell import --server` streams its batches
// through it, `quell check` asks for verdicts); no TLS (use a local proxy).
//
// Thread-safety: one connection per thread; not thread-safe (its cancel flag may be set
// from anywhere).
#ifndef QUELL_HTTP_CLIENT_HTTP_CLIENT_H_
#define QUELL_HTTP_CLIENT_HTTP_CLIENT_H_

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::http_client {

struct Url {
  std::string host;
  int port = 80;
  std::string prefix;  // path prefix without the trailing '/', "" for the root
};

//! Parses "http://host[:port][/prefix]". kInvalidArgument otherwise (https included, and
//! user info, a query or a fragment), with a message that names no flag (callers do).
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
  // How long a request may take, connecting, sending and reading its reply, unless the
  // caller says otherwise: a durable commit of a big batch on a busy server takes a while.
  static constexpr absl::Duration kDefaultTimeout = absl::Seconds(300);
  // Once *cancel is set, a request still waiting gets this long to finish (by default).
  static constexpr absl::Duration kCancelGrace = absl::Seconds(5);

  // `cancel` (may be null; must outlive the connection): set, e.g. by a signal handler, to
  // end a request that is still waiting (a server that accepted and never answers).
  explicit HttpConnection(Url url, const std::atomic<bool>* cancel = nullptr,
                          absl::Duration cancel_grace = kCancelGrace)
      : url_(std::move(url)), cancel_(cancel), cancel_grace_(cancel_grace) {}
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  //! Sends one request (connecting first if needed) and reads the reply, all within
  //! `timeout`. kUnavailable for connection errors and for no reply within `timeout`;
  //! kCancelled when *cancel was set and the reply had not come cancel_grace later (or
  //! while still connecting: at once). On
  //! every error the connection is closed (the next call reconnects).
  absl::StatusOr<HttpResponse> Request(
      std::string_view method, std::string_view path,
      const std::vector<std::pair<std::string, std::string>>& headers, std::string_view body,
      absl::Duration timeout = kDefaultTimeout);
  void Close();

 private:
  absl::Status Connect();
  // Waits until the socket is ready for `events` (POLLIN, POLLOUT): kUnavailable past
  // deadline_, kCancelled once *cancel_ has been set for cancel_grace_.
  absl::Status Wait(short events);
  absl::Status ReadMore();

  Url url_;
  const std::atomic<bool>* cancel_;
  absl::Duration cancel_grace_;
  int fd_ = -1;
  std::string in_;  // bytes read and not yet consumed
  // The current request's.
  absl::Time deadline_ = absl::InfiniteFuture();
  absl::Duration timeout_ = kDefaultTimeout;
  absl::Time cancel_seen_ = absl::InfiniteFuture();
};

}  // namespace quell::http_client

#endif  // QUELL_HTTP_CLIENT_HTTP_CLIENT_H_
