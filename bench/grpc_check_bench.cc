// gRPC check throughput with N concurrent streams (default 32) on one channel (HTTP/2
// multiplexes them), for a fixed time. Prints checks/s, errors and latency percentiles.
//   --mode unary  : N unary Enforcement.Check calls in flight (async client API);
//   --mode stream : N Enforcement.CheckStream streams, each one request in flight
//                   (ping-pong; async client API on T threads, each with its own
//                   completion queue and every T-th stream; default 1). The default.
//
//   grpc_check_bench --target 127.0.0.1:50051 --key KEY [--concurrency 32]
//                    [--seconds 10] [--entities user:a,ip:10.0.0.1] [--channels 1]
//                    [--server-pid PID] [--mode stream|unary] [--threads T]
//
// On a shared machine the wall-clock rate depends on what else runs; with --server-pid
// the bench also prints the server's and its own CPU seconds, and the calls per server
// CPU-second (what one core of the server sustains).
//
// Entities cycle through the given list (default: user:bench-0..999, mostly misses).
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "quell/v1/enforcement.grpc.pb.h"

namespace {

namespace v1 = ::quell::v1;
using Clock = std::chrono::steady_clock;

struct Args {
  std::string target = "127.0.0.1:50051";
  std::string key;
  int concurrency = 32;
  int seconds = 10;
  int channels = 1;
  int threads = 1;  // stream mode: client completion queues / threads
  int server_pid = 0;
  std::string mode = "stream";
  std::vector<std::string> entities;
};

struct Slot {
  ::grpc::ClientContext* ctx = nullptr;
  v1::CheckResponse resp;
  ::grpc::Status status;
  std::unique_ptr<::grpc::ClientAsyncResponseReader<v1::CheckResponse>> rpc;
  Clock::time_point start;
  int index = 0;
};

// One CheckStream: write a request, read its answer, repeat until `end`, then close and
// read the status. Driven by the completion queue's thread (async client API: no thread
// hand-off per message, so the client costs less CPU per check than the server).
class StreamCaller {
 public:
  StreamCaller(v1::Enforcement::Stub* stub, ::grpc::CompletionQueue* cq, const std::string& bearer,
               const std::vector<std::string>* entities, int offset, Clock::time_point end)
      : entities_(entities), next_(offset), end_(end) {
    ctx_.AddMetadata("authorization", bearer);
    latencies_ns.reserve(1 << 20);
    stream_ = stub->PrepareAsyncCheckStream(&ctx_, cq);
    stream_->StartCall(this);
  }
  // Handles the completion of the pending operation; false when the call is over.
  bool Proceed(bool ok) {
    switch (state_) {
      case State::kStarting:
        if (!ok) return Finish();
        Send();
        return true;
      case State::kWriting:
        if (!ok) return Finish();
        state_ = State::kReading;
        stream_->Read(&resp_, this);
        return true;
      case State::kReading: {
        if (!ok) return Finish();
        auto now = Clock::now();
        if (resp_.error().empty()) {
          latencies_ns.push_back(
              std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_).count());
        } else {
          ++errors;
        }
        if (now < end_) {
          Send();
        } else {
          state_ = State::kClosing;
          stream_->WritesDone(this);
        }
        return true;
      }
      case State::kClosing:
        return Finish();
      case State::kFinishing:
        return false;
    }
    return false;
  }

  std::vector<int64_t> latencies_ns;
  int64_t errors = 0;
  ::grpc::Status status;

 private:
  enum class State { kStarting, kWriting, kReading, kClosing, kFinishing };
  void Send() {
    req_.Clear();
    req_.add_entities((*entities_)[next_++ % entities_->size()]);
    start_ = Clock::now();
    state_ = State::kWriting;
    stream_->Write(req_, this);
  }
  bool Finish() {
    state_ = State::kFinishing;
    stream_->Finish(&status, this);
    return true;
  }
  ::grpc::ClientContext ctx_;
  std::unique_ptr<::grpc::ClientAsyncReaderWriter<v1::CheckRequest, v1::CheckResponse>> stream_;
  const std::vector<std::string>* entities_;
  size_t next_;
  Clock::time_point end_, start_;
  State state_ = State::kStarting;
  v1::CheckRequest req_;
  v1::CheckResponse resp_;
};

// utime + stime of `pid` in seconds, from /proc (0 if unreadable).
double ProcessCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

int Usage() {
  std::fprintf(stderr,
               "usage: grpc_check_bench --target HOST:PORT --key KEY [--concurrency N] "
               "[--seconds S] [--channels C] [--entities a,b,...]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (i + 1 >= argc) return Usage();
    std::string v = argv[++i];
    if (f == "--target") {
      a.target = v;
    } else if (f == "--key") {
      a.key = v;
    } else if (f == "--concurrency") {
      a.concurrency = std::atoi(v.c_str());
    } else if (f == "--seconds") {
      a.seconds = std::atoi(v.c_str());
    } else if (f == "--threads") {
      a.threads = std::atoi(v.c_str());
    } else if (f == "--channels") {
      a.channels = std::atoi(v.c_str());
    } else if (f == "--mode") {
      a.mode = v;
    } else if (f == "--server-pid") {
      a.server_pid = std::atoi(v.c_str());
    } else if (f == "--entities") {
      size_t p = 0;
      while (p <= v.size()) {
        size_t c = v.find(',', p);
        if (c == std::string::npos) c = v.size();
        if (c > p) a.entities.push_back(v.substr(p, c - p));
        p = c + 1;
      }
    } else {
      return Usage();
    }
  }
  if (a.key.empty() || a.concurrency < 1 || a.seconds < 1 || a.channels < 1 || a.threads < 1)
    return Usage();
  if (a.entities.empty()) {
    for (int i = 0; i < 1000; ++i) a.entities.push_back("user:bench-" + std::to_string(i));
  }

  std::vector<std::unique_ptr<v1::Enforcement::Stub>> stubs;
  for (int c = 0; c < a.channels; ++c) {
    ::grpc::ChannelArguments ch_args;
    ch_args.SetInt("grpc.channel_id", c);  // distinct channels, distinct connections
    stubs.push_back(v1::Enforcement::NewStub(
        ::grpc::CreateCustomChannel(a.target, ::grpc::InsecureChannelCredentials(), ch_args)));
  }
  ::grpc::CompletionQueue cq;
  const std::string bearer = "Bearer " + a.key;
  std::vector<Slot> slots(a.concurrency);
  std::vector<int64_t> latencies_ns;
  latencies_ns.reserve(1 << 22);
  int64_t ok = 0, errors = 0, next_entity = 0;
  std::string first_error;
  bool stopping = false;
  int in_flight = 0;

  auto issue = [&](int s) {
    Slot& slot = slots[s];
    delete slot.ctx;
    slot.ctx = new ::grpc::ClientContext();
    slot.ctx->AddMetadata("authorization", bearer);
    slot.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CheckRequest req;
    req.add_entities(a.entities[next_entity++ % a.entities.size()]);
    slot.resp.Clear();
    slot.start = Clock::now();
    slot.rpc = stubs[s % stubs.size()]->AsyncCheck(slot.ctx, req, &cq);
    slot.rpc->Finish(&slot.resp, &slot.status, reinterpret_cast<void*>(static_cast<intptr_t>(s)));
    ++in_flight;
  };

  // Warm-up: connect first.
  for (auto& stub : stubs) {
    ::grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bearer);
    v1::CheckRequest req;
    req.add_entities("user:warmup");
    v1::CheckResponse resp;
    auto s = stub->Check(&ctx, req, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "warm-up check failed: %d %s\n", s.error_code(),
                   s.error_message().c_str());
      return 1;
    }
  }

  const double server_cpu0 = a.server_pid > 0 ? ProcessCpuSeconds(a.server_pid) : 0;
  const double self_cpu0 = SelfCpuSeconds();
  const auto start = Clock::now();
  const auto end = start + std::chrono::seconds(a.seconds);
  void* tag;
  bool got;
  if (a.mode == "stream") {
    // --threads T: T completion queues, each with its own thread and every T-th stream.
    std::vector<std::unique_ptr<::grpc::CompletionQueue>> queues;
    for (int t = 0; t < a.threads; ++t)
      queues.push_back(std::make_unique<::grpc::CompletionQueue>());
    std::vector<std::unique_ptr<StreamCaller>> callers;
    for (int s = 0; s < a.concurrency; ++s) {
      callers.push_back(std::make_unique<StreamCaller>(stubs[s % stubs.size()].get(),
                                                       queues[s % a.threads].get(), bearer,
                                                       &a.entities, s * 37, end));
    }
    std::vector<std::thread> pollers;
    for (int t = 0; t < a.threads; ++t) {
      int open = (a.concurrency - t + a.threads - 1) / a.threads;  // streams s % T == t
      pollers.emplace_back([q = queues[t].get(), open]() mutable {
        void* tg;
        bool g;
        while (open > 0 && q->Next(&tg, &g)) {
          if (!static_cast<StreamCaller*>(tg)->Proceed(g)) --open;
        }
      });
    }
    for (auto& p : pollers) p.join();
    for (auto& q : queues) {
      q->Shutdown();
      while (q->Next(&tag, &got)) {
      }
    }
    for (auto& c : callers) {
      ok += c->latencies_ns.size();
      errors += c->errors;
      if (!c->status.ok()) {
        if (errors++ == 0) first_error = c->status.error_message();
      }
      latencies_ns.insert(latencies_ns.end(), c->latencies_ns.begin(), c->latencies_ns.end());
    }
  } else if (a.mode == "unary") {
    for (int s = 0; s < a.concurrency; ++s) issue(s);
  } else {
    return Usage();
  }
  while (in_flight > 0 && cq.Next(&tag, &got)) {
    --in_flight;
    int s = static_cast<int>(reinterpret_cast<intptr_t>(tag));
    Slot& slot = slots[s];
    auto now = Clock::now();
    if (got && slot.status.ok()) {
      ++ok;
      latencies_ns.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.start).count());
    } else {
      if (errors++ == 0) first_error = slot.status.error_message();
    }
    if (now >= end) stopping = true;
    if (!stopping) issue(s);
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double server_cpu = a.server_pid > 0 ? ProcessCpuSeconds(a.server_pid) - server_cpu0 : 0;
  const double self_cpu = SelfCpuSeconds() - self_cpu0;
  for (auto& slot : slots) delete slot.ctx;
  cq.Shutdown();
  while (cq.Next(&tag, &got)) {
  }

  std::sort(latencies_ns.begin(), latencies_ns.end());
  auto pct = [&](double p) -> double {
    if (latencies_ns.empty()) return 0;
    size_t i = std::min(latencies_ns.size() - 1, static_cast<size_t>(p * latencies_ns.size()));
    return latencies_ns[i] / 1000.0;
  };
  std::printf(
      "grpc %s: %.0f checks/s (%lld ok, %lld errors in %.2f s; %d concurrent, %d channel(s)); "
      "latency us p50 %.0f p99 %.0f p99.9 %.0f\n",
      a.mode == "stream" ? "CheckStream" : "Check", ok / elapsed, static_cast<long long>(ok),
      static_cast<long long>(errors), elapsed, a.concurrency, a.channels, pct(0.5), pct(0.99),
      pct(0.999));
  if (a.server_pid > 0) {
    std::printf(
        "cpu: server %.2f s (%.0f calls per server CPU-second), bench client %.2f s; "
        "machine has %ld cores\n",
        server_cpu, server_cpu > 0 ? ok / server_cpu : 0.0, self_cpu,
        sysconf(_SC_NPROCESSORS_ONLN));
  }
  if (errors > 0) std::printf("first error: %s\n", first_error.c_str());
  return errors > 0 ? 1 : 0;
}
