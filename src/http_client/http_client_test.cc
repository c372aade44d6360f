#include "http_client/http_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace quell::http_client {
namespace {

// A listener on a loopback port that accepts connections, reads what comes and never
// answers: a server that hangs.
class SilentServer {
 public:
  SilentServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 8);
    socklen_t n = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &n);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;  // the listener was shut down
        accepted_.push_back(c);
      }
    });
  }
  ~SilentServer() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    for (int c : accepted_) ::close(c);
  }
  Url url() const { return Url{.host = "127.0.0.1", .port = port_}; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> accepted_;  // the accept thread's until it ends
  std::thread thread_;
};

// A server that took the request and never answers: the request ended only when the
// listener died (6m40s under `timeout`), and Ctrl-C could not end it.
TEST(HttpConnection, ARequestThatGetsNoReplyEndsAtItsTimeout) {
  SilentServer server;
  HttpConnection conn(server.url());
  auto r = conn.Request("POST", "/v1/detections", {}, "{}\n", absl::Milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("no reply from 127.0.0.1:"), std::string_view::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("within 300ms"), std::string_view::npos) << r.status();
}

TEST(HttpConnection, ACancelEndsAWaitingRequestAfterItsGrace) {
  SilentServer server;
  std::atomic<bool> cancel{false};
  HttpConnection conn(server.url(), &cancel, absl::Milliseconds(200));
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    cancel.store(true);
  });
  auto r = conn.Request("POST", "/v1/detections", {}, "{}\n", absl::Hours(1));
  setter.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_EQ(r.status().message(), "interrupted while waiting for the server's reply");
}

}  // namespace
}  // namespace quell::http_client
