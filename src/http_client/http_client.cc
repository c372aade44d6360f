#include "http_client/http_client.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/net.h"
#include "core/strings.h"

namespace quell::http_client {

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if (std::isalnum(b) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[b >> 4];
      out += kHex[b & 15];
    }
  }
  return out;
}

absl::StatusOr<Url> ParseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    const bool tls = url.substr(0, 8) == "https://";
    return absl::InvalidArgumentError(
        absl::StrCat("must be an http:// URL (got \"", AV(url), "\"",
                     tls ? "; TLS is not supported: reach the server over plain HTTP" : "", ")"));
  }
  url.remove_prefix(kScheme.size());
  if (url.find_first_of("?#") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        "a server URL takes no query or fragment: http://host[:port][/prefix]");
  }
  Url u;
  const size_t end = url.find('/');
  std::string_view hostport = url.substr(0, end);
  if (end != std::string_view::npos) {
    u.prefix = std::string(url.substr(end));
    while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  }
  // Credentials in the URL are not sent (the key is), and echoing them in an error would
  // print a password: refused without repeating them.
  if (hostport.find('@') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        "a server URL takes no user or password (http://user:pass@...): authenticate with "
        "--key");
  }
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return absl::InvalidArgumentError("bad IPv6 address");
    u.host = std::string(hostport.substr(1, close - 1));
    hostport.remove_prefix(close + 1);
    if (!hostport.empty()) {
      if (hostport[0] != ':' || !absl::SimpleAtoi(AV(hostport.substr(1)), &u.port)) {
        return absl::InvalidArgumentError("bad port");
      }
    }
  } else {
    size_t colon = hostport.rfind(':');
    u.host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos &&
        !absl::SimpleAtoi(AV(hostport.substr(colon + 1)), &u.port)) {
      return absl::InvalidArgumentError("bad port");
    }
  }
  if (u.host.empty() || u.port <= 0 || u.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad URL \"http://", AV(url), "\""));
  }
  return u;
}

HttpConnection::~HttpConnection() { Close(); }

void HttpConnection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  in_.clear();
}

absl::Status HttpConnection::Connect() {
  // Resolution and connect within 30 s, and within the request's time. The socket stays
  // non-blocking: every read and write waits in Wait, which keeps the deadline and the
  // cancel flag.
  absl::StatusOr<int> fd = core::ConnectTcp(
      url_.host, url_.port, std::min(deadline_, absl::Now() + absl::Seconds(30)), cancel_);
  if (!fd.ok()) {  // a cancel stays one (the caller stops, it does not retry)
    return absl::Status(
        absl::IsCancelled(fd.status()) ? absl::StatusCode::kCancelled
                                       : absl::StatusCode::kUnavailable,
        absl::StrCat("cannot connect to ", url_.host, ":", url_.port, ": ", fd.status().message()));
  }
  const int flags = ::fcntl(*fd, F_GETFL);
  if (flags < 0 || ::fcntl(*fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(*fd);
    return absl::UnavailableError(absl::StrCat("fcntl: ", std::strerror(err)));
  }
  int one = 1;
  setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fd_ = *fd;
  return absl::OkStatus();
}

absl::Status HttpConnection::Wait(short events) {
  for (;;) {
    const absl::Time now = absl::Now();
    if (now >= deadline_) {
      return absl::UnavailableError(absl::StrCat("no reply from ", url_.host, ":", url_.port,
                                                 " within ", absl::FormatDuration(timeout_)));
    }
    if (cancel_ != nullptr && cancel_->load()) {
      if (cancel_seen_ == absl::InfiniteFuture()) cancel_seen_ = now;
      if (now - cancel_seen_ >= cancel_grace_) {
        return absl::CancelledError("interrupted while waiting for the server's reply");
      }
    }
    // Short slices, so that a cancel is seen soon. Ready (or in error: the next call
    // reports it) or a failed poll ends the wait; a slice that ran out goes round.
    absl::Status ready =
        core::WaitFd(fd_, events, std::min(deadline_, now + absl::Milliseconds(200)));
    if (!absl::IsDeadlineExceeded(ready)) return ready;
  }
}

absl::Status HttpConnection::ReadMore() {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      in_.append(buf, static_cast<size_t>(n));
      return absl::OkStatus();
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (auto s = Wait(POLLIN); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(n == 0 ? "the server closed the connection"
                                         : absl::StrCat("read error: ", std::strerror(errno)));
  }
}

absl::StatusOr<HttpResponse> HttpConnection::Request(
    std::string_view method, std::string_view path,
    const std::vector<std::pair<std::string, std::string>>& headers, std::string_view body,
    absl::Duration timeout) {
  timeout_ = timeout;
  deadline_ = absl::Now() + timeout;
  cancel_seen_ = absl::InfiniteFuture();
  bool fresh = fd_ < 0;
  if (fresh) {
    if (auto s = Connect(); !s.ok()) return s;
  }
  std::string head =
      absl::StrCat(AV(method), " ", url_.prefix, AV(path), " HTTP/1.1\r\nHost: ", url_.host, ":",
                   url_.port, "\r\nContent-Length: ", body.size(), "\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&head, k, ": ", v, "\r\n");
  head += "\r\n";
  auto fail = [this](absl::Status s) {
    Close();
    return s;
  };
  for (std::string_view part : {std::string_view(head), body}) {
    while (!part.empty()) {
      ssize_t n = ::send(fd_, part.data(), part.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (auto s = Wait(POLLOUT); !s.ok()) return fail(s);
        continue;
      }
      if (n <= 0)
        return fail(absl::UnavailableError(absl::StrCat("write error: ", std::strerror(errno))));
      part.remove_prefix(static_cast<size_t>(n));
    }
  }
  size_t end;
  while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
    if (auto s = ReadMore(); !s.ok()) return fail(s);
  }
  HttpResponse r;
  std::string_view h(in_.data(), end);
  size_t sp = h.find(' ');
  if (sp == std::string_view::npos || !absl::SimpleAtoi(AV(h.substr(sp + 1, 3)), &r.status)) {
    return fail(absl::UnavailableError("malformed HTTP status line"));
  }
  int64_t length = -1;
  bool chunked = false;
  // An HTTP/1.0 reply closes the connection unless it says keep-alive.
  const bool http10 = h.substr(0, sp) == "HTTP/1.0";
  bool close = http10;
  size_t line_start = h.find("\r\n");
  while (line_start != std::string_view::npos && line_start < h.size()) {
    line_start += 2;
    size_t line_end = h.find("\r\n", line_start);
    std::string_view line =
        h.substr(line_start, line_end == std::string_view::npos ? h.npos : line_end - line_start);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      std::string name = absl::AsciiStrToLower(AV(line.substr(0, colon)));
      std::string value(absl::StripAsciiWhitespace(AV(line.substr(colon + 1))));
      if (name == "content-length") {
        absl::SimpleAtoi(value, &length);
      } else if (name == "transfer-encoding") {
        chunked = absl::AsciiStrToLower(value).find("chunked") != std::string::npos;
      } else if (name == "connection") {
        const std::string v = absl::AsciiStrToLower(value);
        close = v == "close" || (http10 && v != "keep-alive");
      } else if (name == "retry-after") {
        r.retry_after = value;
      }
    }
    line_start = line_end;
  }
  in_.erase(0, end + 4);
  if (chunked) {
    for (;;) {
      size_t eol;
      while ((eol = in_.find("\r\n")) == std::string::npos) {
        if (auto s = ReadMore(); !s.ok()) return fail(s);
      }
      size_t size = std::strtoul(in_.substr(0, eol).c_str(), nullptr, 16);
      while (in_.size() < eol + 2 + size + 2) {
        if (auto s = ReadMore(); !s.ok()) return fail(s);
      }
      r.body.append(in_, eol + 2, size);
      in_.erase(0, eol + 2 + size + 2);
      if (size == 0) break;  // (trailers are not expected)
    }
  } else if (length >= 0) {
    while (in_.size() < static_cast<size_t>(length)) {
      if (auto s = ReadMore(); !s.ok()) return fail(s);
    }
    r.body = in_.substr(0, static_cast<size_t>(length));
    in_.erase(0, static_cast<size_t>(length));
  } else {
    // Body up to the end of the connection.
    while (ReadMore().ok()) {
    }
    r.body = std::move(in_);
    close = true;
  }
  if (close) Close();
  return r;
}

}  // namespace quell::http_client
