// Fuzzes what quell::client's mirror reads from a server: snapshot header and lines and
// /v1/changes pages. Never crashes; and whenever the fast path for the enforcement view
// accepts a line, the general JSON path must accept it too and give the same item.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "client/internal/feed.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quell::client::internal;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)ParseSnapshotHeader(text);
  (void)ParseChangesPage(text);
  (void)ParseSnapshotLine(text);
  FeedItem fast;
  if (ParseEnforcementLine(text, &fast)) {
    auto slow = ParseSnapshotLineJson(text);
    if (!slow.ok()) std::abort();
    if (slow->id != fast.id || slow->entity.str() != fast.entity.str() ||
        slow->action != fast.action || slow->active != fast.active ||
        slow->expires_us != fast.expires_us || slow->seq != fast.seq) {
      std::abort();
    }
  }
  return 0;
}
