#include "ledger/audit.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"

namespace quell::ledger {
namespace {

// Live mitigations by a 64-bit hash of their id (a collision among 10^8 ids is about
// one chance in 4,000; it could only hide a disagreement, never invent one), with
// the seq of the change that made each what it is. Half the memory of the ids.
using LiveBySeq = absl::flat_hash_map<uint64_t, int64_t>;

uint64_t Key(std::string_view id) { return absl::Hash<std::string_view>{}(id); }

// The subject of change `seq`, for a message ("" if it cannot be read).
std::string SubjectOf(Store& store, int64_t seq) {
  auto read = store.ReadChanges(seq - 1, 1);
  if (!read.ok() || read->empty() || (*read)[0].seq != seq) return "";
  return (*read)[0].subject;
}

// Why `view` (the mitigations table's live rows) is not `chain` (the live set the
// changes up to the view's head make), or nullopt if they agree. Sets *seq to the change
// the reason is about.
std::optional<std::string> ViewDisagreement(Store& store, const LiveBySeq& view,
                                            const LiveBySeq& chain, int64_t* seq) {
  for (const auto& [key, chain_seq] : chain) {
    auto it = view.find(key);
    if (it != view.end() && it->second == chain_seq) continue;
    *seq = chain_seq;
    return absl::StrCat(
        "the mitigations table disagrees with the chain: change ", chain_seq, " leaves mitigation ",
        SubjectOf(store, chain_seq), " live, the table ",
        it == view.end() ? "does not have it live" : absl::StrCat("has it as of seq ", it->second));
  }
  for (const auto& [key, view_seq] : view) {
    if (chain.contains(key)) continue;
    *seq = view_seq;
    const std::string subject = SubjectOf(store, view_seq);
    return absl::StrCat("the mitigations table disagrees with the chain: it has a live mitigation ",
                        subject.empty() ? "" : absl::StrCat(subject, " "), "as of seq ", view_seq,
                        ", which the chain does not leave live");
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<AuditReport> VerifyChain(Store& store, const AuditOptions& options) {
  if (options.page_size < 1) return absl::InvalidArgumentError("page_size must be >= 1");
  AuditReport report;
  // The live mitigations as the server loads them (its index is built from the same
  // table), in one snapshot whose head is `view_head`: the changes up to that head must
  // leave exactly these live, each as of its latest change.
  LiveBySeq view, chain;
  absl::StatusOr<int64_t> scanned = store.ScanLive([&](const core::Mitigation& m) {
    view[Key(m.id)] = m.seq;
    return absl::OkStatus();
  });
  // A row whose change does not parse as a mitigation fails the scan: reported once the
  // walk has said whether that change was altered.
  if (!scanned.ok() && scanned.status().code() != absl::StatusCode::kDataLoss) {
    return scanned.status();
  }
  const int64_t view_head = scanned.ok() ? *scanned : std::numeric_limits<int64_t>::max();
  auto check_view = [&]() -> bool {
    int64_t seq = 0;
    std::optional<std::string> reason;
    if (!scanned.ok()) {
      reason = absl::StrCat("the mitigations table cannot be read: ", scanned.status().message());
    } else {
      reason = ViewDisagreement(store, view, chain, &seq);
    }
    if (!reason) return true;
    report.broken_seq = seq > 0 ? seq : std::max<int64_t>(report.last_seq, 1);
    report.reason = *std::move(reason);
    return false;
  };
  bool view_checked = scanned.ok() && *scanned == 0 && view.empty();

  std::string prev_hash(kGenesisHash);
  // From the lowest seq there is: a row below 1 is not a ledger position, and would be
  // shown in an entity's timeline while a walk from 1 never saw it.
  int64_t after = std::numeric_limits<int64_t>::min();
  while (true) {
    QUELL_ASSIGN_OR_RETURN(std::vector<Change> page, store.ReadChanges(after, options.page_size));
    if (page.empty()) break;
    for (const Change& c : page) {
      const int64_t expected = report.last_seq + 1;
      auto broken = [&](std::string reason) {
        report.broken_seq = c.seq;
        report.reason = std::move(reason);
      };
      if (c.seq < 1) {
        broken(absl::StrCat("seq ", c.seq, " is not a ledger position (the chain starts at 1)"));
        return report;
      }
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
      if (c.kind == ChangeKind::kMitigation && c.seq <= view_head) {
        absl::StatusOr<core::Mitigation> m = core::MitigationFromJson(c.payload);
        if (!m.ok()) {  // hashed as it is: written so, not altered since
          broken(absl::StrCat("the payload is not a mitigation: ", m.status().message()));
          return report;
        }
        if (core::IsLive(m->state)) {
          chain[Key(c.subject)] = c.seq;
        } else {
          chain.erase(Key(c.subject));
        }
      }
      prev_hash = c.hash;
      report.last_seq = c.seq;
      report.last_hash = c.hash;
      ++report.checked;
      if (c.seq == view_head) {
        view_checked = true;
        if (!check_view()) return report;
      }
    }
    after = page.back().seq;
    if (options.progress && !options.progress(report)) return report;
  }
  // The walk ended before the view's head (the changes after it were cut): the table
  // still refers to them.
  if (!view_checked && !check_view()) return report;
  // Nor may a policy set come from a change the chain does not have.
  QUELL_ASSIGN_OR_RETURN(std::optional<PolicySetVersion> latest, store.LatestPolicySet());
  if (latest && latest->seq > report.last_seq) {
    report.broken_seq = latest->seq;
    report.reason = absl::StrCat("policy set version ", latest->version, " was published by seq ",
                                 latest->seq, ", beyond the chain's last change ", report.last_seq);
  }
  return report;
}

}  // namespace quell::ledger
