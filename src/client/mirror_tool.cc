// quell_mirror_tool: a quell::client::Client driven from stdin, for integration tests.
//
//   quell_mirror_tool --url http://127.0.0.1:8080 --key KEY
//
// Commands, one per line; each answer ends with a line "." :
//   wait SEQ [SECONDS]   -> "ok" once the mirror has applied up to SEQ, else "error ..."
//   synced [SECONDS]     -> "ok" once the first snapshot is loaded
//   dump                 -> "id entity action expires_us" per active mitigation, by id
//   check ENTITY [SURFACE] -> allow | throttle | challenge | deny (or "error ...")
//   stats                -> key=value pairs (seq, lag, stale_changes, reconnects...)
//   quit
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "core/strings.h"

int main(int argc, char** argv) {
  using quell::client::Client;
  quell::client::ClientOptions options;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--url") {
      options.url = argv[i + 1];
    } else if (f == "--key") {
      options.key = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: quell_mirror_tool --url URL --key KEY\n");
      return 2;
    }
  }
  options.min_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(500);
  auto client = Client::Start(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", std::string(quell::SV(client.status().ToString())).c_str());
    return 2;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (w.empty()) continue;
    const std::string& cmd = w[0];
    double seconds = 30;
    if (cmd == "quit") break;
    if (cmd == "wait" || cmd == "synced") {
      int64_t seq = 0;
      size_t at = cmd == "wait" ? 2 : 1;
      if ((cmd == "wait" && (w.size() < 2 || !absl::SimpleAtoi(w[1], &seq))) ||
          (w.size() > at && !absl::SimpleAtod(w[at], &seconds))) {
        std::cout << "error bad arguments\n.\n" << std::flush;
        continue;
      }
      absl::Status s = cmd == "wait" ? (*client)->WaitForSeq(seq, absl::Seconds(seconds))
                                     : (*client)->WaitUntilSynced(absl::Seconds(seconds));
      std::cout << (s.ok() ? "ok" : "error " + std::string(quell::SV(s.message()))) << "\n.\n";
    } else if (cmd == "dump") {
      for (const std::string& l : (*client)->DumpForTest()) std::cout << l << "\n";
      std::cout << ".\n";
    } else if (cmd == "check" && w.size() >= 2) {
      auto v = (*client)->Check(w[1], w.size() > 2 ? w[2] : "");
      if (v.ok()) {
        std::cout << quell::core::VerdictName(*v) << "\n.\n";
      } else {
        std::cout << "error " << quell::SV(v.status().message()) << "\n.\n";
      }
    } else if (cmd == "stats") {
      auto st = (*client)->staleness();
      auto ss = (*client)->stats();
      std::cout << "seq=" << st.seq << " server_seq=" << st.server_seq << " lag=" << st.lag
                << " synced=" << st.synced << " connected=" << st.connected
                << " since_sync_ms=" << absl::ToInt64Milliseconds(st.since_sync)
                << " snapshots=" << ss.snapshots_loaded << " applied=" << ss.changes_applied
                << " stale_changes=" << ss.stale_changes << " reconnects=" << ss.reconnects
                << " size=" << ss.size << "\n.\n";
    } else {
      std::cout << "error unknown command\n.\n";
    }
    std::cout << std::flush;
  }
  return 0;
}
