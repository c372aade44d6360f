// Several nodes on one PostgreSQL ledger: drives a Ledger's listeners (the index applier,
// policy holder, safeguards, change-feed waiters...) from the database's change feed, so
// they see every node's writes, each change once, in seq order.
//
//   LedgerOptions o;  o.external_delivery = true;          // listeners hear only Deliver
//   auto ledger = Ledger::Open(OpenPostgresStore(...), o, clock);
//   ... load the index (ScanLive -> seq S), register listeners ...
//   auto follower = FollowLedger(ledger.get(), {.url = url, .after = S});
//
// The node's own commits reach its listeners through the feed too (never directly), and
// its ledger completes a batch only once the feed delivered it: an acknowledged write is
// in this node's index, as with SQLite. See docs/cluster.md.
//
// Thread-safety: the returned feed's methods are thread-safe; listeners run on its
// thread. Ownership: borrows `ledger` (and its store), which must outlive the feed:
// destroy the feed before the ledger.
#ifndef QUELL_LEDGER_POSTGRES_FEED_FOLLOWER_H_
#define QUELL_LEDGER_POSTGRES_FEED_FOLLOWER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ledger/ledger.h"
#include "ledger/postgres/change_feed.h"

namespace quell::ledger {

//! Starts a feed after `options.after` that hands each page to ledger->Deliver, and
//! returns once it delivered the last seq committed when it started (so a node starts
//! serving with every listener current). kInvalidArgument on a null ledger or bad
//! options; kUnavailable if the store cannot be read or the feed has not caught up
//! within `catch_up` (a listener's error or kDataLoss: that status).
absl::StatusOr<std::unique_ptr<PostgresChangeFeed>> FollowLedger(
    Ledger* ledger, ChangeFeedOptions options, absl::Duration catch_up = absl::Seconds(60));

}  // namespace quell::ledger

#endif  // QUELL_LEDGER_POSTGRES_FEED_FOLLOWER_H_
