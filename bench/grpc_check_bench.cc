// gRPC Enforcement.Check throughput: N concurrent calls in flight (default 32) on one
// channel (HTTP/2 multiplexes them), for a fixed time, with the async client API. Prints
// the calls/s, the error count and latency percentiles.
//
//   grpc_check_bench --target 127.0.0.1:50051 --key KEY [--concurrency 32]
//                    [--seconds 10] [--entities user:a,ip:10.0.0.1] [--channels 1]
//
// Entities cycle through the given list (default: user:bench-0..999, mostly misses).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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
    } else if (f == "--channels") {
      a.channels = std::atoi(v.c_str());
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
  if (a.key.empty() || a.concurrency < 1 || a.seconds < 1 || a.channels < 1) return Usage();
  if (a.entities.empty()) {
    for (int i = 0; i < 1000; ++i) a.entities.push_back("user:bench-" + std::to_string(i));
  }

  std::vector<std::unique_ptr<v1::Enforcement::Stub>> stubs;
  for (int c = 0; c < a.channels; ++c) {
    ::grpc::ChannelArguments ch_args;
    ch_args.SetInt("grpc.channel_id", c);  // distinct channels, distinct connections
    stubs.push_back(v1::Enforcement::NewStub(::grpc::CreateCustomChannel(
        a.target, ::grpc::InsecureChannelCredentials(), ch_args)));
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

  const auto start = Clock::now();
  const auto end = start + std::chrono::seconds(a.seconds);
  for (int s = 0; s < a.concurrency; ++s) issue(s);
  void* tag;
  bool got;
  while (in_flight > 0 && cq.Next(&tag, &got)) {
    --in_flight;
    int s = static_cast<int>(reinterpret_cast<intptr_t>(tag));
    Slot& slot = slots[s];
    auto now = Clock::now();
    if (got && slot.status.ok()) {
      ++ok;
      latencies_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.start).count());
    } else {
      if (errors++ == 0) first_error = slot.status.error_message();
    }
    if (now >= end) stopping = true;
    if (!stopping) issue(s);
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
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
      "grpc Check: %.0f calls/s (%lld ok, %lld errors in %.2f s; %d concurrent, %d channel(s)); "
      "latency us p50 %.0f p99 %.0f p99.9 %.0f\n",
      ok / elapsed, static_cast<long long>(ok), static_cast<long long>(errors), elapsed,
      a.concurrency, a.channels, pct(0.5), pct(0.99), pct(0.999));
  if (errors > 0) std::printf("first error: %s\n", first_error.c_str());
  return errors > 0 ? 1 : 0;
}
