#include "obs/internal/http_client.h"

#include <fcntl.h>
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
#include "core/strings.h"

namespace quell::obs::internal {
namespace {

constexpr std::size_t kMaxReplyBytes = 64 << 10;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status SendAll(int fd, std::string_view data, absl::Time deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (absl::Status s = core::WaitFd(fd, POLLOUT, deadline, "sending"); !s.ok()) return s;
      continue;
    }
    return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Parses "HTTP/1.x NNN ..." and the Content-Length of a complete header block.
absl::Status ParseHead(std::string_view head, int* status, std::optional<std::size_t>* length) {
  const std::size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || line[8] != ' ') {
    return absl::UnavailableError("malformed HTTP status line");
  }
  if (!absl::SimpleAtoi(AV(line.substr(9, 3)), status) || *status < 100 || *status > 999) {
    return absl::UnavailableError("malformed HTTP status code");
  }
  std::size_t pos = eol + 2;
  while (pos < head.size()) {
    std::size_t end = head.find("\r\n", pos);
    if (end == std::string_view::npos) end = head.size();
    std::string_view h = head.substr(pos, end - pos);
    pos = end + 2;
    const std::size_t colon = h.find(':');
    if (colon == std::string_view::npos) continue;
    if (absl::AsciiStrToLower(AV(h.substr(0, colon))) != "content-length") continue;
    std::size_t n = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(AV(h.substr(colon + 1))), &n)) {
      return absl::UnavailableError("malformed Content-Length");
    }
    *length = n;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.size() < kScheme.size() ||
      absl::AsciiStrToLower(AV(url.substr(0, kScheme.size()))) != kScheme) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint \"", AV(url), "\": only http:// URLs are supported"));
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("endpoint: spaces and control characters not allowed");
    }
  }
  std::string_view rest = url.substr(kScheme.size());
  const std::size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  HttpUrl out;
  if (slash != std::string_view::npos) {
    out.path = rest[slash] == '?' ? absl::StrCat("/", AV(rest.substr(slash)))
                                  : std::string(rest.substr(slash));
  }
  if (authority.find('@') != std::string_view::npos) {
    return absl::InvalidArgumentError("endpoint: userinfo is not supported");
  }
  std::string_view port;
  if (!authority.empty() && authority[0] == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return absl::InvalidArgumentError("endpoint: bad IPv6 host");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return absl::InvalidArgumentError("endpoint: bad host");
      port = after.substr(1);
      if (port.empty()) return absl::InvalidArgumentError("endpoint: empty port");
    }
  } else {
    const std::size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return absl::InvalidArgumentError("endpoint: empty port");
    }
  }
  if (out.host.empty()) return absl::InvalidArgumentError("endpoint: empty host");
  if (!port.empty() &&
      (!absl::SimpleAtoi(AV(port), &out.port) || out.port < 1 || out.port > 65535)) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint: bad port \"", AV(port), "\""));
  }
  return out;
}

absl::StatusOr<HttpResponse> HttpPost(const HttpUrl& url, std::string_view content_type,
                                      std::string_view body, absl::Duration connect_timeout,
                                      absl::Duration request_timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + request_timeout;
  const absl::Time connect_deadline = std::min(deadline, start + connect_timeout);
  absl::StatusOr<int> connected = core::ConnectTcp(url.host, url.port, connect_deadline);
  if (!connected.ok()) return connected.status();
  Fd fd(*connected);

  const bool v6 = url.host.find(':') != std::string::npos;
  std::string head = absl::StrCat(
      "POST ", url.path, " HTTP/1.1\r\nHost: ", v6 ? "[" : "", url.host, v6 ? "]" : "", ":",
      url.port, "\r\nContent-Type: ", AV(content_type), "\r\nContent-Length: ", body.size(),
      "\r\nConnection: close\r\nUser-Agent: quell\r\n\r\n");
  if (absl::Status s = SendAll(fd.get(), head, deadline); !s.ok()) return s;
  if (absl::Status s = SendAll(fd.get(), body, deadline); !s.ok()) return s;

  std::string reply;
  std::size_t head_end = std::string::npos;
  HttpResponse out;
  std::optional<std::size_t> length;
  char buf[8192];
  for (;;) {
    if (head_end != std::string::npos) {
      const std::size_t have = reply.size() - head_end;
      if (length && have >= std::min(*length, kMaxReplyBytes)) break;
    }
    if (reply.size() > kMaxReplyBytes + 16384) break;
    const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      reply.append(buf, static_cast<std::size_t>(n));
      if (head_end == std::string::npos) {
        const std::size_t e = reply.find("\r\n\r\n");
        if (e != std::string::npos) {
          head_end = e + 4;
          if (absl::Status s =
                  ParseHead(std::string_view(reply).substr(0, e + 2), &out.status, &length);
              !s.ok()) {
            return s;
          }
        } else if (reply.size() > 16384) {
          return absl::UnavailableError("reply headers too long");
        }
      }
      continue;
    }
    if (n == 0) break;  // the peer closed: the reply is whatever came
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (absl::Status s = core::WaitFd(fd.get(), POLLIN, deadline, "waiting for the reply");
          !s.ok()) {
        return s;
      }
      continue;
    }
    return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  }
  if (head_end == std::string::npos)
    return absl::UnavailableError("connection closed before a reply");
  out.body = reply.substr(head_end, kMaxReplyBytes);
  return out;
}

}  // namespace quell::obs::internal
