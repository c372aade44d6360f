#include "ledger/postgres/lease.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/threads.h"
#include "pg/conn.h"

namespace quell::ledger {
namespace {

// Takes the row if it is free, ours, or expired; the server's clock decides expiry.
constexpr char kAcquire[] =
    "INSERT INTO leases (name, holder, expires_at) "
    "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3::double precision)) "
    "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at "
    "WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < clock_timestamp() "
    "RETURNING holder";
constexpr char kRelease[] = "DELETE FROM leases WHERE name = $1 AND holder = $2";

std::string DefaultHolder() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return absl::StrCat(host, ":", getpid(), ":", core::RandomHex(6));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresLease>> PostgresLease::Start(LeaseOptions options,
                                                                    OnChange on_change) {
  if (options.url.empty() || options.name.empty()) {
    return absl::InvalidArgumentError("lease needs a URL and a name");
  }
  if (options.renew <= absl::ZeroDuration() || options.renew * 2 >= options.ttl) {
    return absl::InvalidArgumentError("lease: renew must be positive and below ttl / 2");
  }
  if (options.holder.empty()) options.holder = DefaultHolder();
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return absl::InternalError("eventfd failed");
  std::unique_ptr<PostgresLease> lease(
      new PostgresLease(std::move(options), std::move(on_change), fd));
  lease->thread_ = std::thread([l = lease.get()] {
    core::NameThisThread("quell-pg-lease");
    l->Run();
  });
  return lease;
}

PostgresLease::PostgresLease(LeaseOptions options, OnChange on_change, int wake_fd)
    : options_(std::move(options)), on_change_(std::move(on_change)), wake_fd_(wake_fd) {}

PostgresLease::~PostgresLease() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  close(wake_fd_);
}

void PostgresLease::Run() {
  using pg::Conn;
  using pg::P;
  // A statement never blocks past the next renewal, so belief in the lease is
  // re-evaluated well before the row can expire (renew < ttl / 2).
  pg::ConnOptions co;
  co.url = options_.url;
  co.connect_timeout_s = std::max<int64_t>(2, absl::ToInt64Seconds(options_.renew));
  co.statement_timeout_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.renew));
  co.lock_timeout_ms = co.statement_timeout_ms;
  std::unique_ptr<Conn> conn;
  absl::Time valid_until = absl::InfinitePast();
  bool believed = false;
  auto set_held = [&](bool h) {
    held_.store(h);
    if (h != believed) {
      believed = h;
      std::fprintf(stderr,
                   "{\"level\":\"info\",\"msg\":\"lease %s\",\"lease\":\"%s\",\"holder\":\"%s\"}\n",
                   h ? "acquired" : "lost", options_.name.c_str(), options_.holder.c_str());
      if (on_change_) on_change_(h);
    }
  };
  while (!stop_.load()) {
    const absl::Time sent = absl::Now();
    bool answered = false, got = false;
    if (pg::Reconnect(conn, co).ok()) {  // a lost connection is re-opened here
      auto r = conn->Query(
          kAcquire, {P(options_.name), P(options_.holder), P(absl::ToDoubleSeconds(options_.ttl))});
      if (r.ok()) {
        answered = true;
        got = r->rows() == 1;
      }
    }
    if (got) valid_until = sent + options_.ttl;
    // No answer: we may still hold it until our own bound; a "no" means another node
    // holds a row that is not expired, which it can only have taken after ours expired.
    set_held(got || (!answered && absl::Now() < valid_until));
    absl::Duration wait = options_.renew;
    if (held_.load()) wait = std::min(wait, valid_until - absl::Now());
    pollfd pfd{wake_fd_, POLLIN, 0};
    poll(&pfd, 1, static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(wait))));
    if (held_.load() && absl::Now() >= valid_until) set_held(false);
  }
  if (believed) {
    if (conn != nullptr) (void)conn->Query(kRelease, {P(options_.name), P(options_.holder)});
    set_held(false);
  }
}

}  // namespace quell::ledger
