#include "tests/integration/redis_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace quell::testing {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// Sends PING over a plain socket and waits for +PONG.
bool Pings(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const char ping[] = "PING\r\n";
    char buf[16] = {};
    if (write(fd, ping, sizeof(ping) - 1) == sizeof(ping) - 1 && read(fd, buf, 7) >= 5) {
      ok = std::string(buf, 5) == "+PONG";
    }
  }
  close(fd);
  return ok;
}

std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  dirs += ":/usr/bin:/usr/sbin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (!candidate.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

}  // namespace

std::string FindRedisTool(const std::string& name) { return FindInPath(name); }

RedisServerForTest::~RedisServerForTest() {
  Stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::Status RedisServerForTest::Start() {
  if (running()) return absl::OkStatus();
  std::string binary;
  if (const char* env = std::getenv("REDIS_SERVER")) binary = env;
  if (binary.empty()) binary = FindInPath("redis-server");
  if (binary.empty()) {
    return absl::NotFoundError(
        "redis-server is not installed (scripts/setup installs it: apt-get install "
        "redis-server)");
  }
  if (dir_.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "quell-redis-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError("mkdtemp failed");
    dir_ = tmpl;
  }
  if (port_ == 0) port_ = FreePort();
  std::vector<std::string> args = {
      binary,   "--port",    absl::StrCat(port_), "--bind", "127.0.0.1",
      "--save", "",          "--appendonly",      "no",     "--dir",
      dir_,     "--logfile", dir_ + "/redis.log"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The child: dies with the test process (even if the test crashes), and keeps none of
    // the test's pipes open (Redis logs to its logfile).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int null_fd = open("/dev/null", O_RDWR);
    dup2(null_fd, 0);
    dup2(null_fd, 1);
    dup2(null_fd, 2);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  pid_ = pid;
  paused_ = false;
  for (int i = 0; i < 1000; ++i) {
    if (Pings(port_)) return absl::OkStatus();
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat("redis-server exited at start; see ", dir_, "/redis.log"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Stop();
  return absl::UnavailableError("redis-server did not answer PING within 10 s");
}

void RedisServerForTest::Stop() {
  if (!running()) return;
  if (paused_) Resume();
  kill(pid_, SIGTERM);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

void RedisServerForTest::Pause() {
  if (running() && !paused_) {
    kill(pid_, SIGSTOP);
    paused_ = true;
  }
}

void RedisServerForTest::Resume() {
  if (running() && paused_) {
    kill(pid_, SIGCONT);
    paused_ = false;
  }
}

}  // namespace quell::testing
