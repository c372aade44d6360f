// http_echo_server: serves a fixed 200 JSON answer through quell::http::Server,
// for bench/http_server_bench.sh. Usage:
//   http_echo_server [--port N] [--threads N] [--host H]
// Prints "port N" once listening; stops gracefully on SIGINT/SIGTERM.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "api/http/http_server.h"

namespace {

class FixedHandler final : public quell::http::Handler {
 public:
  void Handle(quell::http::Request request, quell::http::Responder respond) override {
    quell::http::Response response;
    response.body = R"({"verdict":"allow","mitigations":[],"seq":0})";
    std::move(respond)(std::move(response));
  }
};

}  // namespace

int main(int argc, char** argv) {
  quell::http::ServerOptions options;
  options.port = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--port") {
      options.port = std::atoi(argv[i + 1]);
    } else if (flag == "--threads") {
      options.threads = std::atoi(argv[i + 1]);
    } else if (flag == "--host") {
      options.host = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: %s [--port N] [--threads N] [--host H]\n", argv[0]);
      return 2;
    }
  }
  // Block the stop signals before any thread starts, then wait for one.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  FixedHandler handler;
  auto server = quell::http::Server::Start(options, &handler);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("port %d\n", (*server)->port());
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  (*server)->Shutdown();
  return 0;
}
