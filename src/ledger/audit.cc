#include "ledger/audit.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace quell::ledger {

absl::StatusOr<AuditReport> VerifyChain(Store& store, const AuditOptions& options) {
  if (options.page_size < 1) return absl::InvalidArgumentError("page_size must be >= 1");
  AuditReport report;
  std::string prev_hash(kGenesisHash);
  int64_t after = 0;
  while (true) {
    QUELL_ASSIGN_OR_RETURN(std::vector<Change> page, store.ReadChanges(after, options.page_size));
    if (page.empty()) break;
    for (const Change& c : page) {
      const int64_t expected = report.last_seq + 1;
      auto broken = [&](std::string reason) {
        report.broken_seq = c.seq;
        report.reason = std::move(reason);
      };
      if (c.seq != expected) {
        // ReadChanges returns seq > after in order, so a repeat shows as seq < expected
        // only if the store is broken; a gap as seq > expected.
        broken(c.seq > expected ? absl::StrCat("gap: expected seq ", expected)
                                : absl::StrCat("repeat: expected seq ", expected));
        return report;
      }
      if (c.prev_hash != prev_hash) {
        broken(absl::StrCat("prev_hash does not match the hash of seq ", report.last_seq));
        return report;
      }
      if (ChainHash(c) != c.hash) {
        broken("hash mismatch: the change's fields were altered");
        return report;
      }
      prev_hash = c.hash;
      report.last_seq = c.seq;
      ++report.checked;
    }
    after = page.back().seq;
    if (options.progress && !options.progress(report)) break;
  }
  return report;
}

}  // namespace quell::ledger
