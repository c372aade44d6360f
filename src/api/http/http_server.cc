// Implementation notes (why, not what):
// - Each Loop owns one io_context run by one thread and one SO_REUSEPORT
//   listening socket, so a connection never changes thread and the kernel spreads
//   accepts without a shared acceptor.
// - Requests are parsed with a basic_parser subclass that writes straight into
//   our Request (no intermediate beast::http::fields), and responses are
//   serialised by hand into a per-connection buffer reused across requests and
//   written with one gather write. Beast's serializer buys nothing here.
// - Timeouts are a deadline per session checked by a coarse per-loop sweep
//   timer, instead of arming an Asio timer per request.
// - A Session is owned by shared_ptrs held by its pending Asio operations and by
//   an outstanding Responder. Responders from other threads post to the loop
//   under Loop::mu_, which also records when the loop stopped running, so a late
//   Responder never posts into a dead io_context and never leaks a Session.
#include "api/http/http_server.h"

#include <algorithm>
#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/threads.h"
#include "obs/request_id.h"

namespace quell::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace internal {
namespace {

constexpr size_t kHeaderReadSize = 4096;     // a typical request fits in one read
constexpr size_t kBodyReadSize = 64 * 1024;  // once the header is in
constexpr size_t kStreamBatchBytes = 64 * 1024;
// A streamed body whose producer has nothing yet: polls at once this many times, then
// waits kStreamMinBackoff, doubling up to kStreamMaxBackoff.
constexpr int kStreamSpinPolls = 8;
constexpr std::chrono::microseconds kStreamMinBackoff{50};
constexpr std::chrono::microseconds kStreamMaxBackoff{2000};
constexpr size_t kMaxLingerBytes = 1 << 20;
constexpr Clock::duration kMaxLinger = std::chrono::seconds(2);
constexpr Clock::time_point kNever = Clock::time_point::max();
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr std::string_view kCrlf = "\r\n";
constexpr std::string_view kCrlfLastChunk = "\r\n0\r\n\r\n";
constexpr std::string_view kLastChunk = "0\r\n\r\n";

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

// Immutable after Server::Start; shared by every loop and session.
struct Config {
  ServerOptions options;
  Handler* handler = nullptr;  // borrowed
  Clock::duration read_timeout{};
  Clock::duration idle_timeout{};
  Clock::duration write_timeout{};
  Clock::duration tick{};
};

// Fills a Request while Beast parses. One per request (Beast parsers are not
// reusable). Confined to the session's IO thread.
class RequestParser final : public bhttp::basic_parser<true> {
 public:
  explicit RequestParser(Request* request) : request_(request) {}
  bool expect_continue() const { return expect_continue_; }

 private:
  void on_request_impl(bhttp::verb, beast::string_view method, beast::string_view target,
                       int version, error_code&) override {
    request_->method.assign(method.data(), method.size());
    request_->target.assign(target.data(), target.size());
    request_->version = version;
  }
  void on_response_impl(int, beast::string_view, int, error_code& ec) override {
    ec = bhttp::error::bad_version;  // never called for requests
  }
  void on_field_impl(bhttp::field field, beast::string_view name, beast::string_view value,
                     error_code&) override {
    auto& header = request_->headers.emplace_back(std::string(name.data(), name.size()),
                                                  std::string(value.data(), value.size()));
    absl::AsciiStrToLower(&header.first);
    if (field == bhttp::field::transfer_encoding) saw_transfer_encoding_ = true;
    if (field == bhttp::field::expect &&
        absl::EqualsIgnoreCase(absl::string_view(value.data(), value.size()), "100-continue")) {
      expect_continue_ = true;
    }
  }
  // A Transfer-Encoding whose last coding is not chunked leaves a request's body with no
  // framing (RFC 9112 6.3): Beast would read it as the next request on the connection,
  // which a proxy in front may frame differently (request smuggling). 400, then close.
  void on_header_impl(error_code& ec) override {
    if (saw_transfer_encoding_ && !chunked()) ec = bhttp::error::bad_transfer_encoding;
  }
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) override {
    // Beast has already checked the length against body_limit.
    if (length) request_->body.reserve(static_cast<size_t>(*length));
  }
  size_t on_body_impl(beast::string_view body, error_code&) override {
    request_->body.append(body.data(), body.size());
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
  size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code&) override {
    request_->body.append(body.data(), body.size());
    return body.size();
  }
  void on_finish_impl(error_code&) override {}

  Request* request_;
  bool expect_continue_ = false;
  bool saw_transfer_encoding_ = false;
};

// (This abseil's string_view is not std::string_view.)
bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return absl::EqualsIgnoreCase(absl::string_view(a.data(), a.size()),
                                absl::string_view(b.data(), b.size()));
}

bool HasCrLf(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

// Headers the server writes itself; a handler may not set them.
bool IsReservedHeader(std::string_view name) {
  return EqualsIgnoreCase(name, "content-length") || EqualsIgnoreCase(name, "transfer-encoding") ||
         EqualsIgnoreCase(name, "connection") || EqualsIgnoreCase(name, "content-type");
}

void AppendHex(size_t n, std::string* out) {
  char buf[2 * sizeof(size_t) + 1];
  const int len = std::snprintf(buf, sizeof(buf), "%zx", n);
  out->append(buf, static_cast<size_t>(len));
}

}  // namespace

// One event loop: an io_context, its thread, its listening socket and the
// sessions it serves. Everything but `mu_`-guarded state is confined to the
// loop's thread once it runs.
class Loop {
 public:
  explicit Loop(std::shared_ptr<const Config> config)
      : config_(std::move(config)), sweep_timer_(ioc_), retry_timer_(ioc_) {}

  asio::io_context& ioc() { return ioc_; }
  const Config& config() const { return *config_; }
  bool draining() const { return draining_; }

  // Opens the listening socket. Called before the thread starts.
  absl::Status Listen(const tcp::endpoint& endpoint) {
    error_code ec;
    acceptor_.emplace(ioc_);
    acceptor_->open(endpoint.protocol(), ec);
    if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      acceptor_->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true),
                            ec);
    }
    if (!ec) acceptor_->bind(endpoint, ec);
    if (!ec) acceptor_->listen(config_->options.backlog, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ",
                                                 endpoint.address().to_string(), ":",
                                                 endpoint.port(), ": ", ec.message()));
    }
    return absl::OkStatus();
  }

  void Run() {
    DoAccept();
    ArmSweep();
    for (;;) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "quell http: IO thread caught: %s\n", e.what());
      }
    }
  }
  // The Server owns the Loop and joins the thread before releasing it.
  void StartThread(int n) {
    thread_ = std::thread([this, n] {
      core::NameThisThread("quell-http-", n);
      Run();
    });
  }
  void SetSelf(const std::shared_ptr<Loop>& self) { self_ = self; }

  // Posted by Server::Shutdown: stop accepting and close idle connections.
  void BeginDrain();
  // Posted by Server::Shutdown after the grace period: close everything.
  void ForceClose();
  // Stops the loop's thread once it runs out of work, then flushes responses
  // posted meanwhile. After this, Responders no longer post.
  void Join() {
    work_.reset();
    if (thread_.joinable()) thread_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    ioc_.restart();
    ioc_.poll();
  }
  int live_sessions() const { return live_.load(std::memory_order_acquire); }

  void Register(Session* session);
  void Unregister(Session* session);

  // Hands `response` for `session` to the loop from another thread, unless it stopped.
  // Responses are queued and the loop is woken once per burst, not once per response:
  // the ledger's finisher thread answers a whole group commit at once, and each wake-up
  // of an idle loop costs the poster a syscall (epoll_ctl).
  void PostResponse(std::shared_ptr<Session> session, Response response) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    const bool wake = inbox_.empty();
    inbox_.emplace_back(std::move(session), std::move(response));
    if (wake) asio::post(ioc_, [this] { DrainResponses(); });
  }

 private:
  void DoAccept();
  void ArmSweep();
  void Sweep();
  void DrainResponses();
  std::vector<std::shared_ptr<Session>> Snapshot();

  const std::shared_ptr<const Config> config_;
  std::weak_ptr<Loop> self_;  // handed to sessions, which keep the loop alive

  // Declared before ioc_ so that sessions destroyed with the io_context's
  // pending handlers can still unregister.
  std::mutex mu_;
  std::vector<Session*> sessions_;  // guarded by mu_; order irrelevant
  bool closed_ = false;             // guarded by mu_
  using Inbox = std::vector<std::pair<std::shared_ptr<Session>, Response>>;
  Inbox inbox_;    // guarded by mu_: responses posted by other threads, not yet sent
  Inbox sending_;  // loop thread only: the batch being sent (its capacity is reused)
  std::atomic<int> live_{0};

  asio::io_context ioc_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_{ioc_.get_executor()};
  std::optional<tcp::acceptor> acceptor_;
  asio::steady_timer sweep_timer_;
  asio::steady_timer retry_timer_;
  bool draining_ = false;  // loop thread only
  bool stopping_ = false;  // loop thread only
  std::thread thread_;
};

// One client connection. Confined to its loop's thread, except that a
// Responder may hold (and, after the loop stopped, drop) a reference to it.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<Loop> loop, tcp::socket socket)
      : loop_(std::move(loop)),
        config_(loop_->config()),
        socket_(std::move(socket)),
        buffer_(config_.options.max_header_bytes + kBodyReadSize + kHeaderReadSize) {
    loop_->Register(this);
    error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    const tcp::endpoint peer = socket_.remote_endpoint(ec);
    if (!ec) remote_address_ = peer.address().to_string();
  }
  ~Session() { loop_->Unregister(this); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  Loop& loop() { return *loop_; }
  std::weak_ptr<Session> weak() { return weak_from_this(); }

  void Start() { StartRequest(); }

  // Called on the loop thread with the handler's answer.
  void OnResponse(Response response) {
    if (state_ != State::kHandling) return;  // closed meanwhile
    response_ = std::move(response);
    WriteResponse();
  }

  void OnDrain() {
    if (state_ == State::kIdle) Close();
  }
  void OnForceClose() { Close(); }

  void OnTick(Clock::time_point now) {
    if (now < deadline_) return;
    switch (state_) {
      case State::kReading:
        if (writing_continue_) {  // the client does not even read: just close
          Close();
          return;
        }
        // Slow or stalled request: answer 408 and close.
        {
          error_code ec;
          socket_.cancel(ec);
        }
        SendError(408, "request_timeout", "the request was not received in time");
        return;
      case State::kIdle:
      case State::kWriting:
      case State::kLingering:
        Close();
        return;
      case State::kHandling:
      case State::kClosed:
        return;
    }
  }

 private:
  enum class State { kIdle, kReading, kHandling, kWriting, kLingering, kClosed };

  // Prepares for the next request on this connection.
  void StartRequest() {
    request_ = Request();
    request_.remote_address = remote_address_;
    parser_.emplace(&request_);
    parser_->header_limit(static_cast<std::uint32_t>(config_.options.max_header_bytes));
    parser_->body_limit(static_cast<std::uint64_t>(config_.options.max_body_bytes));
    parser_->eager(true);
    sent_continue_ = false;
    if (buffer_.size() > 0) {  // pipelined
      state_ = State::kReading;
      deadline_ = Clock::now() + config_.read_timeout;
      Parse();
      return;
    }
    if (loop_->draining()) {
      Close();
      return;
    }
    state_ = State::kIdle;
    deadline_ = Clock::now() + config_.idle_timeout;
    DoRead();
  }

  void DoRead() {
    const size_t want = parser_->is_header_done() ? kBodyReadSize : kHeaderReadSize;
    asio::mutable_buffer space;
    try {
      space = buffer_.prepare(want);
    } catch (const std::length_error&) {
      SendError(431, "too_large", "request header too large");
      return;
    }
    socket_.async_read_some(space, [self = shared_from_this()](const error_code& ec, size_t n) {
      self->OnRead(ec, n);
    });
  }

  void OnRead(const error_code& ec, size_t n) {
    if (state_ != State::kIdle && state_ != State::kReading) return;  // timed out or closed
    if (ec) {  // EOF, reset, ...: nobody to answer
      Close();
      return;
    }
    buffer_.commit(n);
    if (state_ == State::kIdle) {
      state_ = State::kReading;
      deadline_ = Clock::now() + config_.read_timeout;
    }
    Parse();
  }

  // Feeds buffered bytes to the parser; dispatches, reads more, or fails.
  void Parse() {
    error_code ec;
    while (buffer_.size() > 0 && !parser_->is_done()) {
      const size_t used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == bhttp::error::need_more) {
        ec = {};
        break;
      }
      if (ec) {
        FailParse(ec);
        return;
      }
      if (used == 0) break;
    }
    if (parser_->is_done()) {
      Dispatch();
      return;
    }
    if (parser_->is_header_done() && parser_->expect_continue() && !sent_continue_) {
      sent_continue_ = true;
      if (buffer_.size() == 0) {  // the client waits for our go-ahead
        writing_continue_ = true;
        asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                          [self = shared_from_this()](const error_code& ec, size_t) {
                            self->writing_continue_ = false;
                            if (self->state_ != State::kReading) return;
                            if (ec) {
                              self->Close();
                              return;
                            }
                            self->DoRead();
                          });
        return;
      }
    }
    DoRead();
  }

  void FailParse(const error_code& ec) {
    if (ec == bhttp::error::header_limit) {
      SendError(
          431, "too_large",
          absl::StrCat("request header exceeds ", config_.options.max_header_bytes, " bytes"));
    } else if (ec == bhttp::error::body_limit) {
      SendError(413, "too_large",
                absl::StrCat("request body exceeds ", config_.options.max_body_bytes, " bytes"));
    } else {
      SendError(400, "invalid_argument", absl::StrCat("malformed HTTP request: ", ec.message()));
    }
  }

  // Answers a request we could not read, then closes. Like every reply it carries an
  // X-Request-Id: the client's when the headers were read and it is a sane one.
  void SendError(int status, std::string_view code, std::string_view message) {
    keep_alive_ = false;
    head_request_ = false;
    version_ = 11;
    response_ = ErrorResponse(status, code, message);
    const std::string_view incoming = request_.Header("x-request-id");
    const std::string request_id =
        obs::IsSaneRequestId(incoming) ? std::string(incoming) : obs::NewRequestId();
    response_.headers.emplace_back("X-Request-Id", request_id);
    config_.handler->OnRefused(
        Refusal{status, request_.method, request_id, request_.remote_address, message});
    WriteResponse();
  }

  void Dispatch() {
    state_ = State::kHandling;
    deadline_ = kNever;
    keep_alive_ = parser_->keep_alive();
    version_ = request_.version;
    head_request_ = request_.method == "HEAD";
    parser_.reset();
    SplitTarget(&request_);
    try {
      config_.handler->Handle(std::move(request_), Responder(shared_from_this()));
    } catch (const std::exception& e) {
      // The Responder argument has been destroyed and answers 500.
      std::fprintf(stderr, "quell http: handler threw: %s\n", e.what());
    }
  }

  void WriteResponse() {
    state_ = State::kWriting;
    deadline_ = Clock::now() + config_.write_timeout;
    if (loop_->draining()) keep_alive_ = false;
    const int status = response_.status;
    const bool no_body =
        head_request_ || status == 204 || status == 304 || (status >= 100 && status < 200);
    streaming_ = response_.stream != nullptr && !no_body;
    empty_polls_ = 0;
    chunked_ = streaming_ && version_ >= 11;
    if (streaming_ && !chunked_) keep_alive_ = false;  // HTTP/1.0: the end is the close

    head_.clear();
    head_.append("HTTP/1.1 ");
    absl::StrAppend(&head_, status);
    head_.push_back(' ');
    head_.append(ReasonPhrase(status));
    head_.append(kCrlf);
    if (!response_.content_type.empty() && !HasCrLf(response_.content_type)) {
      head_.append("Content-Type: ");
      head_.append(response_.content_type);
      head_.append(kCrlf);
    }
    for (const auto& [name, value] : response_.headers) {
      if (name.empty() || HasCrLf(name) || HasCrLf(value) || name.find(':') != std::string::npos ||
          IsReservedHeader(name)) {
        continue;
      }
      head_.append(name);
      head_.append(": ");
      head_.append(value);
      head_.append(kCrlf);
    }
    if (chunked_) {
      head_.append("Transfer-Encoding: chunked\r\n");
    } else if (!streaming_ && status != 204 && status != 304 && status >= 200) {
      head_.append("Content-Length: ");
      absl::StrAppend(&head_, response_.body.size());
      head_.append(kCrlf);
    }
    head_.append(keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");

    if (streaming_) {
      WriteStreamBatch();
      return;
    }
    bufs_[0] = asio::buffer(head_);
    bufs_[1] = no_body ? asio::const_buffer() : asio::buffer(response_.body);
    bufs_[2] = asio::const_buffer();
    StartWrite();
  }

  // Pulls up to kStreamBatchBytes from the stream and writes them (after
  // whatever head_ already holds).
  void WriteStreamBatch() {
    chunk_.clear();
    bool more = true;
    try {
      while (more && chunk_.size() < kStreamBatchBytes) {
        const size_t before = chunk_.size();
        more = response_.stream(&chunk_);
        if (chunk_.size() == before) break;  // nothing now; write what we have
      }
    } catch (const std::exception& e) {
      // Mid-body there is no way to report an error but to cut the connection.
      std::fprintf(stderr, "quell http: stream threw: %s\n", e.what());
      Close();
      return;
    }
    stream_more_ = more;
    if (chunk_.empty() && more && head_.empty()) {
      // Nothing to send yet. Yield to other connections and ask again: at once for the
      // first few tries, then after a timer that doubles up to kStreamMaxBackoff, so a
      // slow producer (a snapshot scanning the store) does not have this loop's thread
      // spinning on a core the producer needs.
      if (empty_polls_ < kStreamSpinPolls) {
        ++empty_polls_;
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
          if (self->state_ == State::kWriting) self->WriteStreamBatch();
        });
        return;
      }
      if (!stream_timer_)
        stream_timer_ = std::make_unique<asio::steady_timer>(socket_.get_executor());
      const int doublings = std::min(empty_polls_++ - kStreamSpinPolls, 10);
      stream_timer_->expires_after(
          std::min(kStreamMinBackoff * (1 << doublings), kStreamMaxBackoff));
      stream_timer_->async_wait([self = shared_from_this()](const error_code& ec) {
        if (!ec && self->state_ == State::kWriting) self->WriteStreamBatch();
      });
      return;
    }
    empty_polls_ = 0;
    std::string_view tail;
    if (chunked_) {
      if (!chunk_.empty()) {
        AppendHex(chunk_.size(), &head_);
        head_.append(kCrlf);
        tail = more ? kCrlf : kCrlfLastChunk;
      } else if (!more) {
        head_.append(kLastChunk);
      }
    }
    bufs_[0] = asio::buffer(head_);
    bufs_[1] = asio::buffer(chunk_);
    bufs_[2] = asio::buffer(tail.data(), tail.size());
    StartWrite();
  }

  void StartWrite() {
    asio::async_write(socket_, bufs_, [self = shared_from_this()](const error_code& ec, size_t) {
      self->OnWrite(ec);
    });
  }

  void OnWrite(const error_code& ec) {
    if (state_ != State::kWriting) return;
    if (ec) {
      Close();
      return;
    }
    if (streaming_ && stream_more_) {
      head_.clear();
      deadline_ = Clock::now() + config_.write_timeout;
      WriteStreamBatch();
      return;
    }
    // Release the handler's objects now, on this thread.
    response_.stream = nullptr;
    response_.body.clear();
    response_.headers.clear();
    if (!keep_alive_) {
      Linger();
      return;
    }
    StartRequest();
  }

  // Half-closes and drains what the client still sends, so that closing with
  // unread input does not reset the connection before it read our answer.
  void Linger() {
    state_ = State::kLingering;
    deadline_ = Clock::now() + std::min(kMaxLinger, config_.read_timeout);
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    // While shutting down, do not hold Shutdown() for clients that are slow to
    // close: the answer is already sent.
    if (ec || loop_->draining()) {
      Close();
      return;
    }
    buffer_.clear();
    DoLingerRead();
  }
  void DoLingerRead() {
    socket_.async_read_some(buffer_.prepare(kHeaderReadSize),
                            [self = shared_from_this()](const error_code& ec, size_t n) {
                              if (self->state_ != State::kLingering) return;
                              self->lingered_ += n;
                              if (ec || self->lingered_ > kMaxLingerBytes) {
                                self->Close();
                                return;
                              }
                              self->DoLingerRead();
                            });
  }

  void Close() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    deadline_ = kNever;
    error_code ec;
    socket_.close(ec);
    if (stream_timer_) stream_timer_->cancel();
    response_.stream = nullptr;
  }

  const std::shared_ptr<Loop> loop_;
  const Config& config_;  // owned by loop_
  tcp::socket socket_;
  beast::flat_buffer buffer_;  // received, not yet parsed
  std::string remote_address_;
  State state_ = State::kIdle;
  Clock::time_point deadline_ = kNever;

  // The request being read.
  Request request_;
  std::optional<RequestParser> parser_;
  bool sent_continue_ = false;
  bool writing_continue_ = false;  // "100 Continue" in flight

  // The response being written.
  bool keep_alive_ = true;
  bool head_request_ = false;
  int version_ = 11;
  bool streaming_ = false;
  bool chunked_ = false;
  bool stream_more_ = false;
  Response response_;
  std::string head_;     // status line + headers, or a chunk-size line
  std::string chunk_;    // one batch of a streamed body
  int empty_polls_ = 0;  // consecutive polls of the stream that found nothing
  std::unique_ptr<asio::steady_timer> stream_timer_;  // made on the first wait
  std::array<asio::const_buffer, 3> bufs_;
  size_t lingered_ = 0;
};

void Loop::Register(Session* session) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.push_back(session);
  live_.fetch_add(1, std::memory_order_release);
}

void Loop::Unregister(Session* session) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(sessions_.begin(), sessions_.end(), session);
  if (it != sessions_.end()) {
    *it = sessions_.back();
    sessions_.pop_back();
  }
  live_.fetch_sub(1, std::memory_order_release);
}

std::vector<std::shared_ptr<Session>> Loop::Snapshot() {
  std::vector<std::shared_ptr<Session>> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.reserve(sessions_.size());
  for (Session* session : sessions_) {
    if (auto strong = session->weak().lock()) out.push_back(std::move(strong));
  }
  return out;
}

void Loop::DrainResponses() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    sending_.swap(inbox_);
  }
  for (auto& [session, response] : sending_) session->OnResponse(std::move(response));
  sending_.clear();
}

void Loop::DoAccept() {
  if (!acceptor_ || !acceptor_->is_open() || draining_) return;
  acceptor_->async_accept([this](const error_code& ec, tcp::socket socket) {
    if (draining_ || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors or memory: back off instead of spinning.
      if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space ||
          ec == asio::error::no_memory) {
        retry_timer_.expires_after(std::chrono::milliseconds(50));
        retry_timer_.async_wait([this](const error_code& wait_ec) {
          if (!wait_ec) DoAccept();
        });
        return;
      }
      DoAccept();
      return;
    }
    // The Session keeps the loop alive; the loop's thread holds it too.
    std::shared_ptr<Loop> self = self_.lock();
    if (self) std::make_shared<Session>(std::move(self), std::move(socket))->Start();
    DoAccept();
  });
}

void Loop::ArmSweep() {
  if (stopping_) return;
  sweep_timer_.expires_after(config_->tick);
  sweep_timer_.async_wait([this](const error_code& ec) {
    if (ec || stopping_) return;
    Sweep();
    ArmSweep();
  });
}

void Loop::Sweep() {
  const Clock::time_point now = Clock::now();
  for (const auto& session : Snapshot()) session->OnTick(now);
}

void Loop::BeginDrain() {
  draining_ = true;
  error_code ec;
  if (acceptor_) acceptor_->close(ec);
  retry_timer_.cancel();
  for (const auto& session : Snapshot()) session->OnDrain();
}

void Loop::ForceClose() {
  draining_ = true;
  stopping_ = true;
  error_code ec;
  if (acceptor_) acceptor_->close(ec);
  retry_timer_.cancel();
  sweep_timer_.cancel();
  for (const auto& session : Snapshot()) session->OnForceClose();
}

}  // namespace internal

// --- Responder ---------------------------------------------------------------

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    if (session_) std::move (*this)(ErrorResponse(500, "internal", "the handler did not answer"));
    session_ = std::move(other.session_);
  }
  return *this;
}

Responder::~Responder() {
  if (!session_) return;
  // Never re-enter the session from a destructor: always post.
  std::shared_ptr<internal::Session> session = std::move(session_);
  internal::Loop& loop = session->loop();
  loop.PostResponse(std::move(session),
                    ErrorResponse(500, "internal", "the handler did not answer"));
}

void Responder::operator()(Response response) && {
  if (!session_) return;
  std::shared_ptr<internal::Session> session = std::move(session_);
  internal::Loop& loop = session->loop();
  if (loop.ioc().get_executor().running_in_this_thread()) {
    session->OnResponse(std::move(response));
    return;
  }
  loop.PostResponse(std::move(session), std::move(response));
}

// --- Server ------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      Handler* handler) {
  if (handler == nullptr) return absl::InvalidArgumentError("http: handler is null");
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("http: bad port ", options.port));
  }
  if (options.threads < 0) return absl::InvalidArgumentError("http: threads must be >= 0");
  if (options.max_header_bytes < 64 || options.max_header_bytes > (1u << 30)) {
    return absl::InvalidArgumentError("http: max_header_bytes must be in [64, 1 GiB]");
  }
  if (options.read_timeout <= absl::ZeroDuration() ||
      options.idle_timeout <= absl::ZeroDuration() ||
      options.write_timeout <= absl::ZeroDuration() ||
      options.shutdown_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("http: timeouts must be positive");
  }
  if (options.backlog <= 0) return absl::InvalidArgumentError("http: backlog must be positive");

  auto config = std::make_shared<internal::Config>();
  config->options = options;
  config->handler = handler;
  config->read_timeout = internal::ToClock(options.read_timeout);
  config->idle_timeout = internal::ToClock(options.idle_timeout);
  config->write_timeout = internal::ToClock(options.write_timeout);
  const Clock::duration shortest =
      std::min({config->read_timeout, config->idle_timeout, config->write_timeout});
  config->tick = std::clamp<Clock::duration>(shortest / 4, std::chrono::milliseconds(5),
                                             std::chrono::milliseconds(250));

  // Resolve the host once.
  error_code ec;
  asio::ip::address address = asio::ip::make_address(options.host, ec);
  if (ec) {
    asio::io_context resolver_ioc;
    tcp::resolver resolver(resolver_ioc);
    auto results = resolver.resolve(options.host, "", tcp::resolver::passive, ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("http: cannot resolve host '", options.host, "': ", ec.message()));
    }
    address = results.begin()->endpoint().address();
  }

  int threads = options.threads;
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  // Probe with a plain socket first: every SO_REUSEPORT socket of this user
  // could share the port, so without this a second server would silently join a
  // running one instead of failing. With port 0 the probe also picks the port.
  int port = options.port;
  {
    asio::io_context probe_ioc;
    tcp::acceptor probe(probe_ioc);
    const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
    probe.open(endpoint.protocol(), ec);
    if (!ec) probe.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) probe.bind(endpoint, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("http: cannot bind ", options.host, ":", port, ": ", ec.message()));
    }
    port = probe.local_endpoint(ec).port();
  }

  std::unique_ptr<Server> server(new Server());
  server->options_ = options;
  for (int i = 0; i < threads; ++i) {
    auto loop = std::make_shared<internal::Loop>(config);
    loop->SetSelf(loop);
    absl::Status status = loop->Listen(tcp::endpoint(address, static_cast<unsigned short>(port)));
    if (!status.ok()) {
      // Loops without threads: nothing to join; their sockets close here.
      return status;
    }
    server->loops_.push_back(std::move(loop));
  }
  server->port_ = port;
  try {
    for (size_t i = 0; i < server->loops_.size(); ++i) {
      server->loops_[i]->StartThread(static_cast<int>(i));
    }
  } catch (const std::system_error& e) {
    server->Shutdown();
    return absl::UnavailableError(absl::StrCat("http: cannot start threads: ", e.what()));
  }
  return server;
}

Server::~Server() { Shutdown(); }

void Server::Shutdown() {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& loop : loops_) {
    asio::post(loop->ioc(), [loop = loop.get()] { loop->BeginDrain(); });
  }
  const auto deadline = Clock::now() + internal::ToClock(options_.shutdown_grace);
  for (;;) {
    int live = 0;
    for (auto& loop : loops_) live += loop->live_sessions();
    if (live == 0 || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& loop : loops_) {
    asio::post(loop->ioc(), [loop = loop.get()] { loop->ForceClose(); });
  }
  for (auto& loop : loops_) loop->Join();
}

}  // namespace quell::http
