// quell::client mirror benchmarks against a running server (see docs/client.md):
//   1. snapshot: GET /v1/snapshot alone (server produce + transfer), then a Client's
//      start-to-synced time (the same plus parsing and loading the mirror);
//   2. check: in-process Client::Check latency, hits and misses, one thread;
//   3. propagation: N writes (POST /v1/mitigations, one at a time, spaced), each timed
//      from the request until a spinning reader sees it in the mirror; p50/p99/max, also
//      from the write's acknowledgement.
//
//   grpc_mirror_bench --url http://127.0.0.1:8080 --key ADMIN_KEY [--writes 300]
//                     [--skip-snapshot-get] [--loads N] [--load-only]
//
// --loads N starts N mirrors one after the other (each timed from Start to synced, then
// destroyed but the last); --load-only stops after the loads (for `perf record`).
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/internal/http_conn.h"
#include "core/strings.h"

namespace {

using Clock = std::chrono::steady_clock;
using quell::client::Client;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// CPU seconds of this process / of the calling thread: on a shared machine wall time
// depends on the neighbours, CPU time much less.
double ProcessCpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}
double ThreadCpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string url, key;
  int writes = 300;
  bool skip_get = false;
  bool load_only = false;
  int loads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--skip-snapshot-get") {
      skip_get = true;
    } else if (f == "--load-only") {
      load_only = true;
    } else if (i + 1 < argc && f == "--loads") {
      loads = std::max(1, std::atoi(argv[++i]));
    } else if (i + 1 < argc && f == "--url") {
      url = argv[++i];
    } else if (i + 1 < argc && f == "--key") {
      key = argv[++i];
    } else if (i + 1 < argc && f == "--writes") {
      writes = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: grpc_mirror_bench --url URL --key KEY [--writes N]\n");
      return 2;
    }
  }
  auto endpoint = quell::client::internal::ParseHttpUrl(url);
  if (!endpoint.ok() || key.empty()) {
    std::fprintf(stderr, "usage: grpc_mirror_bench --url URL --key KEY [--writes N]\n");
    return 2;
  }
  const std::string bearer = "Bearer " + key;

  // 1. Snapshot.
  if (!skip_get) {
    quell::client::internal::HttpConn conn(*endpoint);
    size_t bytes = 0, lines = 0;
    auto t0 = Clock::now();
    // The view the mirror loads (id, entity, action, state, expires_at per line).
    auto code = conn.Get("/v1/snapshot?view=enforcement", bearer, absl::Seconds(120),
                         [&](std::string_view p) {
                           bytes += p.size();
                           lines += std::count(p.begin(), p.end(), '\n');
                           return absl::OkStatus();
                         });
    auto t1 = Clock::now();
    if (!code.ok() || *code != 200) {
      std::fprintf(stderr, "GET /v1/snapshot?view=enforcement failed\n");
      return 1;
    }
    std::printf(
        "snapshot GET (view=enforcement): %zu mitigations, %.1f MB in %.0f ms (server build + "
        "transfer)\n",
        lines - 1, bytes / 1e6, Ms(t1 - t0));
  }
  absl::StatusOr<std::unique_ptr<Client>> client;
  for (int round = 0; round < loads; ++round) {
    client = nullptr;  // the previous mirror is destroyed outside the timed part
    const double cpu0 = ProcessCpu();
    auto t0 = Clock::now();
    client = Client::Start({.url = url, .key = key});
    if (!client.ok()) return 1;
    if (auto s = (*client)->WaitUntilSynced(absl::Seconds(300)); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(quell::SV(s.message())).c_str());
      return 1;
    }
    auto t1 = Clock::now();
    const double load_cpu = ProcessCpu() - cpu0;
    auto st = (*client)->stats();
    std::printf(
        "mirror load: %lld mitigations synced in %.0f ms (request to ready): server preparing "
        "%.0f ms, then transfer + parse + load of %.1f MB %.0f ms, of which applying to the "
        "index after the last byte %.0f ms (%.2f CPU-s in the client)\n",
        static_cast<long long>(st.size), Ms(t1 - t0), absl::ToDoubleMilliseconds(st.snapshot_wait),
        st.snapshot_bytes / 1e6, absl::ToDoubleMilliseconds(st.snapshot_load),
        absl::ToDoubleMilliseconds(st.snapshot_apply), load_cpu);
    std::fflush(stdout);
  }
  {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    std::printf("bench process peak RSS after the load: %.0f MB\n", u.ru_maxrss / 1024.0);
  }
  if (load_only) return 0;

  // 2. Check latency.
  {
    std::vector<quell::core::Entity> hits, misses;
    for (const std::string& line : (*client)->DumpForTest()) {
      size_t a = line.find(' '), b = line.find(' ', a + 1);
      hits.push_back(*quell::core::Entity::Parse(line.substr(a + 1, b - a - 1)));
      if (hits.size() >= 100000) break;
    }
    for (int i = 0; i < 100000; ++i) {
      misses.push_back(*quell::core::Entity::Parse(absl::StrCat("user:miss-", i)));
    }
    std::mt19937 rng(1);
    std::shuffle(hits.begin(), hits.end(), rng);
    auto run = [&](const std::vector<quell::core::Entity>& es, const char* what) {
      if (es.empty()) return;
      const int rounds = std::max<int>(1, 2000000 / es.size());
      int deny = 0;
      const double c0 = ThreadCpu();
      auto a = Clock::now();
      for (int r = 0; r < rounds; ++r) {
        for (const auto& e : es) deny += (*client)->Check(e) != quell::core::Verdict::kAllow;
      }
      auto b = Clock::now();
      const double cpu_ns = (ThreadCpu() - c0) * 1e9 / (rounds * es.size());
      double ns = std::chrono::duration<double, std::nano>(b - a).count() / (rounds * es.size());
      std::printf(
          "mirror Check (%s, %zu distinct entities): %.0f ns/check wall, %.0f ns CPU (%d "
          "non-allow)\n",
          what, es.size(), ns, cpu_ns, deny);
    };
    run(hits, "hits");
    run(misses, "misses");
  }

  // 3. Propagation.
  if (writes > 0) {
    quell::client::internal::HttpConn conn(*endpoint);
    std::atomic<int> target{-1};
    std::atomic<bool> stop{false};
    std::vector<Clock::time_point> seen_at(writes);
    std::string run_id = std::to_string(std::random_device{}() % 1000000);
    std::vector<quell::core::Entity> entities;
    for (int i = 0; i < writes; ++i) {
      entities.push_back(*quell::core::Entity::Parse(absl::StrCat("user:prop-", run_id, "-", i)));
    }
    std::thread reader([&] {
      while (!stop.load()) {
        int t = target.load();
        if (t >= 0 && (*client)->Check(entities[t]) != quell::core::Verdict::kAllow) {
          seen_at[t] = Clock::now();
          target.store(-1);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    });
    std::vector<double> from_send, from_ack;
    int failed = 0;
    for (int i = 0; i < writes; ++i) {
      std::string body =
          absl::StrCat(R"({"entity":")", entities[i].str(),
                       R"(","action":"block","ttl":"1h","reason":"propagation bench"})");
      target.store(i);
      auto sent = Clock::now();
      auto code = conn.Request("POST", "/v1/mitigations", bearer, body, absl::Seconds(10),
                               [](std::string_view) { return absl::OkStatus(); });
      auto acked = Clock::now();
      if (!code.ok() || (*code != 200 && *code != 201)) {
        ++failed;
        target.store(-1);
        continue;
      }
      auto deadline = Clock::now() + std::chrono::seconds(10);
      while (target.load() == i && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      if (target.load() == i) {
        ++failed;
        target.store(-1);
        continue;
      }
      from_send.push_back(Ms(seen_at[i] - sent));
      from_ack.push_back(std::max(0.0, Ms(seen_at[i] - acked)));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stop.store(true);
    reader.join();
    std::printf(
        "propagation (%zu writes, %d failed): from request p50 %.2f ms p99 %.2f ms max %.2f ms; "
        "from ack p50 %.2f ms p99 %.2f ms max %.2f ms\n",
        from_send.size(), failed, Pct(from_send, 0.5), Pct(from_send, 0.99), Pct(from_send, 1.0),
        Pct(from_ack, 0.5), Pct(from_ack, 0.99), Pct(from_ack, 1.0));
  }
  return 0;
}
