#include "ledger/audit.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "ledger/internal/payloads.h"

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

// The enforcement fields of an active mitigation, as one number to compare.
uint64_t EntryHash(std::string_view entity, std::string_view action, absl::Time expires_at) {
  return absl::HashOf(entity, action, absl::ToUnixMicros(expires_at));
}

// The lists as their changes leave them.
struct ListState {
  bool is_protected = false;
  std::string kind;
  absl::flat_hash_set<std::string> entries;
};

// Why the list entries (as of one snapshot) are not what the changes up to it make them,
// or nullopt.
std::optional<std::string> EntriesDisagreement(
    const std::map<std::string, ListState, std::less<>>& chain,
    const std::map<std::string, absl::flat_hash_set<std::string>, std::less<>>& entries) {
  for (const auto& [name, state] : chain) {
    auto it = entries.find(name);
    for (const std::string& e : state.entries) {
      if (it == entries.end() || !it->second.contains(e)) {
        return absl::StrCat("the list tables disagree with the chain: the changes put ", e,
                            " on list ", name, ", the table does not have it");
      }
    }
  }
  for (const auto& [name, set] : entries) {
    auto it = chain.find(name);
    for (const std::string& e : set) {
      if (it == chain.end() || !it->second.entries.contains(e)) {
        return absl::StrCat("the list tables disagree with the chain: list ", name, " holds ", e,
                            ", which no change leaves on it");
      }
    }
  }
  return std::nullopt;
}

// Why the lists' flags are not what the changes make them, or nullopt. `chain`: each
// list's protected flag and kind as the changes leave them (no entries).
std::optional<std::string> FlagsDisagreement(
    const std::map<std::string, ListState, std::less<>>& chain,
    const std::vector<ListInfo>* flags) {
  for (const ListInfo& l : *flags) {
    auto it = chain.find(l.name);
    if (it == chain.end()) {
      return absl::StrCat("the list tables disagree with the chain: list ", l.name,
                          " exists, no change made it");
    }
    if (it->second.is_protected != l.is_protected || it->second.kind != l.kind) {
      return absl::StrCat("the list tables disagree with the chain: list ", l.name, " is ",
                          l.is_protected ? "protected" : "not protected", " (kind \"", l.kind,
                          "\"), the changes leave it ",
                          it->second.is_protected ? "protected" : "not protected", " (kind \"",
                          it->second.kind, "\")");
    }
  }
  if (flags->size() != chain.size()) {
    return absl::StrCat("the list tables disagree with the chain: ", flags->size(),
                        " lists, the changes make ", chain.size());
  }
  return std::nullopt;
}

// Why a row of the mitigations table is not the mitigation its change (the one its seq
// names) records, or "" if it is.
std::string RowDisagreement(const Store::MitigationRow& row) {
  const std::string head = absl::StrCat(
      "the mitigations table disagrees with the chain: the row of mitigation ", AV(row.id), " ");
  if (row.payload.empty()) {
    return absl::StrCat(head, "points at seq ", row.seq, ", which is no change");
  }
  absl::StatusOr<core::Mitigation> m = core::MitigationFromJson(row.payload);
  if (!m.ok() || m->id != row.id) {
    return absl::StrCat(head, "points at change ", row.seq, ", which is not one of its own");
  }
  const std::string created = core::FormatRfc3339(row.created_at);
  const std::string chain_created = core::FormatRfc3339(m->created_at);
  const std::pair<std::string_view, std::pair<std::string_view, std::string_view>> columns[] = {
      {"entity", {row.entity, m->entity.str()}},
      {"action", {row.action, m->action}},
      {"state", {row.state, core::StateName(m->state)}},
      {"source", {row.source, m->source}},
      {"policy", {row.policy, m->policy}},
      {"created_at",
       {absl::ToUnixMicros(row.created_at) == absl::ToUnixMicros(m->created_at)
            ? std::string_view(chain_created)
            : std::string_view(created),
        chain_created}},
  };
  for (const auto& [name, values] : columns) {
    if (values.first == values.second) continue;
    return absl::StrCat(head, "has ", AV(name), " \"", AV(values.first),
                        "\", its latest change (seq ", row.seq, ") \"", AV(values.second), "\"");
  }
  return "";
}

}  // namespace

absl::StatusOr<AuditReport> VerifyChain(Store& store, const AuditOptions& options) {
  if (options.page_size < 1) return absl::InvalidArgumentError("page_size must be >= 1");
  AuditReport report;
  auto fail = [&](int64_t seq, std::string reason) {
    report.broken = true;
    report.broken_seq = seq;
    report.reason = std::move(reason);
  };
  // The head before the walk: on PostgreSQL chain_head, which every commit writes, so a
  // walk that ends below it met a cut tail (a change no table refers to, deleted). On
  // SQLite the head is the last row, which a cut lowers too.
  QUELL_ASSIGN_OR_RETURN(const int64_t head_before, store.LastSeq());
  // What the server serves from outside the chain, each read in one snapshot whose head
  // is known: the changes up to that head must make exactly that. (1) The live
  // mitigations (ScanLive, through each row's latest change): each live, as of that change.
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
  // (2) What the index loads: each active row's own id, entity, action and expiry columns.
  // id -> the enforcement fields' hash; the chain's with the seq of the change that set them.
  absl::flat_hash_map<uint64_t, uint64_t> entries_view;
  absl::flat_hash_map<uint64_t, std::pair<uint64_t, int64_t>> entries_chain;
  int64_t entries_rows = 0;
  absl::StatusOr<int64_t> entries_scanned = store.ScanActiveEntries(
      [](int64_t) {},
      [&](const Store::ActiveEntry& e) {
        ++entries_rows;
        entries_view[Key(e.id)] = EntryHash(e.entity, e.action, e.expires_at);
        return absl::OkStatus();
      });
  // A backend that reads the entries from the changes fails on an altered payload, as
  // ScanLive does: reported after the walk, which names the change.
  if (!entries_scanned.ok() && !absl::IsDataLoss(entries_scanned.status()) &&
      !absl::IsInvalidArgument(entries_scanned.status())) {
    return entries_scanned.status();
  }
  const int64_t entries_head =
      entries_scanned.ok() ? *entries_scanned : std::numeric_limits<int64_t>::max();
  // (3) What the scheduler goes by: each row's due_at (an active row's expiry, a scheduled
  // one's start). A scheduled row's start moved later would keep its mitigation from ever
  // being enforced.
  // id -> due_at (micros); the chain's with the seq of the change that set it.
  absl::flat_hash_map<uint64_t, int64_t> due_view;
  absl::flat_hash_map<uint64_t, std::pair<int64_t, int64_t>> due_chain;
  int64_t due_rows = 0;
  QUELL_ASSIGN_OR_RETURN(const int64_t due_head, store.ScanDue([](int64_t) {},
                                                               [&](const Store::DueEntry& e) {
                                                                 ++due_rows;
                                                                 due_view[Key(e.id)] =
                                                                     absl::ToUnixMicros(e.due_at);
                                                                 return absl::OkStatus();
                                                               }));
  // (4) The lists: entries as of one snapshot; their flags are read just after it.
  std::map<std::string, absl::flat_hash_set<std::string>, std::less<>> list_view;
  QUELL_ASSIGN_OR_RETURN(const int64_t lists_head,
                         store.ScanListEntries([&](std::string_view list, std::string_view e) {
                           list_view[std::string(list)].emplace(e);
                           return absl::OkStatus();
                         }));
  QUELL_ASSIGN_OR_RETURN(const std::vector<ListInfo> list_flags, store.Lists());
  std::map<std::string, ListState, std::less<>> lists_chain;
  int64_t last_list_change = 0;
  int64_t chain_policy_version = 0;
  // Every mitigation the walk meets, by a 64-bit hash of its id (16 bytes or so each): the
  // count the mitigations table's rows must reach (step 5).
  absl::flat_hash_set<size_t> mitigation_ids;

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
    fail(seq > 0 ? seq : std::max<int64_t>(report.last_seq, 1), *std::move(reason));
    return false;
  };
  auto check_entries = [&]() -> bool {
    if (!entries_scanned.ok()) {
      fail(std::max<int64_t>(report.last_seq, 1),
           absl::StrCat("the active mitigations cannot be read: ",
                        entries_scanned.status().message()));
      return false;
    }
    for (const auto& [key, hash] : entries_view) {
      auto it = entries_chain.find(key);
      if (it != entries_chain.end() && it->second.first == hash) continue;
      if (it == entries_chain.end()) {
        fail(std::max<int64_t>(std::min(report.last_seq, entries_head), 1),
             "the mitigations table serves an active mitigation (id, entity, action, expiry "
             "columns) that no change leaves active");
      } else {  // named: its latest change is known
        const int64_t seq = it->second.second;
        fail(seq, absl::StrCat("the mitigations table serves mitigation ", SubjectOf(store, seq),
                               " with entity, action or expiry columns that are not those of "
                               "its latest change (seq ",
                               seq, ")"));
      }
      return false;
    }
    if (entries_rows != static_cast<int64_t>(entries_chain.size())) {
      fail(std::max<int64_t>(std::min(report.last_seq, entries_head), 1),
           absl::StrCat("the mitigations table serves ", entries_rows,
                        " active mitigations, the changes leave ", entries_chain.size()));
      return false;
    }
    return true;
  };
  auto check_due = [&]() -> bool {
    const int64_t at = std::max<int64_t>(std::min(report.last_seq, due_head), 1);
    for (const auto& [key, due] : due_view) {
      auto it = due_chain.find(key);
      if (it != due_chain.end() && it->second.first == due) continue;
      if (it == due_chain.end()) {
        // Named by a second read (the first kept hashes only, to keep memory small): the
        // row with this id's hash.
        std::string id;
        const auto& wanted = key;  // (clang 14, scripts/fuzz, cannot capture a binding)
        (void)store.ScanDue([](int64_t) {},
                            [&](const Store::DueEntry& e) {
                              if (id.empty() && Key(e.id) == wanted) id = std::string(e.id);
                              return absl::OkStatus();
                            });
        fail(at, absl::StrCat("the mitigations table gives a transition time (due_at) to ",
                              id.empty() ? "a mitigation" : absl::StrCat("mitigation ", id),
                              " that no change leaves active or scheduled"));
      } else {
        const int64_t seq = it->second.second;
        fail(seq, absl::StrCat("the mitigations table disagrees with the chain: change ", seq,
                               " makes mitigation ", SubjectOf(store, seq), " due at ",
                               core::FormatRfc3339(absl::FromUnixMicros(it->second.first)),
                               ", the table's due_at says ",
                               core::FormatRfc3339(absl::FromUnixMicros(due))));
      }
      return false;
    }
    if (due_rows != static_cast<int64_t>(due_chain.size())) {
      fail(at, absl::StrCat("the mitigations table has ", due_rows,
                            " rows with a transition time (due_at), the changes leave ",
                            due_chain.size(), " mitigations active or scheduled"));
      return false;
    }
    return true;
  };
  // The lists' flags as the changes up to lists_head leave them (kept for after the walk).
  std::map<std::string, ListState, std::less<>> flags_at_head;
  auto check_lists = [&]() -> bool {
    for (const auto& [name, state] : lists_chain) {
      flags_at_head[name] = ListState{state.is_protected, state.kind, {}};
    }
    std::optional<std::string> reason = EntriesDisagreement(lists_chain, list_view);
    if (!reason) return true;
    fail(std::max<int64_t>(std::min(report.last_seq, lists_head), 1), *std::move(reason));
    return false;
  };
  struct Checkpoint {
    int64_t head;
    std::function<bool()> check;
    bool done = false;
  };
  Checkpoint checkpoints[] = {{view_head, check_view},
                              {entries_head, check_entries},
                              {due_head, check_due},
                              {lists_head, check_lists}};
  // An empty ledger's snapshots are checked before the walk (which sees no change).
  for (Checkpoint& cp : checkpoints) {
    if (cp.head == 0) {
      cp.done = true;
      if (!cp.check()) return report;
    }
  }

  std::string prev_hash(kGenesisHash);
  // From the lowest seq there is: a row below 1 is not a ledger position, and would be
  // shown in an entity's timeline while a walk from 1 never saw it.
  int64_t after = std::numeric_limits<int64_t>::min();
  while (true) {
    QUELL_ASSIGN_OR_RETURN(std::vector<Change> page, store.ReadChanges(after, options.page_size));
    if (page.empty()) break;
    for (const Change& c : page) {
      const int64_t expected = report.last_seq + 1;
      if (c.seq < 1) {
        fail(c.seq,
             absl::StrCat("seq ", c.seq, " is not a ledger position (the chain starts at 1)"));
        return report;
      }
      if (c.seq != expected) {
        // ReadChanges returns seq > after in order, so a repeat shows as seq < expected
        // only if the store is broken; a gap as seq > expected.
        fail(c.seq, c.seq > expected ? absl::StrCat("gap: expected seq ", expected)
                                     : absl::StrCat("repeat: expected seq ", expected));
        return report;
      }
      if (c.prev_hash != prev_hash) {
        fail(c.seq, absl::StrCat("prev_hash does not match the hash of seq ", report.last_seq));
        return report;
      }
      if (ChainHash(c) != c.hash) {
        fail(c.seq, "hash mismatch: the change's fields were altered");
        return report;
      }
      if (c.kind == ChangeKind::kMitigation) {
        mitigation_ids.insert(absl::HashOf(c.subject));
        absl::StatusOr<core::Mitigation> m = core::MitigationFromJson(c.payload);
        if (!m.ok()) {  // hashed as it is: written so, not altered since
          fail(c.seq, absl::StrCat("the payload is not a mitigation: ", m.status().message()));
          return report;
        }
        if (c.seq <= view_head) {
          if (core::IsLive(m->state)) {
            chain[Key(c.subject)] = c.seq;
          } else {
            chain.erase(Key(c.subject));
          }
        }
        if (c.seq <= entries_head) {
          if (m->state == core::MitigationState::kActive) {
            entries_chain[Key(m->id)] = {EntryHash(m->entity.str(), m->action, m->expires_at),
                                         c.seq};
          } else {
            entries_chain.erase(Key(m->id));
          }
        }
        if (c.seq <= due_head) {
          if (m->state == core::MitigationState::kActive) {
            due_chain[Key(m->id)] = {absl::ToUnixMicros(m->expires_at), c.seq};
          } else if (m->state == core::MitigationState::kScheduled) {
            due_chain[Key(m->id)] = {absl::ToUnixMicros(m->starts_at), c.seq};
          } else {
            due_chain.erase(Key(m->id));
          }
        }
      } else if (c.kind == ChangeKind::kList) {
        absl::StatusOr<internal::ListChange> lc = internal::ParseListChange(c.payload);
        if (!lc.ok()) {
          fail(c.seq, absl::StrCat("the payload is not a list change: ", lc.status().message()));
          return report;
        }
        last_list_change = c.seq;
        if (c.seq <= lists_head) {
          ListState& l = lists_chain[lc->list];
          if (lc->is_protected) l.is_protected = *lc->is_protected;
          if (lc->kind) l.kind = *lc->kind;
          for (std::string& e : lc->add) l.entries.insert(std::move(e));
          for (const std::string& e : lc->remove) l.entries.erase(e);
        }
      } else if (c.kind == ChangeKind::kPolicySet) {
        // Policy sets are written once: the table's row must be the change's, as served.
        absl::StatusOr<internal::PolicySetChange> ps = internal::ParsePolicySetChange(c.payload);
        if (!ps.ok()) {
          fail(c.seq, absl::StrCat("the payload is not a policy set: ", ps.status().message()));
          return report;
        }
        QUELL_ASSIGN_OR_RETURN(std::optional<PolicySetVersion> stored,
                               store.GetPolicySet(ps->version));
        if (!stored || stored->seq != c.seq || stored->yaml != ps->yaml) {
          fail(c.seq, absl::StrCat("the policy_sets table disagrees with the chain: version ",
                                   ps->version, " is ",
                                   !stored ? "missing"
                                   : stored->seq != c.seq
                                       ? absl::StrCat("recorded as published by seq ", stored->seq)
                                       : "not the YAML this change published"));
          return report;
        }
        chain_policy_version = ps->version;
      }
      prev_hash = c.hash;
      report.last_seq = c.seq;
      report.last_hash = c.hash;
      ++report.checked;
      for (Checkpoint& cp : checkpoints) {
        if (cp.done || cp.head != c.seq) continue;
        cp.done = true;
        if (!cp.check()) return report;
      }
    }
    after = page.back().seq;
    if (options.progress && !options.progress(report)) return report;
  }
  // Changes past the store's head (read after the walk: a running server's later commits
  // only raise it): on PostgreSQL the head is chain_head, written by each commit, so a
  // row beyond it was not committed by Quell (an appended one, hash chained or not; every
  // later write would then collide with it).
  QUELL_ASSIGN_OR_RETURN(int64_t head_after, store.LastSeq());
  if (report.last_seq > head_after) {
    fail(report.last_seq, absl::StrCat("seq ", report.last_seq, " is past the ledger's head ",
                                       head_after, " (a change no commit wrote)"));
    return report;
  }
  if (report.last_seq < head_before) {
    fail(report.last_seq + 1,
         absl::StrCat("the changes end at seq ", report.last_seq, ", the ledger's head was ",
                      head_before, " when the audit began: the changes after ", report.last_seq,
                      " were deleted"));
    return report;
  }
  // The walk ended before a snapshot's head (the changes after it were cut): the tables
  // still refer to them.
  for (Checkpoint& cp : checkpoints) {
    if (!cp.done && !cp.check()) return report;
  }
  // The flags were read after the entries' snapshot, before the walk: comparable with
  // those at its head unless a list changed after it (a running server's), which the walk
  // then saw, as it sees every change committed before it started.
  if (last_list_change <= lists_head) {
    if (std::optional<std::string> reason = FlagsDisagreement(flags_at_head, &list_flags)) {
      fail(std::max<int64_t>(std::min(report.last_seq, lists_head), 1), *std::move(reason));
      return report;
    }
  }
  // (5) Every row of the mitigations table, live or not, against the change its seq names:
  // the list filters (source, policy, state) and the timelines read these columns. After
  // the walk, so that an altered change is reported as such first.
  std::string row_reason;
  int64_t row_seq = 0;
  int64_t rows_head = 0, row_count = 0;
  absl::Status rows = store
                          .ScanMitigationRows([&](int64_t seq) { rows_head = seq; },
                                              [&](const Store::MitigationRow& row) {
                                                ++row_count;
                                                row_reason = RowDisagreement(row);
                                                if (row_reason.empty()) return absl::OkStatus();
                                                row_seq = row.seq;
                                                return absl::CancelledError("found");
                                              })
                          .status();
  if (!row_reason.empty()) {
    fail(std::max<int64_t>(row_seq, 1), std::move(row_reason));
    return report;
  }
  QUELL_RETURN_IF_ERROR(rows);
  // Every mitigation the chain made has its row, ended ones too (a row is never deleted):
  // a deleted row of an ended mitigation passed the checks above, which read the rows
  // there are. Counted when the rows' snapshot is the walk's head (nothing committed since:
  // an audit of a stopped server); a running server's later creations would blur the count.
  if (rows_head == report.last_seq && row_count < static_cast<int64_t>(mitigation_ids.size())) {
    fail(std::max<int64_t>(report.last_seq, 1),
         absl::StrCat("the mitigations table has ", row_count, " rows for the ",
                      mitigation_ids.size(), " mitigations of the chain (a row is never deleted: ",
                      static_cast<int64_t>(mitigation_ids.size()) - row_count, " missing)"));
    return report;
  }
  // The policy set served is the newest the table holds: it must be the chain's newest.
  QUELL_ASSIGN_OR_RETURN(std::optional<PolicySetVersion> latest, store.LatestPolicySet());
  if (latest && latest->seq > report.last_seq) {
    fail(latest->seq,
         absl::StrCat("policy set version ", latest->version, " was published by seq ", latest->seq,
                      ", beyond the chain's last change ", report.last_seq));
  } else if ((latest ? latest->version : 0) != chain_policy_version) {
    fail(std::max<int64_t>(report.last_seq, 1),
         absl::StrCat("the policy_sets table serves version ", latest ? latest->version : 0,
                      ", the chain's newest is version ", chain_policy_version));
  }
  return report;
}

}  // namespace quell::ledger
