#include "core/net.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace quell::core {
namespace {

// A loopback listener on a free port; `backlog` as listen(2)'s. Never accepts.
struct Listener {
  explicit Listener(int backlog) {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd, backlog), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd); }
  int fd = -1;
  int port = 0;
};

absl::Time In(absl::Duration d) { return absl::Now() + d; }

TEST(ConnectTcpTest, ConnectsToALiteralAndToAName) {
  Listener l(16);
  for (const char* host : {"127.0.0.1", "localhost"}) {
    absl::StatusOr<int> fd = ConnectTcp(host, l.port, In(absl::Seconds(10)));
    ASSERT_TRUE(fd.ok()) << host << ": " << fd.status();
    ::close(*fd);
  }
}

TEST(ConnectTcpTest, ARefusedPortIsUnavailableAndNamed) {
  int port;
  {
    Listener l(1);
    port = l.port;
  }  // closed: nothing listens there now
  absl::StatusOr<int> fd = ConnectTcp("127.0.0.1", port, In(absl::Seconds(10)));
  ASSERT_EQ(fd.status().code(), absl::StatusCode::kUnavailable) << fd.status();
  EXPECT_TRUE(absl::StartsWith(fd.status().message(), absl::StrCat("connect 127.0.0.1:", port)))
      << fd.status();
}

// A listener whose accept queue is full drops new SYNs (Linux, tcp_abort_on_overflow=0):
// the connect hangs, and the deadline ends it.
TEST(ConnectTcpTest, AConnectThatHangsEndsAtTheDeadline) {
  Listener l(0);
  std::vector<int> held;
  absl::StatusOr<int> fd;
  for (int i = 0; i < 8; ++i) {  // fill the queue; the first that does not connect is it
    fd = ConnectTcp("127.0.0.1", l.port, In(absl::Milliseconds(300)));
    if (!fd.ok()) break;
    held.push_back(*fd);
  }
  for (int h : held) ::close(h);
  ASSERT_EQ(fd.status().code(), absl::StatusCode::kDeadlineExceeded) << fd.status();
  EXPECT_EQ(fd.status().message(), absl::StrCat("timed out connecting to 127.0.0.1:", l.port));
}

// A resolver that answers only when released: the state outlives the test, since the
// resolver thread left behind at the deadline still runs until it is released.
std::mutex hung_mu;
std::condition_variable hung_cv;
bool hung_released = false;
int HungResolver(const char*, const char*, const addrinfo*, addrinfo** out) {
  std::unique_lock<std::mutex> lock(hung_mu);
  hung_cv.wait(lock, [] { return hung_released; });
  *out = nullptr;
  return EAI_AGAIN;
}

// HungResolver installed for a scope (held until the scope ends, whichever test ran before),
// then removed, and its lookup released.
class HungResolverScope {
 public:
  HungResolverScope() {
    {
      std::lock_guard<std::mutex> lock(hung_mu);
      hung_released = false;
    }
    internal::SetResolverForTest(&HungResolver);
  }
  ~HungResolverScope() {
    internal::SetResolverForTest(nullptr);
    {
      std::lock_guard<std::mutex> lock(hung_mu);
      hung_released = true;
    }
    hung_cv.notify_all();
  }
};

TEST(ConnectTcpTest, AResolverThatDoesNotAnswerEndsAtTheDeadline) {
  HungResolverScope hung;
  absl::StatusOr<int> fd = ConnectTcp("quell.test", 80, In(absl::Milliseconds(200)));
  ASSERT_EQ(fd.status().code(), absl::StatusCode::kDeadlineExceeded) << fd.status();
  EXPECT_EQ(fd.status().message(), "timed out resolving quell.test");
}

// A cancel flag ends the wait (Ctrl-C during `quell import --server`'s first connect waited
// out its 30 s).
TEST(ConnectTcpTest, ACancelEndsAResolutionThatDoesNotAnswer) {
  HungResolverScope hung;
  std::atomic<bool> cancel{false};
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    cancel.store(true);
  });
  absl::StatusOr<int> fd = ConnectTcp("quell.test", 80, absl::InfiniteFuture(), &cancel);
  setter.join();
  ASSERT_EQ(fd.status().code(), absl::StatusCode::kCancelled) << fd.status();
  EXPECT_EQ(fd.status().message(), "interrupted while resolving quell.test");
}

// A name's resolver answering; an infinite deadline is no deadline (it overflowed the
// clock's math and timed out at once).
int LoopbackResolver(const char*, const char* service, const addrinfo* hints, addrinfo** out) {
  return ::getaddrinfo("127.0.0.1", service, hints, out);
}

TEST(ConnectTcpTest, AnInfiniteDeadlineWaitsAsLongAsItTakes) {
  Listener l(16);
  absl::StatusOr<int> literal = ConnectTcp("127.0.0.1", l.port, absl::InfiniteFuture());
  ASSERT_TRUE(literal.ok()) << literal.status();
  ::close(*literal);
  internal::SetResolverForTest(&LoopbackResolver);
  absl::StatusOr<int> named = ConnectTcp("quell.test", l.port, absl::InfiniteFuture());
  internal::SetResolverForTest(nullptr);
  ASSERT_TRUE(named.ok()) << named.status();
  ::close(*named);
}

TEST(ConnectTcpTest, ANameIsNotResolvedPastTheDeadline) {
  absl::StatusOr<int> fd = ConnectTcp("localhost", 80, absl::Now() - absl::Seconds(1));
  ASSERT_EQ(fd.status().code(), absl::StatusCode::kDeadlineExceeded) << fd.status();
  EXPECT_EQ(fd.status().message(), "timed out resolving localhost");
}

}  // namespace
// WaitFd, the one poll(2) loop of the HTTP clients: ready, not ready by the deadline, a
// deadline already past (one look all the same), and a wait with no deadline.
TEST(WaitFdTest, ReadyTimedOutAlreadyPastAndUnbounded) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
  const absl::Time soon = absl::Now() + absl::Milliseconds(30);
  absl::Status st = WaitFd(fds[0], POLLIN, soon);  // nothing to read
  EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << st;
  EXPECT_EQ(st.message(), "timed out");
  EXPECT_EQ(WaitFd(fds[0], POLLIN, absl::InfinitePast(), "reading").message(), "timed out reading");
  EXPECT_TRUE(WaitFd(fds[0], POLLOUT, absl::InfinitePast()).ok());  // writable: looked once
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  EXPECT_TRUE(WaitFd(fds[0], POLLIN, absl::InfinitePast()).ok());
  char c;
  ASSERT_EQ(::read(fds[0], &c, 1), 1);
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    (void)::write(fds[1], "y", 1);
  });
  EXPECT_TRUE(WaitFd(fds[0], POLLIN, absl::InfiniteFuture()).ok());
  writer.join();
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace quell::core
