// Parsing what the mirror reads: the snapshot's NDJSON lines and /v1/changes pages.
// Only the fields the mirror keeps are read (id, entity, action, state, expires_at).
//
// Thread-safety: pure functions.
#ifndef QUELL_CLIENT_INTERNAL_FEED_H_
#define QUELL_CLIENT_INTERNAL_FEED_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/entity.h"

namespace quell::client::internal {

struct FeedItem {
  int64_t seq = 0;  // the change's seq (feed pages); 0 in a snapshot
  std::string id;
  core::Entity entity;
  std::string action;
  bool active = false;  // upsert (true) or delete (false)
  int64_t expires_us = 0;
};

//! The first snapshot line, {"seq": N}. kDataLoss otherwise.
absl::StatusOr<int64_t> ParseSnapshotHeader(std::string_view line);
//! A snapshot line: one active mitigation. kDataLoss if malformed. Lines of the
//! `view=enforcement` shape take ParseEnforcementLine; anything else is parsed as JSON.
absl::StatusOr<FeedItem> ParseSnapshotLine(std::string_view line);
// The values of an enforcement-view line, as views into the line.
struct EnforcementView {
  std::string_view id;
  std::string_view entity;  // as written: not yet validated nor canonical
  std::string_view action;
  int64_t expires_us = 0;
};
//! The shape test of ParseEnforcementLine, without building an item: true and `out`
//! filled for a line of exactly that shape (the entity still to be parsed), else false.
bool ParseEnforcementView(std::string_view line, EnforcementView* out);
//! The fast path: exactly {"id":"…","entity":"…","action":"…","state":"active",
//! "expires_at":"…"} as the server writes it, with no escape in any value and a UTC
//! time. True and `out` filled, or false (nothing decided: parse it as JSON). Whenever
//! it returns true, ParseSnapshotLineJson gives the same item (the fuzz target checks).
bool ParseEnforcementLine(std::string_view line, FeedItem* out);
//! The general path: the line as a JSON object (whole records or the enforcement view).
absl::StatusOr<FeedItem> ParseSnapshotLineJson(std::string_view line);

struct ChangesPage {
  std::vector<FeedItem> items;  // in the page's order
  int64_t next = 0;             // the seq to continue after
};
//! A /v1/changes reply body. kDataLoss if malformed.
absl::StatusOr<ChangesPage> ParseChangesPage(std::string_view body);

}  // namespace quell::client::internal

#endif  // QUELL_CLIENT_INTERNAL_FEED_H_
