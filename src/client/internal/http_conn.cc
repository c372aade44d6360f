#include "client/internal/http_conn.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/net.h"
#include "core/status.h"
#include "core/strings.h"

namespace quell::client::internal {
namespace {

// Waits until fd is ready for `events`; kUnavailable on timeout.
absl::Status WaitFor(int fd, short events, absl::Duration timeout) {
  absl::Status s = core::WaitFd(fd, events, absl::Now() + std::max(timeout, absl::ZeroDuration()));
  if (absl::IsDeadlineExceeded(s)) return absl::UnavailableError("timed out");
  return s;
}

}  // namespace

absl::StatusOr<Endpoint> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return absl::InvalidArgumentError(absl::StrCat("url must start with http://: ", AV(url)));
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  Endpoint e;
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || !absl::SimpleAtoi(AV(rest.substr(colon + 1)), &e.port) ||
      e.port <= 0 || e.port > 65535 || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("url must be http://HOST:PORT: ", AV(url)));
  }
  std::string_view host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  e.host = std::string(host);
  return e;
}

HttpConn::~HttpConn() { Close(); }

void HttpConn::Abort() {
  aborted_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  // shutdown (not close) so a thread blocked in poll/recv on fd_ wakes up; the owner closes.
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void HttpConn::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  pos_ = 0;
  end_ = 0;
}

absl::Status HttpConn::Connect(absl::Duration timeout) {
  absl::StatusOr<int> fd = core::ConnectTcp(endpoint_.host, endpoint_.port, absl::Now() + timeout);
  if (!fd.ok()) {  // a timeout too: kUnavailable, as this class reports every wait's
    return absl::UnavailableError(fd.status().message());
  }
  int one = 1;
  ::setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::lock_guard<std::mutex> lock(mu_);
  fd_ = *fd;
  if (aborted_.load()) return absl::CancelledError("aborted");
  return absl::OkStatus();
}

absl::Status HttpConn::SendAll(std::string_view data, absl::Duration timeout) {
  while (!data.empty()) {
    ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      QUELL_RETURN_IF_ERROR(WaitFor(fd_, POLLOUT, timeout));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status HttpConn::Fill(absl::Duration timeout) {
  // Received bytes land in place (no copy through a stack buffer: a snapshot is 100+ MB).
  constexpr size_t kMinRead = 64 * 1024;
  if (pos_ == end_) {
    pos_ = end_ = 0;
  } else if (pos_ > 0 && buf_.size() - end_ < kMinRead) {
    std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
    end_ -= pos_;
    pos_ = 0;
  }
  if (buf_.size() - end_ < kMinRead) buf_.resize(std::max(4 * kMinRead, 2 * buf_.size()));
  while (true) {
    if (aborted_.load()) return absl::CancelledError("aborted");
    ssize_t n = ::recv(fd_, buf_.data() + end_, buf_.size() - end_, 0);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      return absl::OkStatus();
    }
    if (n == 0) {
      if (aborted_.load()) return absl::CancelledError("aborted");
      return absl::UnavailableError("connection closed by the server");
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      QUELL_RETURN_IF_ERROR(WaitFor(fd_, POLLIN, timeout));
      continue;
    }
    if (errno == EINTR) continue;
    return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  }
}

absl::StatusOr<std::string> HttpConn::ReadLine(absl::Duration timeout) {
  while (true) {
    const std::string_view data(buf_.data(), end_);
    size_t nl = data.find("\r\n", pos_);
    if (nl != std::string_view::npos) {
      std::string line(data.substr(pos_, nl - pos_));
      pos_ = nl + 2;
      return line;
    }
    if (end_ - pos_ > 64 * 1024) return absl::DataLossError("header line too long");
    QUELL_RETURN_IF_ERROR(Fill(timeout));
  }
}

absl::Status HttpConn::ReadBody(size_t length, absl::Duration timeout, const BodyFn& body) {
  while (length > 0) {
    if (pos_ == end_) QUELL_RETURN_IF_ERROR(Fill(timeout));
    size_t n = std::min(length, end_ - pos_);
    std::string_view piece(buf_.data() + pos_, n);
    pos_ += n;
    length -= n;
    QUELL_RETURN_IF_ERROR(body(piece));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> HttpConn::Request(std::string_view method, std::string_view target,
                                      std::string_view authorization, std::string_view request_body,
                                      absl::Duration timeout, const BodyFn& body) {
  if (aborted_.load()) return absl::CancelledError("aborted");
  bool reused = fd_ >= 0;
  if (!reused) QUELL_RETURN_IF_ERROR(Connect(timeout));
  std::string req = absl::StrCat(AV(method), " ", AV(target), " HTTP/1.1\r\nHost: ", endpoint_.host,
                                 ":", endpoint_.port, "\r\n");
  if (!authorization.empty()) absl::StrAppend(&req, "Authorization: ", AV(authorization), "\r\n");
  if (!request_body.empty() || method != "GET") {
    absl::StrAppend(&req, "Content-Type: application/json\r\nContent-Length: ", request_body.size(),
                    "\r\n");
  }
  req += "\r\n";
  req.append(request_body);
  absl::Status s = SendAll(req, timeout);
  auto status_line = s.ok() ? ReadLine(timeout) : absl::StatusOr<std::string>(s);
  if (!status_line.ok() && reused && method == "GET" && !aborted_.load()) {
    // The server may have closed an idle keep-alive connection: retry once on a new one.
    Close();
    QUELL_RETURN_IF_ERROR(Connect(timeout));
    QUELL_RETURN_IF_ERROR(SendAll(req, timeout));
    status_line = ReadLine(timeout);
  }
  auto fail = [this](absl::Status st) {
    Close();
    return st;
  };
  if (!status_line.ok()) return fail(status_line.status());
  // "HTTP/1.1 200 OK"
  int code = 0;
  if (status_line->size() < 12 || status_line->compare(0, 5, "HTTP/") != 0 ||
      !absl::SimpleAtoi(AV(std::string_view(*status_line).substr(9, 3)), &code)) {
    return fail(absl::DataLossError(absl::StrCat("bad status line: ", *status_line)));
  }
  status_code_ = code;
  bool chunked = false, close = status_line->compare(0, 8, "HTTP/1.0") == 0;
  std::optional<size_t> length;
  while (true) {
    auto line = ReadLine(timeout);
    if (!line.ok()) return fail(line.status());
    if (line->empty()) break;
    size_t colon = line->find(':');
    if (colon == std::string::npos) continue;
    std::string name = absl::AsciiStrToLower(AV(std::string_view(*line).substr(0, colon)));
    std::string value(absl::StripAsciiWhitespace(AV(std::string_view(*line).substr(colon + 1))));
    absl::AsciiStrToLower(&value);
    if (name == "content-length") {
      size_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) return fail(absl::DataLossError("bad Content-Length"));
      length = n;
    } else if (name == "transfer-encoding") {
      chunked = value.find("chunked") != std::string::npos;
    } else if (name == "connection") {
      if (value.find("close") != std::string::npos) close = true;
      if (value.find("keep-alive") != std::string::npos) close = false;
    }
  }
  absl::Status read;
  if (chunked) {
    while (read.ok()) {
      auto size_line = ReadLine(timeout);
      if (!size_line.ok()) return fail(size_line.status());
      size_t n = 0;
      std::string_view hex = *size_line;
      if (size_t semi = hex.find(';'); semi != std::string_view::npos) hex = hex.substr(0, semi);
      if (!absl::SimpleHexAtoi(AV(hex), &n)) return fail(absl::DataLossError("bad chunk size"));
      if (n == 0) {
        // Trailers, then the empty line.
        while (true) {
          auto t = ReadLine(timeout);
          if (!t.ok()) return fail(t.status());
          if (t->empty()) break;
        }
        break;
      }
      read = ReadBody(n, timeout, body);
      if (read.ok()) {
        auto crlf = ReadLine(timeout);
        if (!crlf.ok()) return fail(crlf.status());
      }
    }
  } else if (length.has_value()) {
    read = ReadBody(*length, timeout, body);
  } else {
    // No length: the body ends when the server closes.
    close = true;
    while (read.ok()) {
      if (pos_ < end_) {
        std::string_view piece(buf_.data() + pos_, end_ - pos_);
        pos_ = end_;
        read = body(piece);
        continue;
      }
      absl::Status f = Fill(timeout);
      if (!f.ok()) {
        if (absl::IsUnavailable(f) && !aborted_.load()) break;  // EOF ends the body
        read = f;
      }
    }
  }
  if (!read.ok()) return fail(read);
  if (close) Close();
  return code;
}

}  // namespace quell::client::internal
