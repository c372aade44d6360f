// DirectSink: detections straight into the data directory, with the server's semantics.
// Every row sees the effects of the rows before it: a row whose evaluation reads ledger
// state (active(), prior()) is evaluated inside the ledger transaction (on the commit
// thread) against an Environment over that transaction; the others, evaluated ahead on
// the caller's thread, cannot tell. The outcome is a function of the file's order alone,
// whatever the batching, the number of batches in flight or an interruption and resume —
// which is what makes a resumed import end in exactly the state of an uninterrupted one.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/detection_codec.h"
#include "core/status.h"
#include "core/strings.h"
#include "engine/backtest.h"
#include "engine/engine.h"
#include "importer/sink.h"
#include "ledger/ledger.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"
#include "workflow/decisions.h"
#include "workflow/safeguards.h"

namespace quell::importer {
namespace {

// Evaluates a row ahead, on the reader's thread, while the commit thread decides the
// rows before it: the lists are read from a snapshot (only a server changes them, and
// none runs during a direct import), but an active() or prior() call depends on the rows
// before this one, so it only marks the evaluation as needing the ledger; the commit
// thread then evaluates the row itself. Most rows never reach such a call (it comes
// after cheaper tests in a condition).
class AheadEnvironment final : public policy::Environment {
 public:
  explicit AheadEnvironment(const engine::ReplayLists& lists) : lists_(lists) {}
  int64_t Count(std::string_view, std::string_view, absl::Duration) override { return 0; }
  int64_t Distinct(std::string_view, std::string_view, absl::Duration) override { return 0; }
  bool InList(std::string_view list, std::string_view entity) override {
    auto e = core::Entity::Parse(entity);  // entries are kept in the normal form
    if (!e.ok()) return false;
    auto it = lists_.entries.find(AV(list));
    return it != lists_.entries.end() && it->second.Has(*e);
  }
  bool Active(std::string_view, std::string_view) override {
    needs_ledger_ = true;
    return false;
  }
  int64_t Prior(std::string_view, std::string_view, absl::Duration) override {
    needs_ledger_ = true;
    return 0;
  }
  bool needs_ledger() const { return needs_ledger_; }

 private:
  const engine::ReplayLists& lists_;
  bool needs_ledger_ = false;
};

void ParseStates(std::string_view reply, std::vector<std::string>* states) {
  static constexpr std::string_view kKey = "\"state\":\"";
  size_t pos = 0;
  while ((pos = reply.find(kKey, pos)) != std::string_view::npos) {
    pos += kKey.size();
    size_t end = reply.find('"', pos);
    if (end == std::string_view::npos) break;
    states->emplace_back(reply.substr(pos, end - pos));
    pos = end;
  }
}

class DirectSink final : public Sink {
 public:
  DirectSink(std::string dir, int import_lock, int server_lock)
      : dir_(std::move(dir)), import_lock_(import_lock), server_lock_(server_lock) {}
  ~DirectSink() override {
    ledger_.reset();  // drains: every Send completes
    if (server_lock_ >= 0) ::close(server_lock_);
    if (import_lock_ >= 0) ::close(import_lock_);
  }

  absl::Status Init(const DirectSinkOptions& options) {
    ledger::SqliteOptions so;
    so.path = dir_;
    so.synchronous_full = options.durable;
    // Pages read through the memory map stay in the process's RSS: over a 10M-row import
    // the 256 MiB map alone breaks the memory bound (docs/import.md). Reads go through the
    // page cache (16 MiB per connection) and pread instead.
    so.mmap_bytes = 0;
    // No entity cache: a bulk file names most entities once or a few times far apart, and
    // a budget large enough to keep them breaks the memory bound. On the benchmark's
    // round-robin over 250k users, 96 MiB made the import ~6% faster but its peak RSS
    // 227.6 MiB on 10M rows, and 128 MiB 256.8 MiB (docs/benchmarks.md, 2026-11-30
    // 13:30); 64 MiB gained nothing. The known-entities set still skips the reads of
    // entities without mitigations.
    so.entity_cache_bytes = 0;
    so.create = false;  // checked by OpenDirectSink, before its locks make the directory
    QUELL_ASSIGN_OR_RETURN(auto store, ledger::OpenSqliteStore(so));
    QUELL_ASSIGN_OR_RETURN(auto latest, store->LatestPolicySet());
    if (latest) {
      auto set = policy::LoadPolicySet(latest->yaml, latest->version);
      if (!set.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("the stored policy set v", latest->version,
                         " does not load: ", set.status().message()));
      }
      set_ = *std::move(set);
      catalog_ = set_->catalog_ptr();
    } else {
      catalog_ = core::ActionCatalog::Default();
    }
    // The server's safeguards (protected entities, breakers, immunity), loaded before the
    // ledger takes writes and following it afterwards.
    safeguards_ = std::make_unique<workflow::Safeguards>(options.safeguards, nullptr);
    QUELL_RETURN_IF_ERROR(
        safeguards_->Load(*store, absl::Now(), workflow::Safeguards::Delivery::kLocal, set_.get()));
    if (set_ != nullptr) {  // the lists its policies can name (they must be declared)
      QUELL_ASSIGN_OR_RETURN(lists_, engine::LoadReplayLists(*store, *set_));
    }
    ledger::LedgerOptions lo;
    QUELL_ASSIGN_OR_RETURN(ledger_,
                           ledger::Ledger::Open(std::move(store), lo, core::RealClock::Get()));
    ledger_->AddListener(safeguards_.get());
    return absl::OkStatus();
  }

  bool TakesJson() const override { return false; }

  void Send(Rows rows, std::function<void(BatchResult)> done) override {
    if (!rows.json.empty()) {  // TakesJson() is false: the importer decodes for this sink
      BatchResult r;
      r.status = absl::InternalError("the data directory sink takes decoded rows, not JSON");
      return done(std::move(r));
    }
    std::vector<engine::Detection>& detections = rows.detections;
    auto out = std::make_shared<std::vector<workflow::DetectionOutcome>>();
    // What needs no ledger state (the stored form, the reply heads, the evaluation of a row
    // that reads no ledger state) is done here, on the caller's thread; the commit thread
    // evaluates each other row just before deciding it (so it sees the rows before it, in
    // this batch too), decides and writes.
    std::vector<workflow::DetectionWork> work(detections.size());
    for (size_t i = 0; i < detections.size(); ++i) {
      work[i].json = api::DetectionToJson(detections[i], &work[i].json_head_bytes);
      if (set_ != nullptr) {
        AheadEnvironment env(lists_);
        engine::Evaluation ahead = engine::Evaluate(*set_, detections[i], env, absl::Now());
        if (!env.needs_ledger()) {
          work[i].proposals = std::move(ahead.proposals);
          work[i].proposals_final = true;
        }
      }
      work[i].detection = std::move(detections[i]);
    }
    // The entities the commit thread will read deciding this batch, read now on this
    // thread (it has time to spare; the commit thread has none).
    ledger_->store().PrefetchEntities(workflow::ReadsAhead(work, absl::Now()));
    ledger::Mutation mutation;
    if (set_ == nullptr) {
      mutation = workflow::ApplyDetections(std::move(work), catalog_, "import", out);
    } else {
      mutation = workflow::ApplyDetections(std::move(work), catalog_, "import", out,
                                           workflow::SafeguardContext{safeguards_.get(), set_},
                                           workflow::EvaluateInTxn(set_));
    }
    ledger_->Submit(std::move(mutation), [out, done = std::move(done)](
                                             absl::Status status, std::vector<ledger::Change>) {
      BatchResult r;
      r.status = status;
      if (status.ok()) {
        r.items.resize(out->size());
        for (size_t i = 0; i < out->size(); ++i) {
          if ((*out)[i].duplicate) {
            r.items[i].status = ItemResult::Status::kDuplicate;
          } else {
            ParseStates((*out)[i].reply, &r.items[i].states);
          }
        }
      }
      done(std::move(r));
    });
  }

  std::string Describe() const override { return absl::StrCat("data dir ", dir_); }
  const policy::PolicySet* DeclaredTypes() const override { return set_.get(); }

 private:
  std::string dir_;
  int import_lock_;
  int server_lock_;
  std::shared_ptr<const policy::PolicySet> set_;
  std::shared_ptr<const core::ActionCatalog> catalog_;
  engine::ReplayLists lists_;                         // as of Init, for the evaluation ahead
  std::unique_ptr<workflow::Safeguards> safeguards_;  // outlives ledger_ (declared first)
  std::unique_ptr<ledger::Ledger> ledger_;
};

}  // namespace

absl::StatusOr<int> LockFile(const std::string& path, const std::string& holder_message) {
  for (;;) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(fd);
      if (e == EWOULDBLOCK) return absl::FailedPreconditionError(holder_message);
      return absl::InternalError(absl::StrCat("cannot lock ", path, ": ", std::strerror(e)));
    }
    struct stat held {
    }, named{};
    if (::fstat(fd, &held) == 0 && ::stat(path.c_str(), &named) == 0 &&
        held.st_dev == named.st_dev && held.st_ino == named.st_ino) {
      return fd;
    }
    ::close(fd);  // removed (or replaced) meanwhile: again, on what is there now
  }
}

absl::StatusOr<int> LockDataDir(const std::string& dir, const std::string& file,
                                const std::string& holder_message) {
  // With its parents, as the store creates it (`--data a/b/new` works for every command).
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  return LockFile(absl::StrCat(dir, "/", file), holder_message);
}

absl::StatusOr<std::unique_ptr<Sink>> OpenDirectSink(const DirectSinkOptions& options) {
  // A mistyped --data made a new, empty ledger with no policy set: every row was stored
  // undecided, and the same rows imported into the right place later were duplicates.
  QUELL_RETURN_IF_ERROR(ledger::CheckSqliteLedger(options.data_dir));
  QUELL_ASSIGN_OR_RETURN(
      int import_lock,
      LockDataDir(options.data_dir, "import.lock",
                  absl::StrCat("another quell import is writing ", options.data_dir)));
  auto server_lock = LockDataDir(options.data_dir, "server.lock",
                                 absl::StrCat("a quell server owns ", options.data_dir,
                                              ": import through it with --server URL --key KEY"));
  if (!server_lock.ok()) {
    ::close(import_lock);
    return server_lock.status();
  }
  auto sink = std::make_unique<DirectSink>(options.data_dir, import_lock, *server_lock);
  QUELL_RETURN_IF_ERROR(sink->Init(options));
  return std::unique_ptr<Sink>(std::move(sink));
}

}  // namespace quell::importer
