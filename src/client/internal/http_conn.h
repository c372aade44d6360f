// A small blocking HTTP/1.1 client connection over a POSIX socket, for the mirror's
// sync thread: GET only, keep-alive, Content-Length or chunked bodies delivered in pieces
// as they arrive (a snapshot need not fit in memory twice). No TLS, no redirects.
// (Other methods too, for tools and benchmarks.)
//
// Thread-safety: one thread uses a connection; Abort() may be called from any other
// thread to make a blocked call fail at once.
#ifndef QUELL_CLIENT_INTERNAL_HTTP_CONN_H_
#define QUELL_CLIENT_INTERNAL_HTTP_CONN_H_

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quell::client::internal {

struct Endpoint {
  std::string host;
  int port = 0;
};
//! Parses "http://HOST:PORT" (a trailing "/" allowed; IPv6 as [::1]). kInvalidArgument
//! otherwise.
absl::StatusOr<Endpoint> ParseHttpUrl(std::string_view url);

class HttpConn {
 public:
  explicit HttpConn(Endpoint endpoint) : endpoint_(std::move(endpoint)) {}
  ~HttpConn();
  HttpConn(const HttpConn&) = delete;
  HttpConn& operator=(const HttpConn&) = delete;

  // Body pieces, in order; an error stops the transfer (and closes the connection).
  using BodyFn = std::function<absl::Status(std::string_view piece)>;

  //! GET `target` with `Authorization: <authorization>` (if not empty). Connects (or
  //! reuses the open connection). The status code is returned; the body goes to `body`.
  //! `timeout` bounds each wait for bytes. kUnavailable for connection errors and
  //! timeouts, kCancelled after Abort(), kDataLoss for a malformed reply.
  absl::StatusOr<int> Get(std::string_view target, std::string_view authorization,
                          absl::Duration timeout, const BodyFn& body) {
    return Request("GET", target, authorization, {}, timeout, body);
  }
  //! Any method; a non-empty `request_body` is sent as application/json. Same codes.
  absl::StatusOr<int> Request(std::string_view method, std::string_view target,
                              std::string_view authorization, std::string_view request_body,
                              absl::Duration timeout, const BodyFn& body);

  //! The status code of the reply being read (valid from the first body piece on).
  int status_code() const { return status_code_; }

  //! Closes the connection; a call blocked in Get fails with kCancelled. Sticky.
  void Abort();
  //! Closes the connection (the next Get reconnects).
  void Close();

 private:
  absl::Status Connect(absl::Duration timeout);
  absl::Status SendAll(std::string_view data, absl::Duration timeout);
  //! Reads more bytes into buf_; kUnavailable on EOF.
  absl::Status Fill(absl::Duration timeout);
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);
  absl::Status ReadBody(size_t length, absl::Duration timeout, const BodyFn& body);

  Endpoint endpoint_;
  std::mutex mu_;  // guards fd_ against Abort from another thread
  int fd_ = -1;    // guarded by mu_ for writes
  std::atomic<bool> aborted_{false};
  // Bytes read and not consumed are buf_[pos_, end_); recv writes straight after end_
  // (buf_ is storage: its size is its capacity, grown rarely).
  std::string buf_;
  size_t pos_ = 0;
  size_t end_ = 0;
  int status_code_ = 0;
};

}  // namespace quell::client::internal

#endif  // QUELL_CLIENT_INTERNAL_HTTP_CONN_H_
