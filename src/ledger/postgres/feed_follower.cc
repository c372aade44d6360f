#include "ledger/postgres/feed_follower.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace quell::ledger {

absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> FollowLedger(Ledger* ledger,
                                                                 ChangeFeedOptions options,
                                                                 absl::Duration catch_up) {
  if (ledger == nullptr) return absl::InvalidArgumentError("FollowLedger needs a ledger");
  QUELL_ASSIGN_OR_RETURN(int64_t target, ledger->store().LastSeq());
  QUELL_ASSIGN_OR_RETURN(std::unique_ptr<PostgresChangeFeed> feed,
                         PostgresChangeFeed::StartPaged(&ledger->store(), std::move(options),
                                                        [ledger](const std::vector<Change>& page) {
                                                          ledger->Deliver(page);
                                                          return absl::OkStatus();
                                                        }));
  // Start-up only: a short poll, not worth a condition variable on the feed.
  const absl::Time deadline = absl::Now() + catch_up;
  while (feed->applied() < target && !feed->stopped() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (feed->stopped()) return feed->status();
  if (feed->applied() < target) {
    return absl::UnavailableError(absl::StrCat(
        "change feed: at seq ", feed->applied(), " after ", absl::FormatDuration(catch_up),
        ", the ledger is at ", target, ": ", feed->status().ToString()));
  }
  return feed;
}

}  // namespace quell::ledger
