// A throwaway redis-server for tests: started on a free loopback port from a temp dir with
// persistence off (`--save '' --appendonly no`), stopped by PID. Tests use it to run the
// counters suite against the Redis backend and to stop/pause/restart Redis mid-run.
//
// Thread-safety: not thread-safe; owned by one test fixture.
#ifndef QUELL_TESTS_INTEGRATION_REDIS_SERVER_H_
#define QUELL_TESTS_INTEGRATION_REDIS_SERVER_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"

namespace quell::testing {

class RedisServerForTest {
 public:
  RedisServerForTest() = default;
  RedisServerForTest(const RedisServerForTest&) = delete;
  RedisServerForTest& operator=(const RedisServerForTest&) = delete;
  ~RedisServerForTest();  // stops the server and removes the temp dir

  // Starts redis-server (from PATH, or $REDIS_SERVER) on a free port (the same port as
  // before on a restart) and waits until it answers PING. kNotFound if redis-server is not
  // installed (scripts/setup installs it); kUnavailable if it does not come up in 10 s.
  absl::Status Start();
  // SIGTERM, then waits for the process to exit.
  void Stop();
  // SIGSTOP / SIGCONT: Redis keeps its socket open but stops answering (a "slow" Redis).
  void Pause();
  void Resume();

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  bool paused_ = false;
  std::string dir_;
};

// Finds redis-benchmark beside redis-server; "" if not installed.
std::string FindRedisTool(const std::string& name);

}  // namespace quell::testing

#endif  // QUELL_TESTS_INTEGRATION_REDIS_SERVER_H_
