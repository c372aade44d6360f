#include "api/index_applier.h"

#include <cstdio>

#include "core/mitigation.h"
#include "core/status.h"

namespace quell::api {

absl::Status IndexApplier::Load(ledger::Store& store) {
  QUELL_ASSIGN_OR_RETURN(
      int64_t seq, store.ScanLive([this](const core::Mitigation& m) { return index_->Apply(m); }));
  index_->set_seq(seq);
  return absl::OkStatus();
}

void IndexApplier::OnCommitted(const std::vector<ledger::Change>& changes) {
  core::Mitigation scratch;  // for changes that come without their record (another node's)
  for (const ledger::Change& c : changes) {
    if (c.kind == ledger::ChangeKind::kMitigation) {
      absl::StatusOr<const core::Mitigation*> m = ledger::MitigationOf(c, &scratch);
      // The payload was written by a Quell binary; failing to read it back is a broken
      // invariant, not bad input.
      QUELL_CHECK(m.ok());
      // Apply fails only on shapes the ledger never writes (a foreign id, 65,536 action
      // names); say so loudly rather than stop enforcing everything else.
      if (absl::Status s = index_->Apply(**m); !s.ok()) {
        std::fprintf(stderr,
                     "{\"level\":\"error\",\"msg\":\"index apply failed\",\"seq\":%lld,"
                     "\"error\":\"%s\"}\n",
                     static_cast<long long>(c.seq), std::string(s.message()).c_str());
      }
    }
    index_->set_seq(c.seq);
  }
}

}  // namespace quell::api
