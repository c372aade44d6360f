#include "core/net.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/threads.h"

namespace quell::core {
namespace {

struct AddrInfoFree {
  void operator()(addrinfo* a) const {
    if (a != nullptr) ::freeaddrinfo(a);
  }
};
using AddrList = std::unique_ptr<addrinfo, AddrInfoFree>;

// One resolution, shared by the caller and its helper thread: whichever leaves last
// frees it (the caller may leave at its deadline, before the resolver answers).
struct Resolution {
  std::mutex mu;
  std::condition_variable done_cv;
  bool done = false;  // guarded by mu, as rc and list
  int rc = 0;
  AddrList list;
};

std::atomic<internal::ResolverFn> resolver{&::getaddrinfo};

// How long one wait may last before the cancel flag is looked at again.
constexpr absl::Duration kCancelCheck = absl::Milliseconds(200);

bool Cancelled(const std::atomic<bool>* cancel) { return cancel != nullptr && cancel->load(); }

absl::StatusOr<AddrList> Resolve(const std::string& host, int port, absl::Time deadline,
                                 const std::atomic<bool>* cancel) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const std::string service = std::to_string(port);
  // An address literal never asks a resolver: answered here at once.
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc == 0) return AddrList(found);
  if (rc != EAI_NONAME) {
    return absl::UnavailableError(absl::StrCat("resolve ", host, ": ", ::gai_strerror(rc)));
  }
  if (deadline <= absl::Now()) {
    return absl::DeadlineExceededError(absl::StrCat("timed out resolving ", host));
  }
  auto r = std::make_shared<Resolution>();
  hints.ai_flags = AI_NUMERICSERV;
  try {
    std::thread([r, host, service, hints, lookup = resolver.load()] {
      NameThisThread("quell-resolve");
      addrinfo* out = nullptr;
      const int code = lookup(host.c_str(), service.c_str(), &hints, &out);
      std::lock_guard<std::mutex> lock(r->mu);
      r->rc = code;
      r->list.reset(out);
      r->done = true;
      r->done_cv.notify_all();
    }).detach();
  } catch (const std::system_error& e) {  // no thread to be had (a pids limit)
    return absl::UnavailableError(
        absl::StrCat("resolve ", host, ": cannot start a resolver thread: ", e.what()));
  }
  std::unique_lock<std::mutex> lock(r->mu);
  while (!r->done) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("timed out resolving ", host));
    }
    if (Cancelled(cancel)) {
      return absl::CancelledError(absl::StrCat("interrupted while resolving ", host));
    }
    // In steps of at most an hour: an infinite deadline would overflow the clock's math.
    const absl::Duration step = cancel != nullptr ? kCancelCheck : absl::Hours(1);
    r->done_cv.wait_for(lock, absl::ToChronoNanoseconds(std::min(left, step)));
  }
  if (r->rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolve ", host, ": ", ::gai_strerror(r->rc)));
  }
  return std::move(r->list);
}

// Milliseconds left until `deadline` for poll(2): at least 1 while any time is left.
int PollMillis(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  if (left >= absl::Minutes(1)) return 60'000;  // an infinite deadline included
  return static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
}

}  // namespace

namespace internal {
void SetResolverForTest(ResolverFn fn) { resolver.store(fn == nullptr ? &::getaddrinfo : fn); }
}  // namespace internal

absl::Status WaitFd(int fd, short events, absl::Time deadline, std::string_view doing) {
  for (;;) {
    const int ms = PollMillis(deadline);  // 0: one look, without waiting
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms);
    if (n > 0) return absl::OkStatus();
    if (n < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (n == 0 && ms == 0) {
      return absl::DeadlineExceededError(doing.empty() ? std::string("timed out")
                                                       : absl::StrCat("timed out ", AV(doing)));
    }
  }
}

absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Time deadline,
                               const std::atomic<bool>* cancel) {
  absl::StatusOr<AddrList> list = Resolve(host, port, deadline, cancel);
  if (!list.ok()) return list.status();
  const std::string where = absl::StrCat(host, ":", port);
  absl::Status last = absl::UnavailableError(absl::StrCat("connect ", where, ": no address"));
  for (const addrinfo* a = list->get(); a != nullptr; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
      continue;
    }
    int err = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      // In slices when it can be cancelled, so that a cancel is seen soon.
      absl::Status ready;
      for (;;) {
        if (Cancelled(cancel)) {
          ::close(fd);
          return absl::CancelledError(absl::StrCat("interrupted while connecting to ", where));
        }
        ready =
            WaitFd(fd, POLLOUT,
                   cancel != nullptr ? std::min(deadline, absl::Now() + kCancelCheck) : deadline);
        if (!absl::IsDeadlineExceeded(ready)) break;
        if (absl::Now() >= deadline) {
          ::close(fd);
          return absl::DeadlineExceededError(absl::StrCat("timed out connecting to ", where));
        }
      }
      if (!ready.ok()) {
        ::close(fd);
        last = absl::UnavailableError(absl::StrCat("connect ", where, ": ", ready.message()));
        continue;
      }
      {
        socklen_t len = sizeof(err);
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err == 0) return fd;
    ::close(fd);
    last = absl::UnavailableError(absl::StrCat("connect ", where, ": ", std::strerror(err)));
  }
  return last;
}

}  // namespace quell::core
