// Fills a data directory with N active mitigations as fast as the ledger allows, so that
// the HTTP benchmarks can start `quell serve` on a realistic index (the server rebuilds
// its index from the store at start).
//
//   load_mitigations --data DIR [--count 1000000] [--ips 0] [--cidrs 0] [--inflight 16384]
//                    [--sync full|normal] [--ttl-days 30]
//
// Entities: user:b0 .. user:b<count-1>, then ip:10.x.y.z (--ips of them) and
// cidr:172.x.y.0/24 (--cidrs of them); action "block". Every mutation is submitted
// asynchronously with many in flight, so group commit writes them in large batches.
// The store is opened with synchronous=NORMAL by default: this is a loader, and the server
// reopens the file with its own setting (FULL unless configured).
//
// Prints the count created, the elapsed time and the rate, and exits non-zero if any
// mutation failed.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/action.h"
#include "core/entity.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"
#include "workflow/mitigations.h"

namespace quell::bench {
namespace {

struct Args {
  std::string data;
  int64_t count = 1000000;
  int64_t ips = 0;
  int64_t cidrs = 0;
  int64_t inflight = 16384;
  bool sync_full = false;
  int64_t ttl_days = 30;
};

int Usage(const char* why) {
  std::fprintf(
      stderr,
      "load_mitigations: %s\n"
      "usage: load_mitigations --data DIR [--count N] [--ips N] [--cidrs N] [--inflight N]\n"
      "                        [--sync full|normal] [--ttl-days D]\n",
      why);
  return 2;
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view k = argv[i];
    std::string_view v = argv[i + 1];
    bool ok = true;
    if (k == "--data") {
      a->data = std::string(v);
    } else if (k == "--count") {
      ok = absl::SimpleAtoi(AV(v), &a->count) && a->count >= 0;
    } else if (k == "--ips") {
      ok = absl::SimpleAtoi(AV(v), &a->ips) && a->ips >= 0 && a->ips < (1 << 24);
    } else if (k == "--cidrs") {
      ok = absl::SimpleAtoi(AV(v), &a->cidrs) && a->cidrs >= 0 && a->cidrs < (1 << 16);
    } else if (k == "--inflight") {
      ok = absl::SimpleAtoi(AV(v), &a->inflight) && a->inflight > 0;
    } else if (k == "--ttl-days") {
      ok = absl::SimpleAtoi(AV(v), &a->ttl_days) && a->ttl_days > 0;
    } else if (k == "--sync") {
      ok = v == "full" || v == "normal";
      a->sync_full = v == "full";
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  return (argc % 2) == 1 && !a->data.empty();
}

std::string EntityText(const Args& a, int64_t i) {
  if (i < a.count) return absl::StrCat("user:b", i);
  i -= a.count;
  if (i < a.ips) return absl::StrCat("ip:10.", (i >> 16) & 255, ".", (i >> 8) & 255, ".", i & 255);
  i -= a.ips;
  return absl::StrCat("cidr:172.", 16 + ((i >> 8) & 255), ".", i & 255, ".0/24");
}

// Limits the mutations in flight and records the first error. Thread-safe.
class InFlight {
 public:
  explicit InFlight(int64_t limit) : limit_(limit) {}
  void Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return pending_ < limit_; });
    ++pending_;
  }
  void Release(const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    --pending_;
    if (!s.ok()) {
      if (first_error_.ok()) first_error_ = s;
      ++failed_;
    }
    cv_.notify_all();
  }
  void WaitAll() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return pending_ == 0; });
  }
  int64_t failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }
  absl::Status first_error() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_error_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int64_t limit_;
  int64_t pending_ = 0;
  int64_t failed_ = 0;
  absl::Status first_error_;
};

int Run(const Args& a) {
  ledger::SqliteOptions so;
  so.path = a.data;
  so.synchronous_full = a.sync_full;
  auto store = ledger::OpenSqliteStore(so);
  if (!store.ok()) {
    std::fprintf(stderr, "open store: %s\n", std::string(SV(store.status().ToString())).c_str());
    return 1;
  }
  ledger::LedgerOptions lo;
  lo.max_queue = static_cast<int>(std::max<int64_t>(a.inflight * 2, lo.max_queue));
  auto ledger = ledger::Ledger::Open(*std::move(store), lo, core::RealClock::Get());
  if (!ledger.ok()) {
    std::fprintf(stderr, "open ledger: %s\n", std::string(SV(ledger.status().ToString())).c_str());
    return 1;
  }
  auto catalog = core::ActionCatalog::Default();
  if (catalog->Find("block") == nullptr) {
    std::fprintf(stderr, "the default catalog has no \"block\" action\n");
    return 1;
  }

  const int64_t total = a.count + a.ips + a.cidrs;
  InFlight inflight(a.inflight);
  auto start = std::chrono::steady_clock::now();
  int64_t next_report = 100000;
  for (int64_t i = 0; i < total; ++i) {
    auto entity = core::Entity::Parse(EntityText(a, i));
    if (!entity.ok()) {
      std::fprintf(stderr, "entity %lld: %s\n", static_cast<long long>(i),
                   std::string(SV(entity.status().message())).c_str());
      return 1;
    }
    workflow::CreateRequest r;
    r.entity = *std::move(entity);
    r.action = "block";
    r.ttl = absl::Hours(24 * a.ttl_days);
    r.reason = "bench load";
    r.actor = "bench";
    inflight.Acquire();
    (*ledger)->Submit(
        workflow::CreateMitigation(std::move(r), catalog,
                                   std::make_shared<workflow::CreateResult>()),
        [&inflight](absl::Status s, std::vector<ledger::Change>) { inflight.Release(s); });
    if (i + 1 == next_report) {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "  submitted %lld (%.0f/s)\n", static_cast<long long>(i + 1),
                   (i + 1) / secs);
      next_report += 100000;
    }
  }
  inflight.WaitAll();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto stats = (*ledger)->stats();
  ledger->reset();  // drains and closes the store
  int64_t failed = inflight.failed();
  std::printf(
      "loaded %lld mitigations (%lld users, %lld ips, %lld cidrs) in %.1f s: %.0f/s, %lld commits, "
      "max batch %lld, %lld failed\n",
      static_cast<long long>(total - failed), static_cast<long long>(a.count),
      static_cast<long long>(a.ips), static_cast<long long>(a.cidrs), secs, total / secs,
      static_cast<long long>(stats.commits), static_cast<long long>(stats.max_batch_size),
      static_cast<long long>(failed));
  if (failed > 0) {
    std::fprintf(stderr, "first error: %s\n",
                 std::string(SV(inflight.first_error().ToString())).c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace quell::bench

int main(int argc, char** argv) {
  quell::bench::Args args;
  if (!quell::bench::ParseArgs(argc, argv, &args)) return quell::bench::Usage("bad arguments");
  return quell::bench::Run(args);
}
