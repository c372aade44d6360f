// An open-loop HTTP/1.1 load generator: requests are sent at a fixed rate, whatever the
// server's pace, over N keep-alive connections, and each request's latency is measured
// from its SCHEDULED send time (not from when it could actually be written). A server that
// stalls therefore pays for every request that queued behind the stall, which a
// closed-loop tool such as wrk hides ("coordinated omission").
//
//   loadgen --port P --rate R [--host 127.0.0.1] [--connections 32] [--duration 10]
//           [--warmup 1] [--threads 1] (--paths FILE | --path /x) [--header "K: V"]...
//
// Request i is due at t0 + i/R and goes to connection i % N (of its thread). A connection
// carries one request at a time (no pipelining): a request that is due while its
// connection still waits for the previous reply is sent as soon as that reply is read,
// and its latency still counts from its due time. --paths gives one request target per
// line, used in order and cycled. Replies must carry Content-Length (chunked replies
// are treated as a broken connection). A connection the server closes is reopened and
// the request in flight sent again, its latency still counted from its due time. Latencies of
// requests due during the warm-up are not recorded.
//
// Prints one summary line per run:
//   LOADGEN target_rate achieved_rate p50_us p90_us p99_us p999_us max_us non2xx errors unfinished
//           reconnects
// preceded by a human-readable block.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Nanos = int64_t;

Nanos NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Nanos>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  double rate = 0;
  int connections = 32;
  double duration_s = 10;
  double warmup_s = 1;
  int threads = 1;
  std::vector<std::string> paths;
  std::vector<std::string> headers;
};

// One keep-alive connection: the requests due on it, and the reply being read.
struct Conn {
  int fd = -1;
  std::deque<Nanos> due;  // front() is in flight when `busy`
  bool busy = false;
  std::string out;   // unsent bytes of the request in flight
  std::string in;    // bytes of replies read so far
  int attempts = 0;  // failed sends of the request in flight
};

struct ThreadResult {
  std::vector<uint32_t> latencies_us;  // of recorded requests
  int64_t completed_in_window = 0;     // replies to requests due in the measured window
  int64_t non2xx = 0;
  int64_t errors = 0;      // requests given up after repeated connection failures
  int64_t reconnects = 0;  // connections closed by the server or broken
  int64_t unfinished = 0;
  int64_t sent = 0;
};

// One event loop: its share of the connections and of the rate. Confined to its thread.
class Worker {
 public:
  Worker(const Options& o, int index, Nanos t0) : o_(o), index_(index), t0_(t0) {
    int per = o.connections / o.threads + (index < o.connections % o.threads ? 1 : 0);
    conns_.resize(std::max(per, 1));
    for (const std::string& p : o.paths) {
      std::string r =
          "GET " + p + " HTTP/1.1\r\nHost: " + o.host + ":" + std::to_string(o.port) + "\r\n";
      for (const std::string& h : o.headers) r += h + "\r\n";
      r += "\r\n";
      requests_.push_back(std::move(r));
    }
  }

  ThreadResult Run() {
    ep_ = epoll_create1(0);
    timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kTimerTag;
    epoll_ctl(ep_, EPOLL_CTL_ADD, timer_, &ev);
    for (size_t c = 0; c < conns_.size(); ++c) {
      if (!Connect(c)) {
        std::fprintf(stderr, "loadgen: cannot connect to %s:%d: %s\n", o_.host.c_str(), o_.port,
                     std::strerror(errno));
        std::exit(1);
      }
    }
    const Nanos warm_end = t0_ + static_cast<Nanos>(o_.warmup_s * 1e9);
    const Nanos end = warm_end + static_cast<Nanos>(o_.duration_s * 1e9);
    const Nanos drain_end = end + 2000000000;  // replies still awaited 2 s after the last send
    // This worker's requests are numbers index_, index_ + threads, ... of the global schedule.
    const double interval = 1e9 / o_.rate;
    uint64_t k = 0;
    auto due_of = [&](uint64_t n) {
      return t0_ + static_cast<Nanos>((static_cast<double>(n) * o_.threads + index_) * interval);
    };
    epoll_event events[64];
    bool sending = true;
    ArmTimer(due_of(0));
    for (;;) {
      Nanos now = NowNs();
      if (sending) {
        while (due_of(k) <= now) {
          Nanos d = due_of(k);
          if (d >= end) {
            sending = false;
            break;
          }
          Conn& c = conns_[k % conns_.size()];
          c.due.push_back(d);
          if (!c.busy) Send(k % conns_.size());
          ++k;
        }
        if (sending) ArmTimer(due_of(k));
      }
      if (!sending) {
        bool idle = true;
        for (const Conn& c : conns_) idle = idle && c.due.empty();
        if (idle || now >= drain_end) break;
      }
      int timeout_ms = sending ? -1 : 50;
      int n = epoll_wait(ep_, events, 64, timeout_ms);
      if (n < 0 && errno != EINTR) {
        std::perror("epoll_wait");
        std::exit(1);
      }
      for (int i = 0; i < n; ++i) {
        if (events[i].data.u64 == kTimerTag) {
          uint64_t expirations;
          (void)!read(timer_, &expirations, sizeof expirations);
          continue;
        }
        size_t ci = events[i].data.u64;
        if (events[i].events & EPOLLOUT) Flush(ci);
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) Read(ci, warm_end, end);
      }
    }
    for (Conn& c : conns_) {
      result_.unfinished += static_cast<int64_t>(c.due.size());
      if (c.fd >= 0) close(c.fd);
    }
    close(timer_);
    close(ep_);
    return std::move(result_);
  }

 private:
  static constexpr uint64_t kTimerTag = ~uint64_t{0};

  void ArmTimer(Nanos at) {
    itimerspec its{};
    its.it_value.tv_sec = at / 1000000000;
    its.it_value.tv_nsec = at % 1000000000;
    timerfd_settime(timer_, TFD_TIMER_ABSTIME, &its, nullptr);
  }

  bool Connect(size_t ci) {
    Conn& c = conns_[ci];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(o_.port));
    if (inet_pton(AF_INET, o_.host.c_str(), &addr.sin_addr) != 1) return false;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      close(fd);
      return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ci;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    c.fd = fd;
    c.busy = false;
    c.in.clear();
    c.out.clear();
    return true;
  }

  // Starts the request at the front of the connection's queue.
  void Send(size_t ci) {
    Conn& c = conns_[ci];
    const std::string& r = requests_[(next_path_++ * o_.threads + index_) % requests_.size()];
    c.busy = true;
    c.out = r;
    ++result_.sent;
    Flush(ci);
  }

  void Flush(size_t ci) {
    Conn& c = conns_[ci];
    while (!c.out.empty()) {
      ssize_t w = write(c.fd, c.out.data(), c.out.size());
      if (w < 0) {
        if (errno == EAGAIN) {
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLOUT;
          ev.data.u64 = ci;
          epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
          return;
        }
        Fail(ci);
        return;
      }
      c.out.erase(0, static_cast<size_t>(w));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ci;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  // The connection broke or the server closed it (e.g. a keep-alive request limit):
  // reconnect and send the request in flight again, keeping its due time, so that the
  // reconnection counts in its latency. A request that fails kMaxAttempts times is
  // dropped and counted as an error.
  void Fail(size_t ci) {
    static constexpr int kMaxAttempts = 3;
    Conn& c = conns_[ci];
    ++result_.reconnects;
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    if (c.busy && !c.due.empty() && ++c.attempts >= kMaxAttempts) {
      ++result_.errors;
      c.due.pop_front();
      c.attempts = 0;
    }
    c.busy = false;
    if (!Connect(ci)) {
      std::fprintf(stderr, "loadgen: reconnect failed: %s\n", std::strerror(errno));
      std::exit(1);
    }
    if (!c.due.empty()) Send(ci);
  }

  void Read(size_t ci, Nanos warm_end, Nanos end) {
    Conn& c = conns_[ci];
    char buf[16384];
    for (;;) {
      ssize_t r = read(c.fd, buf, sizeof buf);
      if (r > 0) {
        c.in.append(buf, static_cast<size_t>(r));
        continue;
      }
      if (r < 0 && errno == EAGAIN) break;
      Fail(ci);  // EOF or error
      return;
    }
    // One reply at most is expected (no pipelining).
    size_t head_end = c.in.find("\r\n\r\n");
    if (head_end == std::string::npos) return;
    std::string_view head(c.in.data(), head_end);
    size_t length = 0;
    bool has_length = false;
    size_t pos = 0;
    while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
      pos += 2;
      if (head.size() - pos >= 15 && strncasecmp(head.data() + pos, "content-length:", 15) == 0) {
        length = std::strtoul(std::string(head.substr(pos + 15, 20)).c_str(), nullptr, 10);
        has_length = true;
      }
    }
    if (!has_length || head.size() < 12) {
      Fail(ci);
      return;
    }
    if (c.in.size() < head_end + 4 + length) return;
    Nanos now = NowNs();
    int status = std::atoi(std::string(head.substr(9, 3)).c_str());
    if (status < 200 || status > 299) ++result_.non2xx;
    Nanos due = c.due.front();
    c.due.pop_front();
    if (due >= warm_end && due < end) {
      ++result_.completed_in_window;
      result_.latencies_us.push_back(
          static_cast<uint32_t>(std::min<Nanos>((now - due) / 1000, UINT32_MAX)));
    }
    c.in.erase(0, head_end + 4 + length);
    c.busy = false;
    c.attempts = 0;
    if (!c.due.empty()) Send(ci);
  }

  const Options& o_;
  const int index_;
  const Nanos t0_;
  std::vector<Conn> conns_;
  std::vector<std::string> requests_;
  uint64_t next_path_ = 0;  // this worker's share of the paths, in order
  int ep_ = -1;
  int timer_ = -1;
  ThreadResult result_;
};

int Usage(const char* why) {
  std::fprintf(
      stderr,
      "loadgen: %s\n"
      "usage: loadgen --port P --rate R [--host 127.0.0.1] [--connections 32] [--duration 10]\n"
      "               [--warmup 1] [--threads 1] (--paths FILE | --path /x) [--header \"K: "
      "V\"]...\n",
      why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view k = argv[i];
    if (i + 1 >= argc) return Usage("missing value");
    const char* v = argv[++i];
    if (k == "--host") {
      o.host = v;
    } else if (k == "--port") {
      o.port = std::atoi(v);
    } else if (k == "--rate") {
      o.rate = std::atof(v);
    } else if (k == "--connections") {
      o.connections = std::atoi(v);
    } else if (k == "--duration") {
      o.duration_s = std::atof(v);
    } else if (k == "--warmup") {
      o.warmup_s = std::atof(v);
    } else if (k == "--threads") {
      o.threads = std::atoi(v);
    } else if (k == "--path") {
      o.paths.emplace_back(v);
    } else if (k == "--paths") {
      std::ifstream f(v);
      if (!f) return Usage("cannot read --paths file");
      std::string line;
      while (std::getline(f, line)) {
        if (!line.empty()) o.paths.push_back(line);
      }
    } else if (k == "--header") {
      o.headers.emplace_back(v);
    } else {
      return Usage("unknown flag");
    }
  }
  if (o.port <= 0 || o.rate <= 0 || o.connections <= 0 || o.threads <= 0 || o.duration_s <= 0 ||
      o.paths.empty() || o.connections < o.threads) {
    return Usage("need --port, --rate, a path, connections >= threads >= 1");
  }

  const Nanos t0 = NowNs() + 50000000;  // every worker connects before the first due time
  std::vector<ThreadResult> results(o.threads);
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) {
    threads.emplace_back([&, t] { results[t] = Worker(o, t, t0).Run(); });
  }
  for (auto& t : threads) t.join();

  ThreadResult all;
  for (ThreadResult& r : results) {
    all.latencies_us.insert(all.latencies_us.end(), r.latencies_us.begin(), r.latencies_us.end());
    all.completed_in_window += r.completed_in_window;
    all.non2xx += r.non2xx;
    all.errors += r.errors;
    all.reconnects += r.reconnects;
    all.unfinished += r.unfinished;
    all.sent += r.sent;
  }
  std::vector<uint32_t>& l = all.latencies_us;
  std::sort(l.begin(), l.end());
  auto pct = [&](double p) -> uint32_t {
    if (l.empty()) return 0;
    size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(l.size() - 1) + 0.5);
    return l[std::min(i, l.size() - 1)];
  };
  double achieved = static_cast<double>(all.completed_in_window) / o.duration_s;
  std::printf(
      "open loop: target %.0f req/s over %d connections, %d thread(s), %.1f s (+%.1f s warm-up)\n",
      o.rate, o.connections, o.threads, o.duration_s, o.warmup_s);
  std::printf(
      "  achieved %.0f req/s; latency from scheduled send: p50 %u us  p90 %u us  p99 %u us  "
      "p99.9 %u us  max %u us\n",
      achieved, pct(50), pct(90), pct(99), pct(99.9), l.empty() ? 0 : l.back());
  std::printf("  non-2xx %lld  failed requests %lld  unfinished %lld  reconnects %lld\n",
              static_cast<long long>(all.non2xx), static_cast<long long>(all.errors),
              static_cast<long long>(all.unfinished), static_cast<long long>(all.reconnects));
  std::printf("LOADGEN %.0f %.0f %u %u %u %u %u %lld %lld %lld %lld\n", o.rate, achieved, pct(50),
              pct(90), pct(99), pct(99.9), l.empty() ? 0 : l.back(),
              static_cast<long long>(all.non2xx), static_cast<long long>(all.errors),
              static_cast<long long>(all.unfinished), static_cast<long long>(all.reconnects));
  return 0;
}
