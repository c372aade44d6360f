#include "webhooks/http_post.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/entity.h"
#include "core/net.h"
#include "core/status.h"
#include "core/strings.h"

namespace quell::webhooks {
namespace {

// Closes the descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// 1 to 5 digits, nothing else (SimpleAtoi took " 80" and "+80").
bool ParsePort(std::string_view s, int* port) {
  if (s.empty() || s.size() > 5) return false;
  int v = 0;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
    v = v * 10 + (c - '0');
  }
  *port = v;
  return true;
}

// Why `host` (letters, digits, '-', '.', '_') cannot name a host, or nullopt. All-numeric
// labels make an IPv4 address, which must be one (999.0.0.1 only fails at resolution,
// every change a dead letter); a DNS label is 1-63 bytes and neither starts nor ends with
// '-' (RFC 1123); one trailing '.' (a rooted name) is fine.
std::optional<std::string> BadHostName(std::string_view host) {
  if (host.find_first_not_of("0123456789.") == std::string_view::npos) {
    if (!core::ParseIp(host).ok()) return "not an IPv4 address";
    return std::nullopt;
  }
  if (host.back() == '.') host.remove_suffix(1);
  for (absl::string_view label : absl::StrSplit(AV(host), '.')) {
    if (label.empty() || label.size() > 63) return "a name's labels are 1-63 bytes";
    if (label.front() == '-' || label.back() == '-') {
      return "a name's labels neither start nor end with '-'";
    }
  }
  return std::nullopt;
}

// Where the header block that starts `in` ends (just past its blank line, CRLF or LF), or
// npos while it is incomplete.
size_t HeaderBlockEnd(std::string_view in) {
  for (size_t start = 0;;) {
    const size_t eol = in.find('\n', start);
    if (eol == std::string_view::npos) return std::string_view::npos;
    std::string_view line = in.substr(start, eol - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() && start > 0) return eol + 1;
    start = eol + 1;
  }
}

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme)
    return absl::InvalidArgumentError("url must start with http://");
  std::string_view rest = url.substr(kScheme.size());
  HttpUrl out;
  // The authority ends at the first '/', '?' or '#' (RFC 3986 3.2); a query right after it
  // is the root path's ("http://h?x=1" posts to "/?x=1").
  const size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (end != std::string_view::npos) {
    const std::string_view path = rest.substr(end);
    out.path = absl::StrCat(path.front() == '?' ? "/" : "", AV(path));
  }
  if (authority.empty() || authority.find('@') != std::string_view::npos)
    return absl::InvalidArgumentError("url needs a host (and no user info)");
  std::string_view host = authority;
  if (authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return absl::InvalidArgumentError("bad IPv6 host");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':' || !ParsePort(after.substr(1), &out.port))
        return absl::InvalidArgumentError("bad port");
    }
    if (host.empty() || host.find_first_not_of("0123456789abcdefABCDEF:.") != host.npos ||
        !core::ParseIp(host).ok())
      return absl::InvalidArgumentError("bad IPv6 host");
  } else {
    if (std::count(authority.begin(), authority.end(), ':') > 1) {
      return absl::InvalidArgumentError("an IPv6 host is written in brackets: http://[::1]:8080/");
    }
    if (const size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      if (!ParsePort(authority.substr(colon + 1), &out.port))
        return absl::InvalidArgumentError("bad port");
    }
    // A DNS name or an IPv4 address (RFC 3986 reg-name, without percent-encoding).
    for (char c : host) {
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
            c == '_')) {
        return absl::InvalidArgumentError(
            absl::StrCat("url host has a character a host name cannot hold: ", AV(host)));
      }
    }
    if (host.empty()) return absl::InvalidArgumentError("url needs a host");
    if (auto why = BadHostName(host)) {
      return absl::InvalidArgumentError(absl::StrCat("url host ", AV(host), ": ", *why));
    }
  }
  if (out.port < 1 || out.port > 65535) return absl::InvalidArgumentError("port out of range");
  for (size_t i = 0; i < out.path.size(); ++i) {
    const auto c = static_cast<unsigned char>(out.path[i]);
    if (c <= ' ' || c == 0x7f)
      return absl::InvalidArgumentError("url path has spaces or control characters");
    // Sent as it is in the request line, which takes ASCII with %XX escapes (RFC 3986):
    // a raw UTF-8 byte or a stray '%' makes a request a strict receiver refuses.
    if (c >= 0x80) {
      return absl::InvalidArgumentError(
          "url path has a non-ASCII byte: percent-encode it (%C3%A9 for \"\u00e9\")");
    }
    if (c == '%' && (i + 2 >= out.path.size() ||
                     !absl::ascii_isxdigit(static_cast<unsigned char>(out.path[i + 1])) ||
                     !absl::ascii_isxdigit(static_cast<unsigned char>(out.path[i + 2])))) {
      return absl::InvalidArgumentError("url path has a '%' that is not a %XX escape");
    }
  }
  // A fragment is the client's, never sent in a request target (RFC 9110 4.2.4).
  if (url.find('#') != std::string_view::npos) {
    return absl::InvalidArgumentError("url has a #fragment, which is never sent: leave it out");
  }
  out.host = std::string(host);
  return out;
}

absl::StatusOr<int> HttpPost(const HttpUrl& url,
                             const std::vector<std::pair<std::string, std::string>>& headers,
                             std::string_view body, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<int> connected = core::ConnectTcp(url.host, url.port, deadline);
  if (!connected.ok()) return connected.status();
  Fd sock{*connected};

  // An IPv6 literal is bracketed in Host, as in the URL (RFC 9110 7.2).
  const bool v6 = url.host.find(':') != std::string::npos;
  std::string request =
      absl::StrCat("POST ", url.path, " HTTP/1.1\r\nHost: ", v6 ? "[" : "", url.host, v6 ? "]" : "",
                   ":", url.port, "\r\nContent-Length: ", body.size(),
                   "\r\nConnection: close\r\nUser-Agent: quell-webhooks\r\n");
  for (const auto& [k, v] : headers) absl::StrAppend(&request, k, ": ", v, "\r\n");
  request += "\r\n";
  request.append(body.data(), body.size());
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(sock.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      QUELL_RETURN_IF_ERROR(core::WaitFd(sock.fd, POLLOUT, deadline, "sending"));
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
  }
  // Read up to the end of the status line: that is all delivery needs.
  std::string in;
  char buf[4096];
  for (;;) {
    // Lines end at LF, a CR before it dropped (RFC 9112 2.2 lets a recipient take a bare
    // LF: a receiver answering "HTTP/1.1 204 No Content\n\n" was read as no answer).
    if (size_t eol = in.find('\n'); eol != std::string::npos) {
      std::string_view line(in.data(), eol);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      // "HTTP/1.x NNN[ reason]": exactly three digits.
      const bool digits = line.size() >= 12 && absl::ascii_isdigit(line[9]) &&
                          absl::ascii_isdigit(line[10]) && absl::ascii_isdigit(line[11]);
      if (!digits || line.substr(0, 5) != "HTTP/" || line[8] != ' ' ||
          (line.size() > 12 && line[12] != ' ')) {
        return absl::UnavailableError("malformed response status line");
      }
      const int code = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
      if (code >= 100 && code < 200) {
        // An interim response (100 Continue, 103 Early Hints): its header block ends at a
        // blank line; the final status follows (RFC 9110 15.2).
        // The timeout bounds them all: a stream of 1xx read as fast as it comes never
        // waits in core::WaitFd, where the deadline is otherwise checked.
        if (absl::Now() >= deadline) {
          return absl::DeadlineExceededError("timeout while waiting for the response");
        }
        if (const size_t end = HeaderBlockEnd(in); end != std::string::npos) {
          in.erase(0, end);
          continue;
        }
      } else {
        return code;
      }
    }
    if (in.size() > 8192) return absl::UnavailableError("response status line too long");
    ssize_t n = recv(sock.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      in.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      return absl::UnavailableError("connection closed before a response");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      QUELL_RETURN_IF_ERROR(core::WaitFd(sock.fd, POLLIN, deadline, "waiting for the response"));
    } else {
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
  }
}

}  // namespace quell::webhooks
