#include "obs/internal/http_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace quell::obs::internal {
namespace {

TEST(ParseHttpUrlTest, Accepts) {
  auto u = ParseHttpUrl("http://127.0.0.1:4318/v1/traces");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 4318);
  EXPECT_EQ(u->path, "/v1/traces");
  u = ParseHttpUrl("HTTP://collector");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->path, "/");
  u = ParseHttpUrl("http://[::1]:9/x?y=1");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 9);
  EXPECT_EQ(u->path, "/x?y=1");
}

TEST(ParseHttpUrlTest, Rejects) {
  for (const char* bad : {"https://h/v1/traces", "ftp://h", "h:4318", "http://", "http://:80/",
                          "http://h:0/", "http://h:70000/", "http://h:x/", "http://u@h/",
                          "http://h /", "http://[::1/", "http://h:/"}) {
    EXPECT_FALSE(ParseHttpUrl(bad).ok()) << bad;
  }
}

// A one-connection server on a loopback port: reads the request, then answers
// `reply` (or nothing, holding the connection until the test ends).
class OneShotServer {
 public:
  explicit OneShotServer(std::string reply, bool answer = true) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd_, 1), 0);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this, reply = std::move(reply), answer] {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[4096];
      while (request_.find("\r\n\r\n") == std::string::npos ||
             request_.size() < request_.find("\r\n\r\n") + 4 + 5) {  // body "hello"
        const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        request_.append(buf, static_cast<size_t>(n));
      }
      if (answer) {
        ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      } else {
        done_.WaitForNotification();
      }
      ::close(c);
    });
  }
  ~OneShotServer() {
    done_.Notify();
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  const std::string& request() const { return request_; }  // after the call returned

 private:
  int fd_;
  int port_ = 0;
  std::string request_;
  absl::Notification done_;
  std::thread thread_;
};

TEST(HttpPostTest, PostsAndReadsStatus) {
  OneShotServer server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
  HttpUrl url{"127.0.0.1", server.port(), "/v1/traces"};
  auto r = HttpPost(url, "application/json", "hello", absl::Seconds(5), absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "{}");
}

TEST(HttpPostTest, SendsRequestLineHeadersAndBody) {
  auto server = std::make_unique<OneShotServer>("HTTP/1.0 503 Busy\r\n\r\n");
  HttpUrl url{"127.0.0.1", server->port(), "/v1/traces"};
  auto r = HttpPost(url, "application/json", "hello", absl::Seconds(5), absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503);
  server.reset();  // joins: the request is complete
}

TEST(HttpPostTest, RefusedConnectionIsUnavailable) {
  int port;
  {
    OneShotServer s("", true);
    port = s.port();
    HttpUrl url{"127.0.0.1", port, "/"};
    (void)HttpPost(url, "text/plain", "hello", absl::Seconds(5), absl::Seconds(5));
  }  // closed: nothing listens on `port` now
  auto r = HttpPost(HttpUrl{"127.0.0.1", port, "/"}, "text/plain", "x", absl::Seconds(5),
                    absl::Seconds(5));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
}

TEST(HttpPostTest, SilentServerTimesOut) {
  OneShotServer server("", /*answer=*/false);
  auto r = HttpPost(HttpUrl{"127.0.0.1", server.port(), "/"}, "text/plain", "hello",
                    absl::Seconds(5), absl::Milliseconds(200));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
}

TEST(HttpPostTest, GarbageReplyIsUnavailable) {
  OneShotServer server("SSH-2.0-nope\r\n\r\n");
  auto r = HttpPost(HttpUrl{"127.0.0.1", server.port(), "/"}, "text/plain", "hello",
                    absl::Seconds(5), absl::Seconds(5));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
}

}  // namespace
}  // namespace quell::obs::internal
