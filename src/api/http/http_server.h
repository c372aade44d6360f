// The HTTP/1.1 server Quell's API runs on (Boost.Beast's parser on Asio; the
// Boost headers stay inside http_server.cc).
//
// One event loop per thread, each with its own listening socket (SO_REUSEPORT),
// so the kernel spreads connections and a connection lives on one thread for
// its whole life. Keep-alive and pipelining: a connection handles one request at
// a time and answers in request order. Limits and timeouts come from
// ServerOptions; malformed input gets a JSON error and the connection is closed.
#ifndef QUELL_API_HTTP_HTTP_SERVER_H_
#define QUELL_API_HTTP_HTTP_SERVER_H_

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "api/http/http_types.h"

namespace quell::http {

namespace internal {
class Session;
class Loop;
}  // namespace internal

// Completes one request. Move-only; call it exactly once, from any thread, with
// the response. Calling it after the client went away or after the server shut
// down is harmless (the response is dropped). If it is destroyed without being
// called, the client gets a 500 so that the connection never hangs.
// Thread-safety: one Responder may be used by one thread at a time.
class Responder {
 public:
  Responder() = default;
  Responder(Responder&&) noexcept = default;
  Responder& operator=(Responder&& other) noexcept;
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;
  ~Responder();

  //! Sends `response`. No-op on an empty (moved-from or already used) Responder.
  void operator()(Response response) &&;
  //! False once called or moved from.
  explicit operator bool() const { return session_ != nullptr; }

 private:
  friend class internal::Session;
  explicit Responder(std::shared_ptr<internal::Session> session) : session_(std::move(session)) {}
  std::shared_ptr<internal::Session> session_;
};

// A request the server answered itself, without the handler: it could not be read (400),
// was not received in time (408), or was over a limit (413 body, 431 header). The views
// are valid during the OnRefused call only.
struct Refusal {
  int status = 0;
  std::string_view method;          // "" when the request line was not read
  std::string_view request_id;      // the X-Request-Id of the reply
  std::string_view remote_address;  // the peer's IP
  std::string_view message;         // the error message of the reply
};

// What the application implements. Borrowed by the Server; must outlive it (or
// at least its Shutdown()).
// Thread-safety: Handle and OnRefused are called concurrently from all IO threads.
class Handler {
 public:
  virtual ~Handler() = default;
  //! Called on an IO thread, once per request. Must not block: answer through
  //! `respond` now (inline is fine and fastest) or later from any thread.
  virtual void Handle(Request request, Responder respond) = 0;
  //! Called on an IO thread when the server refuses a request itself, as it sends the
  //! reply: for access logs and metrics. Must not block. The default does nothing.
  virtual void OnRefused(const Refusal& refusal) { (void)refusal; }
};

struct ServerOptions {
  std::string host = "127.0.0.1";       // an IP literal or a resolvable name
  int port = 8080;                      // 0 = ephemeral; read it back with Server::port()
  int threads = 0;                      // event loops; 0 = number of CPUs
  size_t max_header_bytes = 16 * 1024;  // request line + fields; over it -> 431
  size_t max_body_bytes = 8 << 20;      // over it -> 413
  // Whole request, from its first byte to its last; over it -> 408 and close.
  absl::Duration read_timeout = absl::Seconds(10);
  // A keep-alive connection with no request started is closed after this.
  absl::Duration idle_timeout = absl::Seconds(60);
  // Writing one response (or one batch of a stream) to a slow reader.
  absl::Duration write_timeout = absl::Seconds(30);
  // How long Shutdown() waits for in-flight requests before closing them.
  absl::Duration shutdown_grace = absl::Seconds(10);
  int backlog = 1024;
};

// A running server. Thread-safe: port() and Shutdown() may be called from any
// thread (but not from a Handler, which would wait for itself).
class Server {
 public:
  //! Binds, listens and starts the IO threads. `handler` is borrowed.
  //! Errors: kInvalidArgument (bad options or host), kUnavailable (bind/listen
  //! failed, e.g. port in use).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       Handler* handler);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  // calls Shutdown()

  //! The bound port (the real one when options.port was 0).
  int port() const { return port_; }

  //! Graceful stop: closes the listening sockets (new connections are refused),
  //! closes idle keep-alive connections, lets in-flight requests finish and
  //! answers them with `Connection: close`, up to options.shutdown_grace; then
  //! closes whatever is left and joins the IO threads. Idempotent; after it
  //! returns the handler is never called again.
  void Shutdown();

 private:
  Server() = default;
  ServerOptions options_;
  int port_ = 0;
  std::vector<std::shared_ptr<internal::Loop>> loops_;
  std::mutex shutdown_mu_;  // serialises Shutdown()
  bool shut_down_ = false;  // guarded by shutdown_mu_
};

}  // namespace quell::http

#endif  // QUELL_API_HTTP_HTTP_SERVER_H_
