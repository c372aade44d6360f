#include "api/index_applier.h"

#include <cstdio>

#include "core/mitigation.h"
#include "core/status.h"

namespace quell::api {

absl::Status IndexApplier::Load(ledger::Store& store) {
  QUELL_ASSIGN_OR_RETURN(int64_t seq, store.ScanLive([this](const core::Mitigation& m) {
    index_->Apply(m);
    return absl::OkStatus();
  }));
  index_->set_seq(seq);
  return absl::OkStatus();
}

void IndexApplier::OnCommitted(const std::vector<ledger::Change>& changes) {
  for (const ledger::Change& c : changes) {
    if (c.kind == ledger::ChangeKind::kMitigation) {
      auto m = core::MitigationFromJson(c.payload);
      // The payload was written by this binary a moment ago; failing to read it back is a
      // broken invariant, not bad input.
      QUELL_CHECK(m.ok());
      index_->Apply(*m);
    }
    index_->set_seq(c.seq);
  }
}

}  // namespace quell::api
