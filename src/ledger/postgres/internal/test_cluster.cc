#include "ledger/postgres/internal/test_cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace quell::ledger::pg_internal {
namespace {

constexpr char kBinDir[] = "/usr/lib/postgresql/15/bin";

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// Runs a PostgreSQL server binary, as `postgres` when we are root.
absl::Status RunTool(const std::string& args) {
  std::string cmd = absl::StrCat(kBinDir, "/", args, " >/dev/null 2>&1");
  if (geteuid() == 0) cmd = absl::StrCat("runuser -u postgres -- ", cmd);
  int rc = std::system(cmd.c_str());
  if (rc != 0) return absl::InternalError(absl::StrCat("`", cmd, "` failed with ", rc));
  return absl::OkStatus();
}

// Forks a process that waits for end-of-file on a pipe whose write end only this process
// holds (close-on-exec, so no child program keeps it), i.e. for this process to die or
// to close it, and then runs `cleanup` with /bin/sh. Returns the write end, or -1. The
// child calls only async-signal-safe functions: this process may have threads.
int StartWatchdog(const std::string& cleanup) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  const int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    if (devnull >= 0) close(devnull);
    return -1;
  }
  if (pid == 0) {
    close(fds[1]);
    // Not the test's output: a runner waiting for its pipes would wait for us too.
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    char byte;
    while (read(fds[0], &byte, 1) != 0) {
      if (errno != EINTR) break;
    }
    execl("/bin/sh", "sh", "-c", cleanup.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[0]);
  if (devnull >= 0) close(devnull);
  return fds[1];
}

absl::Status NotOurs() {
  return absl::FailedPreconditionError(
      "the test run's shared PostgreSQL server (QUELL_TEST_PG_SERVER) is not this test's to "
      "stop or restart: start a cluster of its own (TestCluster::Start)");
}

}  // namespace

absl::StatusOr<TestCluster*> TestCluster::Start(bool durable) {
  if (!std::filesystem::exists(absl::StrCat(kBinDir, "/pg_ctl"))) {
    return absl::FailedPreconditionError(
        absl::StrCat("PostgreSQL 15 server binaries are missing (", kBinDir,
                     "): run scripts/setup (apt-get install postgresql-15)"));
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "quell-pg-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  std::unique_ptr<TestCluster> c(new TestCluster());
  c->dir_ = tmpl;
  if (geteuid() == 0) {
    passwd* pw = getpwnam("postgres");
    if (pw == nullptr) return absl::FailedPreconditionError("no `postgres` user");
    if (chown(c->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError("chown of the cluster directory failed");
    }
  }
  std::string data = c->dir_ + "/data";
  c->watchdog_fd_ = StartWatchdog(
      absl::StrCat(geteuid() == 0 ? "runuser -u postgres -- " : "", kBinDir, "/pg_ctl -D ", data,
                   " -m immediate -w stop >/dev/null 2>&1; rm -rf ", c->dir_));
  absl::Status st = RunTool(
      absl::StrCat("initdb -D ", data, " -A trust -U postgres -E UTF8 --no-sync --locale=C"));
  if (!st.ok()) return st;
  c->port_ = FreePort();
  c->server_ = absl::StrCat("host=127.0.0.1 port=", c->port_, " user=postgres");
  c->server_options_ = absl::StrCat(
      "-p ", c->port_, " -k ", c->dir_, " -c listen_addresses=127.0.0.1 -c max_connections=200",
      durable ? "" : " -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
  st = c->Restart();
  if (!st.ok()) return st;
  return c.release();
}

absl::StatusOr<TestCluster*> TestCluster::Shared() {
  static absl::Mutex mu;
  static TestCluster* cluster = nullptr;
  static absl::Status error;
  absl::MutexLock lock(&mu);
  if (cluster == nullptr && error.ok()) {
    if (const char* server = std::getenv("QUELL_TEST_PG_SERVER"); server && *server) {
      cluster = new TestCluster();
      cluster->external_ = true;
      cluster->server_ = server;
      std::atexit([] { delete cluster; });
      return cluster;
    }
    auto c = Start();
    if (!c.ok()) {
      error = c.status();
    } else {
      cluster = *c;
      std::atexit([] { delete cluster; });
    }
  }
  if (!error.ok()) return error;
  return cluster;
}

TestCluster::~TestCluster() {
  for (const std::string& db : dbs_) {
    (void)Exec(Url("postgres"), absl::StrCat("DROP DATABASE IF EXISTS ", db, " WITH (FORCE)"));
  }
  if (external_) return;
  if (running_) (void)RunTool(absl::StrCat("pg_ctl -D ", dir_, "/data -m immediate -w stop"));
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  if (watchdog_fd_ >= 0) close(watchdog_fd_);  // nothing left for it to do
}

absl::Status TestCluster::Stop() {
  if (external_) return NotOurs();
  absl::Status st = RunTool(absl::StrCat("pg_ctl -D ", dir_, "/data -m fast -w stop"));
  if (st.ok()) running_ = false;
  return st;
}

absl::Status TestCluster::Restart() {
  if (external_) return NotOurs();
  absl::Status st = RunTool(absl::StrCat("pg_ctl -D ", dir_, "/data -w -t 60 -l ", dir_,
                                         "/log -o \"", server_options_, "\" start"));
  if (st.ok()) running_ = true;
  return st;
}

std::string TestCluster::Url(const std::string& db) const {
  return absl::StrCat(server_, " dbname=", db);
}

absl::StatusOr<std::string> TestCluster::NewDatabase() {
  // On a server shared by a whole test run, pids are reused: the time tells them apart.
  std::string name = absl::StrCat("quell_", getpid(), "_", next_db_++);
  if (external_) absl::StrAppend(&name, "_", absl::ToUnixMicros(absl::Now()));
  absl::Status st = Exec(Url("postgres"), absl::StrCat("CREATE DATABASE ", name));
  if (!st.ok()) return st;
  if (external_) dbs_.push_back(name);
  return Url(name);
}

absl::Status TestCluster::Exec(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  absl::Status st;
  if (PQstatus(c) != CONNECTION_OK) {
    st = absl::UnavailableError(absl::StrCat("connect: ", PQerrorMessage(c)));
  } else {
    PGresult* r = PQexec(c, sql.c_str());
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
      st = absl::InternalError(absl::StrCat("raw postgres: ", PQresultErrorMessage(r)));
    }
    PQclear(r);
  }
  PQfinish(c);
  return st;
}

}  // namespace quell::ledger::pg_internal
