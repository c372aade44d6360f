#include "ledger/postgres/change_feed.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/threads.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::ledger {

absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> PostgresChangeFeed::Start(
    Store* store, ChangeFeedOptions options, Apply apply) {
  if (!apply) return absl::InvalidArgumentError("change feed needs a store, a URL and apply");
  return StartPaged(store, std::move(options),
                    [apply = std::move(apply)](const std::vector<Change>& page) {
                      for (const Change& c : page) QUELL_RETURN_IF_ERROR(apply(c));
                      return absl::OkStatus();
                    });
}

absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> PostgresChangeFeed::StartPaged(
    Store* store, ChangeFeedOptions options, ApplyPage apply) {
  if (store == nullptr || options.url.empty() || !apply) {
    return absl::InvalidArgumentError("change feed needs a store, a URL and apply");
  }
  if (options.page < 1 || options.page > 10000 || options.after < 0 ||
      options.poll <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("change feed: bad page, after or poll");
  }
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return absl::InternalError("eventfd failed");
  std::unique_ptr<PostgresChangeFeed> feed(
      new PostgresChangeFeed(store, std::move(options), std::move(apply), fd));
  feed->thread_ = std::thread([f = feed.get()] {
    core::NameThisThread("quell-pg-feed");
    f->Run();
  });
  return feed;
}

PostgresChangeFeed::PostgresChangeFeed(Store* store, ChangeFeedOptions options, ApplyPage apply,
                                       int wake_fd)
    : store_(store),
      options_(std::move(options)),
      apply_(std::move(apply)),
      wake_fd_(wake_fd),
      applied_(options_.after) {}

PostgresChangeFeed::~PostgresChangeFeed() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  close(wake_fd_);
}

absl::Status PostgresChangeFeed::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

void PostgresChangeFeed::SetStatus(absl::Status s) {
  absl::MutexLock lock(&mu_);
  status_ = std::move(s);
}

void PostgresChangeFeed::Run() {
  PGconn* conn = nullptr;
  absl::Duration backoff = absl::Milliseconds(50);
  auto wait = [&](absl::Duration d, int extra_fd) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {extra_fd, POLLIN, 0}};
    poll(fds, extra_fd >= 0 ? 2 : 1, static_cast<int>(absl::ToInt64Milliseconds(d)));
  };
  while (!stop_.load()) {
    if (conn == nullptr) {
      const char* keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
      const char* values[] = {options_.url.c_str(), "5", "quell-feed", nullptr};
      conn = PQconnectdbParams(keys, values, 1);
      PGresult* r = PQstatus(conn) == CONNECTION_OK
                        ? PQexec(conn, absl::StrCat("LISTEN ", kPostgresChangeChannel).c_str())
                        : nullptr;
      bool ok = r != nullptr && PQresultStatus(r) == PGRES_COMMAND_OK;
      PQclear(r);
      if (!ok) {
        SetStatus(absl::UnavailableError(
            absl::StrCat("change feed: cannot listen: ", PQerrorMessage(conn))));
        PQfinish(conn);
        conn = nullptr;
        wait(backoff, -1);
        backoff = std::min(backoff * 2, absl::Seconds(5));
        continue;
      }
      backoff = absl::Milliseconds(50);
    }
    // Catch up (after LISTEN, so a commit in between is read here or notified later).
    bool read_failed = false;
    while (!stop_.load()) {
      const int64_t from = applied_.load();
      auto page = store_->ReadChanges(from, options_.page);
      if (!page.ok()) {
        SetStatus(page.status());
        read_failed = true;
        break;
      }
      int64_t expect = from + 1;
      for (const Change& c : *page) {
        if (c.seq != expect++) {
          SetStatus(absl::DataLossError(
              absl::StrCat("change feed: expected seq ", expect - 1, ", read ", c.seq)));
          stopped_.store(true);
          PQfinish(conn);
          return;
        }
      }
      if (!page->empty()) {
        absl::Status st = apply_(*page);
        if (!st.ok()) {
          SetStatus(st);
          stopped_.store(true);
          PQfinish(conn);
          return;
        }
        applied_.store(page->back().seq);
      }
      if (static_cast<int>(page->size()) < options_.page) break;
    }
    if (!read_failed) SetStatus(absl::OkStatus());
    // Wait for a notification, the poll interval, or stop.
    wait(read_failed ? backoff : options_.poll, PQsocket(conn));
    if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) {
      SetStatus(absl::UnavailableError(
          absl::StrCat("change feed: connection lost: ", PQerrorMessage(conn))));
      PQfinish(conn);
      conn = nullptr;
      continue;
    }
    while (PGnotify* n = PQnotifies(conn)) PQfreemem(n);  // hints only: we re-read anyway
  }
  PQfinish(conn);
}

}  // namespace quell::ledger
