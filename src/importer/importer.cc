// The import loop: read and decode rows on this thread, send full batches to the sink
// (up to `in_flight` unacknowledged), and acknowledge them strictly in order — counts,
// rejects and the checkpoint only ever describe a prefix of the input that the sink has
// made durable. An interruption anywhere leaves a checkpoint at such a prefix; rows after
// it are replayed on resume and come back as duplicates if they had been applied.
#include "importer/importer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/detection_codec.h"
#include "core/files.h"
#include "core/ids.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/utf8.h"
#include "importer/reader.h"
#include "importer/sink.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::importer {
namespace {

// A row that goes to the rejects file.
struct Reject {
  int64_t line = 0;
  std::string error;
  std::string text;
};

// A decoded row whose type `set` does not declare becomes a reject, in the server's words,
// with the row as decoded (a CSV or Avro row too) as its text. A null set checks nothing.
void RejectUndeclaredType(const policy::PolicySet* set, Row* row) {
  if (set == nullptr || !row->detection) return;
  std::string why = set->UnknownDetectionTypeError(row->detection->type);
  if (why.empty()) return;
  row->error = absl::StrCat("type: ", why);
  row->text = api::DetectionToJson(*row->detection).substr(0, kMaxRejectText);
  row->detection.reset();
}

// A batch for a server is cut at this many bytes of rows too: a server takes bodies of up
// to 8 MiB by default (http.max_body_bytes), and a row sent as read may be 64 KiB.
constexpr size_t kMaxBatchBytes = 4 << 20;

struct Mark {
  int64_t file = 0;
  Position pos;
};

struct Pending {
  uint64_t seq = 0;
  Mark mark;                    // where the input stands after this batch
  std::vector<int64_t> lines;   // of the detections sent, in order
  std::vector<Reject> rejects;  // rows rejected while reading
  int64_t read = 0;             // rows read into this batch (valid or not)
  std::string file;
};

// Replaces invalid UTF-8 so the rejects file stays valid JSON.
std::string ValidUtf8(std::string_view s) {
  std::string out;
  while (!s.empty()) {
    auto bad = core::FindInvalidUtf8(s);
    if (!bad) {
      out.append(s);
      break;
    }
    out.append(s.substr(0, *bad));
    out.append("\xEF\xBF\xBD");
    s.remove_prefix(*bad + 1);
  }
  return out;
}

// `path` made absolute (against the working directory) and normalised, for comparing:
// "var/" is "var".
std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return path;
  std::string out = abs.lexically_normal().string();
  if (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

// `path` absolute with its symbolic links resolved (as far as it exists): where it really
// is, for checks a second name must not get past.
std::string RealPath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path real = std::filesystem::weakly_canonical(AbsolutePath(path), ec);
  return ec ? AbsolutePath(path) : AbsolutePath(real.string());
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  if (path == "-" || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  return st.st_size;
}

class Run {
 public:
  explicit Run(const ImportOptions& o) : o_(o), progress_(o.progress_out, o.progress) {}
  ~Run() {
    if (checkpoint_lock_ < 0) return;
    // No checkpoint left (a run that completed, or failed before writing one): its lock
    // file goes too, removed while held (LockFile copes with a removed one).
    struct stat st {};
    if (::stat(checkpoint_path_.c_str(), &st) != 0) {
      ::unlink(absl::StrCat(checkpoint_path_, ".lock").c_str());
    }
    ::close(checkpoint_lock_);
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  ImportResult Go() {
    const absl::Time start = absl::Now();
    absl::Status s = GoInner();
    res_.status = s;
    res_.elapsed = absl::Now() - start;
    res_.rows_this_run = rows_this_run_;
    res_.unacknowledged =
        std::max<int64_t>(0, rows_this_run_ - (res_.counts.read - res_.read_before));
    res_.bytes = BytesSoFar();
    progress_.Finish();
    return std::move(res_);
  }

 private:
  absl::Status Refuse(absl::Status s) {
    res_.refused = true;
    return s;
  }
  // Refused for what the command line names (output paths that clash with each other,
  // an input or the ledger's files): bad usage, as a bad flag is.
  absl::Status RefuseUsage(absl::Status s) {
    res_.bad_usage = true;
    return Refuse(std::move(s));
  }

  absl::Status GoInner() {
    if (o_.files.empty())
      return Refuse(absl::InvalidArgumentError("no input files (use - for standard input)"));
    const std::string& first = o_.files[0];
    res_.rejects_path = !o_.rejects_path.empty() ? o_.rejects_path
                        : first == "-"           ? std::string("quell-import.rejects.ndjson")
                                                 : absl::StrCat(first, ".rejects.ndjson");
    res_.checkpoint_path = DefaultCheckpointPath(first);
    // Each would destroy the other, or a store's files: the rejects file is emptied and
    // the checkpoint replaced (and removed at the end).
    std::string rejects_abs = AbsolutePath(res_.rejects_path);
    if (RealPath(res_.rejects_path) == RealPath(res_.checkpoint_path)) {
      return RefuseUsage(absl::InvalidArgumentError(absl::StrCat(
          "--rejects and --checkpoint are the same file (", res_.rejects_path,
          "): the checkpoint would replace the rejects, and go at the end; give two paths")));
    }
    if (o_.server_url.empty() && !o_.data_dir.empty()) {     // --server writes no directory
      const std::string data = RealPath(o_.data_dir) + "/";  // a symlink is no way round
      for (auto [what, out] : {std::pair{"--rejects ", &res_.rejects_path},
                               std::pair{"the checkpoint ", &res_.checkpoint_path}}) {
        if (absl::StartsWith(RealPath(*out), data)) {
          return RefuseUsage(absl::InvalidArgumentError(
              absl::StrCat(what, *out, " is inside the data directory ", o_.data_dir,
                           ", which holds the ledger's files: give a path outside it")));
        }
      }
    }
    // The rejects file is emptied and the checkpoint replaced: neither may be an input
    // (a fresh run unlinked an input given as --rejects), nor a directory.
    for (auto [what, out] : {std::pair{"--rejects ", &res_.rejects_path},
                             std::pair{"the checkpoint ", &res_.checkpoint_path}}) {
      struct stat os {};
      if (::stat(out->c_str(), &os) != 0) continue;
      if (S_ISDIR(os.st_mode)) {
        return RefuseUsage(absl::InvalidArgumentError(
            absl::StrCat(what, *out, " is a directory; give a file path")));
      }
      for (const std::string& in : o_.files) {
        struct stat is {};
        if (in != "-" && ::stat(in.c_str(), &is) == 0 && is.st_dev == os.st_dev &&
            is.st_ino == os.st_ino) {
          return RefuseUsage(absl::InvalidArgumentError(absl::StrCat(
              what, *out, " is the input ", in, ": it would be overwritten; give another path")));
        }
      }
    }
    // 1. Every input is opened and its header or schema checked before anything is
    //    written: a wrong container, compression or schema refuses the whole run.
    ReaderOptions ro;
    ro.max_row_bytes = o_.max_row_bytes;
    // A server decodes and validates the rows itself: an NDJSON line goes to it as read.
    ro.ndjson_as_text = !o_.server_url.empty() && !o_.dry_run;
    // And it compares observed_at with its own clock when the batch arrives (import.md):
    // rows decoded here on their way to it (CSV, Avro, long NDJSON lines) leave that to
    // it. A direct import or a dry run uses the time it started.
    ro.decode.now = ro.ndjson_as_text ? absl::InfiniteFuture() : absl::Now();
    std::optional<uint64_t> total = 0;
    for (const std::string& path : o_.files) {
      auto src = ByteSource::Open(path);
      if (!src.ok()) return Refuse(src.status());
      if (!(*src)->raw_size()) total.reset();
      if (total) *total += *(*src)->raw_size();
      auto format = DetectFormat(**src, path, o_.format);
      if (!format.ok()) return Refuse(format.status());
      auto reader = RowReader::Open(*std::move(src), *format, ro);
      if (!reader.ok()) return Refuse(reader.status());
      readers_.push_back(*std::move(reader));
    }
    progress_.SetTotal(total);
    if (o_.dry_run) return DryRunAll();

    // 2. The checkpoint: continue it, or refuse to silently start over. One run at a time
    //    per checkpoint (a --resume started twice wrote both into one rejects file).
    {
      auto lock = LockFile(
          absl::StrCat(res_.checkpoint_path, ".lock"),
          absl::StrCat("another quell import is using the checkpoint ", res_.checkpoint_path));
      if (!lock.ok()) return Refuse(lock.status());
      checkpoint_lock_ = *lock;
      checkpoint_path_ = res_.checkpoint_path;  // res_ is moved out by Go()
    }
    Checkpoint cp;
    QUELL_ASSIGN_OR_RETURN(auto existing, ReadCheckpoint(res_.checkpoint_path));
    if (o_.resume) {
      if (!existing) {
        return Refuse(absl::FailedPreconditionError(absl::StrCat(
            "--resume: no checkpoint at ", res_.checkpoint_path, " (nothing to resume)")));
      }
      cp = *existing;
      // Paths recorded absolute (older checkpoints: as typed, compared so): the same
      // name in another working directory is another file.
      std::vector<std::string> given;
      for (size_t i = 0; i < o_.files.size(); ++i) {
        const bool recorded_absolute =
            i < cp.files.size() && !cp.files[i].empty() && cp.files[i][0] == '/';
        given.push_back(recorded_absolute && o_.files[i] != "-" ? AbsolutePath(o_.files[i])
                                                                : o_.files[i]);
      }
      if (cp.files != given) {
        return Refuse(absl::FailedPreconditionError(absl::StrCat(
            "--resume: the checkpoint ", res_.checkpoint_path, " is for other files")));
      }
      // The rows rejected before the interruption are in the checkpoint's rejects file:
      // going on in another would leave them in a file this run never names.
      if (cp.rejects.empty()) cp.rejects = rejects_abs;  // an older checkpoint: from now
      if (o_.rejects_path.empty()) {                     // not named: the checkpoint's
        res_.rejects_path = rejects_abs = cp.rejects;
      }
      if (cp.rejects != rejects_abs) {
        return Refuse(absl::FailedPreconditionError(absl::StrCat(
            "--resume: the checkpoint's rejects file is ", cp.rejects,
            " (the rows rejected before the interruption are there): resume with --rejects ",
            cp.rejects)));
      }
      // Where the rows went: resumed elsewhere, the rows before the checkpoint would be
      // missing there while the summary counts them. (Older checkpoints: not recorded.)
      if (!cp.destination.empty() && cp.destination != Destination()) {
        return Refuse(absl::FailedPreconditionError(absl::StrCat(
            "--resume: the checkpoint's import went to ", cp.destination, ", this run names ",
            Destination(), ": resume it with the same --server or --data")));
      }
      for (size_t i = 0; i < o_.files.size(); ++i) {
        if (cp.sizes[i] != FileSize(o_.files[i])) {
          return Refuse(absl::FailedPreconditionError(
              absl::StrCat("--resume: ", o_.files[i], " changed size since the checkpoint (",
                           cp.sizes[i], " -> ", FileSize(o_.files[i]), " bytes)")));
        }
      }
    } else {
      if (existing) {
        return Refuse(absl::FailedPreconditionError(absl::StrCat(
            "a checkpoint of an unfinished import (batch ", existing->batch,
            existing->destination.empty() ? "" : ", into ", existing->destination, ") is at ",
            res_.checkpoint_path,
            ": pass --resume to continue it, give another import of the same input its own "
            "--checkpoint and --rejects, or delete the file to start over")));
      }
      // A fresh run empties its rejects file: not one an unfinished import (its checkpoint
      // where this input's would be by default) still records.
      if (!o_.checkpoint_path.empty()) {
        const std::string other = CheckpointNextTo(o_.files[0]);
        if (AbsolutePath(other) != AbsolutePath(res_.checkpoint_path)) {
          auto theirs = ReadCheckpoint(other);
          if (theirs.ok() && theirs->has_value() && (*theirs)->rejects == rejects_abs) {
            return Refuse(absl::FailedPreconditionError(
                absl::StrCat(res_.rejects_path,
                             " is the rejects file of the unfinished import whose checkpoint is ",
                             other, ": give this import its own --rejects")));
          }
        }
      }
      cp.batch = core::NewId("b_", absl::Now());
      cp.rejects = rejects_abs;
      cp.destination = Destination();
      for (const std::string& f : o_.files) cp.files.push_back(f == "-" ? f : AbsolutePath(f));
      for (const std::string& f : o_.files) cp.sizes.push_back(FileSize(f));
    }
    res_.batch = cp.batch;
    res_.counts = cp.counts;
    res_.read_before = cp.counts.read;
    acked_ = cp;

    // 3. The sink (locks the data directory, or checks the server and the key).
    if (!o_.server_url.empty()) {
      HttpSinkOptions ho;
      ho.url = o_.server_url;
      ho.key = o_.key;
      ho.batch = cp.batch;
      ho.connections = o_.in_flight;
      ho.retry_for = o_.retry_for;
      ho.stop = o_.stop;
      auto sink = OpenHttpSink(ho);
      if (!sink.ok()) return Refuse(sink.status());
      sink_ = *std::move(sink);
    } else {
      DirectSinkOptions dso;
      dso.data_dir = o_.data_dir;
      dso.durable = o_.durable;
      dso.safeguards = o_.safeguards;
      auto sink = OpenDirectSink(dso);
      if (!sink.ok()) return Refuse(sink.status());
      sink_ = *std::move(sink);
      if (sink_->DeclaredTypes() == nullptr) {
        std::fprintf(o_.notes_out,
                     "quell import: %s has no published policy set: the rows are stored "
                     "without decisions (imported again later, they are duplicates)\n",
                     o_.data_dir.c_str());
      }
    }

    // 4. Rejects file: a fresh run starts it empty; a resume cuts what was written after
    //    the checkpoint (those rows are read again).
    if (o_.resume) {
      // Never extend it (truncate would pad with NUL bytes): one shorter than the
      // checkpoint says was cut or edited since, and is kept as it is.
      struct stat st {};
      uint64_t keep = cp.rejects_bytes;
      if (::stat(res_.rejects_path.c_str(), &st) != 0) st.st_size = 0;  // gone: as empty
      if (static_cast<uint64_t>(st.st_size) < cp.rejects_bytes) {
        keep = static_cast<uint64_t>(st.st_size);
        std::fprintf(o_.notes_out,
                     "quell import: %s is shorter than the checkpoint records (%llu < %llu "
                     "bytes): rows rejected before the interruption may be missing from it\n",
                     res_.rejects_path.c_str(), static_cast<unsigned long long>(keep),
                     static_cast<unsigned long long>(cp.rejects_bytes));
      }
      if (::truncate(res_.rejects_path.c_str(), static_cast<off_t>(keep)) != 0 && errno != ENOENT) {
        return absl::InternalError(
            absl::StrCat("cannot truncate ", res_.rejects_path, ": ", std::strerror(errno)));
      }
      rejects_bytes_ = keep;
      std::fprintf(
          o_.notes_out, "quell import: resuming batch %s at %s line %lld (%lld rows done)\n",
          cp.batch.c_str(),
          cp.file < static_cast<int64_t>(o_.files.size()) ? o_.files[cp.file].c_str() : "end",
          static_cast<long long>(cp.line), static_cast<long long>(cp.counts.read));
    } else {
      ::unlink(res_.rejects_path.c_str());
      std::fprintf(o_.notes_out, "quell import: batch %s into %s\n", cp.batch.c_str(),
                   sink_->Describe().c_str());
    }
    std::fflush(o_.notes_out);
    QUELL_RETURN_IF_ERROR(SaveCheckpoint());

    // 5. Read, send, acknowledge.
    absl::Status read_status = ReadAll(cp);
    WaitAll();
    sink_.reset();  // a direct sink drains its ledger
    absl::Status save = SaveCheckpoint();
    // Interrupted while a batch was being retried: that batch's kCancelled is the
    // interruption itself, reported as such ("continue with --resume").
    const bool interrupted = o_.stop != nullptr && o_.stop->load();
    if (!fatal_.ok()) {
      if (!interrupted || !absl::IsCancelled(fatal_)) return fatal_;
      if (read_status.ok()) {  // every row was read before the signal, not acknowledged
        read_status = absl::CancelledError(absl::StrCat(
            "interrupted: continue with --resume (checkpoint ", res_.checkpoint_path, ")"));
      }
    }
    if (!read_status.ok()) return read_status;
    QUELL_RETURN_IF_ERROR(save);
    if (acked_.file == static_cast<int64_t>(o_.files.size())) {
      QUELL_RETURN_IF_ERROR(RemoveCheckpoint(res_.checkpoint_path));  // its lock: ~Run
    }
    if (rejects_fd_ < 0 && rejects_bytes_ == 0) res_.rejects_path.clear();
    if (rejects_fd_ >= 0) ::close(rejects_fd_);
    return absl::OkStatus();
  }

  bool Stopping() const {
    return (o_.stop != nullptr && o_.stop->load()) || !fatal_.ok() ||
           (o_.stop_after_rows_for_test >= 0 && rows_this_run_ >= o_.stop_after_rows_for_test);
  }

  absl::Status ReadAll(const Checkpoint& cp) {
    for (int64_t f = cp.file; f < static_cast<int64_t>(readers_.size()); ++f) {
      RowReader& r = *readers_[f];
      reading_ = f;
      if (f == cp.file && (cp.offset > 0 || cp.rows > 0)) {
        Position pos;
        pos.offset = cp.offset;
        pos.line = cp.line;
        pos.rows = cp.rows;
        pos.crc = cp.crc;
        QUELL_RETURN_IF_ERROR(r.SkipTo(pos));
      }
      auto cur = std::make_unique<Pending>();
      cur->file = o_.files[f];
      const bool json = sink_->TakesJson();
      Rows rows;
      size_t rows_bytes = 0;  // rows.json in a request body
      Row row;
      for (;;) {
        if (Stopping()) {
          if (!fatal_.ok()) return absl::OkStatus();
          return absl::CancelledError(absl::StrCat(
              "interrupted: continue with --resume (checkpoint ", res_.checkpoint_path, ")"));
        }
        auto got = r.Next(&row);
        if (!got.ok()) {
          // The rows before stay imported (sent below); the checkpoint stops before the error.
          cur->mark = {f, r.position()};
          Submit(std::move(cur), std::move(rows));
          return absl::Status(
              got.status().code(),
              absl::StrCat(got.status().message(), "; the rows before it were imported, the ",
                           "checkpoint ", res_.checkpoint_path, " stops there"));
        }
        if (!*got) break;
        ++cur->read;
        ++rows_this_run_;
        RejectUndeclaredType(sink_->DeclaredTypes(), &row);
        if (row.detection) {
          row.detection->batch = res_.batch;
          cur->lines.push_back(row.line);
          if (json) {
            rows.json.push_back(api::DetectionToJson(*row.detection));
            rows_bytes += rows.json.back().size() + 1;
          } else {
            rows.detections.push_back(*std::move(row.detection));
          }
        } else if (!row.json.empty()) {
          cur->lines.push_back(row.line);
          rows_bytes += row.json.size() + 1;
          rows.json.push_back(std::move(row.json));
        } else {
          cur->rejects.push_back(Reject{row.line, std::move(row.error), std::move(row.text)});
        }
        if (rows.size() + cur->rejects.size() >= o_.batch_rows || rows_bytes >= kMaxBatchBytes) {
          cur->mark = {f, r.position()};
          Submit(std::move(cur), std::move(rows));
          cur = std::make_unique<Pending>();
          cur->file = o_.files[f];
          rows = {};
          rows_bytes = 0;
        }
        if ((rows_this_run_ & 1023) == 0)
          progress_.Update(res_.counts.read + InFlightRows(), Bytes(f));
      }
      bytes_done_ += r.source().raw_bytes();
      reading_ = -1;
      cur->mark = {f + 1, Position{}};
      Submit(std::move(cur), std::move(rows));
    }
    return absl::OkStatus();
  }

  uint64_t Bytes(int64_t f) const { return bytes_done_ + readers_[f]->source().raw_bytes(); }
  // Raw bytes read so far: a run that stopped inside a file counts what it read of it.
  uint64_t BytesSoFar() const { return reading_ >= 0 ? Bytes(reading_) : bytes_done_; }
  int64_t InFlightRows() const { return in_flight_rows_; }

  void Submit(std::unique_ptr<Pending> p, Rows rows) {
    while (static_cast<int>(pending_.size()) >= std::max(1, o_.in_flight))
      Acknowledge(/*wait=*/true);
    // A batch failed while this one waited: it is not sent (it would retry for a whole
    // --retry-for of its own, doubling the wait); the checkpoint stays before the failure.
    if (!fatal_.ok()) return;
    p->seq = next_seq_++;
    in_flight_rows_ += p->read;
    uint64_t seq = p->seq;
    pending_[seq] = std::move(p);
    if (rows.size() == 0) {
      Complete(seq, BatchResult{});
      return;
    }
    sink_->Send(std::move(rows), [this, seq](BatchResult r) { Complete(seq, std::move(r)); });
    Acknowledge(/*wait=*/false);
  }

  void Complete(uint64_t seq, BatchResult r) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_.emplace_back(seq, std::move(r));
    }
    cv_.notify_one();
  }

  void WaitAll() {
    while (!pending_.empty()) Acknowledge(/*wait=*/true);
  }

  // Takes finished batches; applies the ones that extend the acknowledged prefix.
  void Acknowledge(bool wait) {
    std::deque<std::pair<uint64_t, BatchResult>> got;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // While waiting (a busy or unreachable server being retried), the progress lines go
      // on: nothing said for a whole --retry-for looked like a hang.
      while (wait &&
             !cv_.wait_for(lock, std::chrono::seconds(1), [this] { return !done_.empty(); })) {
        lock.unlock();
        progress_.Update(res_.counts.read + InFlightRows(), BytesSoFar());
        lock.lock();
      }
      got.swap(done_);
    }
    for (auto& [seq, r] : got) results_[seq] = std::move(r);
    while (!pending_.empty()) {
      auto first = pending_.begin();
      auto it = results_.find(first->first);
      if (it == results_.end()) break;
      BatchResult r = std::move(it->second);
      results_.erase(it);
      std::unique_ptr<Pending> p = std::move(first->second);
      pending_.erase(first);
      in_flight_rows_ -= p->read;
      if (!fatal_.ok()) continue;  // past a failed batch nothing is acknowledged
      if (!r.status.ok()) {
        fatal_ = r.status;
        if (r.refused_row >= 0 && static_cast<size_t>(r.refused_row) < p->lines.size()) {
          fatal_ = absl::Status(
              r.status.code(),
              absl::StrCat(p->file, " line ", p->lines[r.refused_row], ": ", r.status.message()));
        }
        continue;
      }
      if (auto s = Apply(*p, r); !s.ok()) {
        fatal_ = s;
        continue;
      }
    }
    if (fatal_.ok() && absl::Now() - last_checkpoint_ >= o_.checkpoint_every) {
      if (auto s = SaveCheckpoint(); !s.ok()) fatal_ = s;
    }
  }

  absl::Status Apply(const Pending& p, const BatchResult& r) {
    std::vector<Reject> rejects = p.rejects;
    Counts& c = res_.counts;
    for (size_t i = 0; i < r.items.size() && i < p.lines.size(); ++i) {
      const ItemResult& it = r.items[i];
      switch (it.status) {
        case ItemResult::Status::kAccepted:
          ++c.accepted;
          for (const std::string& st : it.states) ++c.decisions[st];
          break;
        case ItemResult::Status::kDuplicate:
          ++c.duplicate;
          break;
        case ItemResult::Status::kRejected:
          rejects.push_back(Reject{p.lines[i], it.error, it.row});
          break;
      }
    }
    std::sort(rejects.begin(), rejects.end(),
              [](const Reject& a, const Reject& b) { return a.line < b.line; });
    c.rejected += static_cast<int64_t>(rejects.size());
    c.read += p.read;
    if (!rejects.empty()) {
      std::string out;
      for (const Reject& rj : rejects) {
        out += "{\"file\":";
        core::AppendJsonString(p.file, &out);
        absl::StrAppend(&out, ",\"line\":", rj.line, ",\"error\":");
        core::AppendJsonString(ValidUtf8(rj.error), &out);
        out += ",\"row\":";
        core::AppendJsonString(ValidUtf8(rj.text), &out);
        out += "}\n";
      }
      QUELL_RETURN_IF_ERROR(WriteRejects(out));
    }
    acked_.file = p.mark.file;
    acked_.offset = p.mark.pos.offset;
    acked_.crc = p.mark.pos.crc;
    acked_.line = p.mark.pos.line;
    acked_.rows = p.mark.pos.rows;
    return absl::OkStatus();
  }

  absl::Status WriteRejects(std::string_view data) {
    if (rejects_fd_ < 0) {
      rejects_fd_ =
          ::open(res_.rejects_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (rejects_fd_ < 0) {
        return absl::InternalError(
            absl::StrCat("cannot write ", res_.rejects_path, ": ", std::strerror(errno)));
      }
    }
    while (!data.empty()) {
      ssize_t n = ::write(rejects_fd_, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        return absl::InternalError(
            absl::StrCat("cannot write ", res_.rejects_path, ": ", std::strerror(errno)));
      data.remove_prefix(static_cast<size_t>(n));
      rejects_bytes_ += static_cast<uint64_t>(n);
    }
    rejects_dirty_ = true;
    return absl::OkStatus();
  }

  absl::Status SaveCheckpoint() {
    if (rejects_dirty_ && rejects_fd_ >= 0) {
      if (::fdatasync(rejects_fd_) != 0) {
        return absl::InternalError(
            absl::StrCat("fsync ", res_.rejects_path, ": ", std::strerror(errno)));
      }
      rejects_dirty_ = false;
    }
    acked_.counts = res_.counts;
    acked_.rejects_bytes = rejects_bytes_;
    last_checkpoint_ = absl::Now();
    return WriteCheckpoint(res_.checkpoint_path, acked_);
  }

  // --checkpoint, else next to the (first) input whatever --rejects says: a rerun that
  // leaves --rejects out finds it (and is refused, or resumed into the same rejects
  // file) rather than starting a second batch beside the first. Next to --rejects (as
  // before) for standard input, for an input whose directory cannot be written (a
  // read-only mount, /dev/fd/N), and when a checkpoint an earlier version left there is
  // the only one.
  std::string DefaultCheckpointPath(const std::string& first) const {
    if (!o_.checkpoint_path.empty()) return o_.checkpoint_path;
    if (o_.rejects_path.empty()) return CheckpointNextTo(first);
    const std::string by_rejects = absl::StrCat(o_.rejects_path, ".quell-checkpoint");
    if (first == "-") return by_rejects;
    const std::string by_input = CheckpointNextTo(first);
    const std::string dir = std::filesystem::path(AbsolutePath(first)).parent_path().string();
    if (::access(dir.c_str(), W_OK) != 0) return by_rejects;
    if (::access(by_input.c_str(), F_OK) != 0 && ::access(by_rejects.c_str(), F_OK) == 0) {
      return by_rejects;
    }
    return by_input;
  }

  // The checkpoint's name next to input `first` (quell-import.quell-checkpoint in the
  // working directory for standard input).
  static std::string CheckpointNextTo(const std::string& first) {
    return absl::StrCat(first == "-" ? std::string("quell-import") : first, ".quell-checkpoint");
  }

  // The server (its URL, as given) or the data directory (absolute) the rows go to.
  std::string Destination() const {
    return o_.server_url.empty() ? absl::StrCat("data dir ", AbsolutePath(o_.data_dir))
                                 : absl::StrCat("server ", o_.server_url);
  }

  absl::Status DryRunAll() {
    std::shared_ptr<const policy::PolicySet> set;
    std::unique_ptr<ledger::Store> store;
    if (o_.dry_run_ledger) {
      auto opened = o_.dry_run_ledger();
      if (!opened.ok()) return Refuse(opened.status());
      store = *std::move(opened);
    } else if (absl::Status has = ledger::CheckSqliteLedger(o_.data_dir); has.ok()) {
      ledger::SqliteOptions so;
      so.path = o_.data_dir;
      so.apply_migrations = false;  // a dry run writes nothing, not even a migration
      auto opened = ledger::OpenSqliteStore(so);
      if (!opened.ok()) return Refuse(opened.status());
      store = *std::move(opened);
    } else if (o_.policies_file.empty()) {
      // Nothing to preview against, and the import itself refuses the directory: a
      // mistyped --data previewed "nothing would be mitigated", exit 0.
      return Refuse(has);
    } else {
      std::fprintf(o_.notes_out,
                   "quell import: %s; the preview of %s runs against an empty state (no stored "
                   "mitigations, lists, duplicates or breaker counts)\n",
                   std::string(SV(has.message())).c_str(), o_.policies_file.c_str());
    }
    if (!o_.policies_file.empty()) {
      absl::StatusOr<std::string> yaml = core::ReadFile(o_.policies_file);
      if (!yaml.ok()) return Refuse(yaml.status());
      auto loaded = policy::LoadPolicySet(*yaml, 0);
      if (!loaded.ok()) {
        return Refuse(absl::InvalidArgumentError(
            absl::StrCat(o_.policies_file, ": ", loaded.status().message())));
      }
      set = *std::move(loaded);
    } else if (store != nullptr) {
      QUELL_ASSIGN_OR_RETURN(auto latest, store->LatestPolicySet());
      if (latest) {
        QUELL_ASSIGN_OR_RETURN(set, policy::LoadPolicySet(latest->yaml, latest->version));
      }
    }
    QUELL_ASSIGN_OR_RETURN(auto dry, DryRun::Create(set, store.get(), o_.safeguards));
    // Input that stops the run part-way (a truncated gzip) stops the preview there too; it
    // still reports the rows before, which an import would keep (docs/import.md).
    absl::Status read = PreviewRows(*dry, set.get());
    res_.dry_run = dry->Report();
    res_.rejects_path.clear();
    res_.checkpoint_path.clear();
    return read;
  }

  absl::Status PreviewRows(DryRun& dry, const policy::PolicySet* set) {
    Row row;
    int shown = 0;
    for (size_t f = 0; f < readers_.size(); ++f) {
      reading_ = static_cast<int64_t>(f);
      for (;;) {
        if (o_.stop != nullptr && o_.stop->load()) return absl::CancelledError("interrupted");
        QUELL_ASSIGN_OR_RETURN(bool got, readers_[f]->Next(&row));
        if (!got) break;
        ++res_.counts.read;
        ++rows_this_run_;
        RejectUndeclaredType(set, &row);
        if (row.detection) {
          dry.Add(*row.detection);
        } else {
          ++res_.counts.rejected;
          if (shown++ < 5) {
            std::fprintf(o_.notes_out, "quell import: %s:%lld: %s\n", o_.files[f].c_str(),
                         static_cast<long long>(row.line), row.error.c_str());
          }
        }
        if ((rows_this_run_ & 1023) == 0)
          progress_.Update(res_.counts.read, Bytes(static_cast<int64_t>(f)));
      }
      bytes_done_ += readers_[f]->source().raw_bytes();
      reading_ = -1;
    }
    return absl::OkStatus();
  }

  const ImportOptions& o_;
  Progress progress_;
  ImportResult res_;
  std::vector<std::unique_ptr<RowReader>> readers_;
  std::unique_ptr<Sink> sink_;
  Checkpoint acked_;  // the acknowledged prefix
  absl::Status fatal_;
  uint64_t next_seq_ = 0;
  std::map<uint64_t, std::unique_ptr<Pending>> pending_;  // sent, not yet acknowledged
  std::map<uint64_t, BatchResult> results_;               // finished out of order
  int64_t in_flight_rows_ = 0;
  int64_t rows_this_run_ = 0;
  uint64_t bytes_done_ = 0;  // of the files read to their end
  int64_t reading_ = -1;     // the file being read, if any
  int rejects_fd_ = -1;
  int checkpoint_lock_ = -1;     // flock on CHECKPOINT.lock, for the run
  std::string checkpoint_path_;  // CHECKPOINT, once locked
  uint64_t rejects_bytes_ = 0;
  bool rejects_dirty_ = false;
  absl::Time last_checkpoint_ = absl::InfinitePast();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, BatchResult>> done_;  // guarded by mu_
};

std::string StatesText(const std::map<std::string, int64_t>& m) {
  std::string out;
  for (const auto& [k, n] : m)
    absl::StrAppend(&out, out.empty() ? "" : ", ", k, " ", WithCommas(n));
  return out.empty() ? "none" : out;
}

}  // namespace

std::string SummaryText(const ImportResult& r) {
  const Counts& c = r.counts;
  double secs = absl::ToDoubleSeconds(r.elapsed);
  std::string out;
  if (!r.batch.empty()) absl::StrAppend(&out, "batch ", r.batch, "\n");
  absl::StrAppend(
      &out, "read ", WithCommas(c.read), " rows (",
      // A resume: the rows before the checkpoint were counted by an earlier run; this one
      // read them again (the bytes) but counts only its own (the rate).
      r.read_before > 0 ? absl::StrCat(WithCommas(r.rows_this_run), " this run, ") : "",
      HumanBytes(r.bytes), " in ",
      secs < 0.0005 ? std::string("<1ms")
                    : absl::FormatDuration(absl::Milliseconds(std::llround(secs * 1000))),
      ", ",
      // The rate of the rows counted (acknowledged), not of every row read: after a
      // Ctrl-C it said "read 0 rows ... 827 rows/s".
      WithCommas(secs > 0
                     ? static_cast<int64_t>(
                           static_cast<double>(std::max<int64_t>(c.read - r.read_before, 0)) / secs)
                     : 0),
      " rows/s)\n");
  if (r.dry_run) {
    absl::StrAppend(&out, "rejected ", WithCommas(c.rejected), "\n");
    if (!r.status.ok()) {
      absl::StrAppend(&out, "the dry run stopped at the error above: this preview is of the ",
                      WithCommas(c.read), " rows before it\n");
    }
    absl::StrAppend(&out, DryRunText(*r.dry_run));
    return out;
  }
  absl::StrAppend(&out, "accepted ", WithCommas(c.accepted), ", duplicate ",
                  WithCommas(c.duplicate), ", rejected ", WithCommas(c.rejected));
  if (c.rejected > 0 && !r.rejects_path.empty())
    absl::StrAppend(&out, " (see ", r.rejects_path, ")");
  absl::StrAppend(&out, "\ndecisions: ", StatesText(c.decisions), "\n");
  if (r.unacknowledged > 0) {  // "read 0 rows" of a run that sent rows the server refused
    absl::StrAppend(&out, "not acknowledged: ", WithCommas(r.unacknowledged),
                    " more rows read (not in the counts above nor in the checkpoint: --resume "
                    "sends them again)\n");
  }
  return out;
}

std::string SummaryJson(const ImportResult& r) {
  const Counts& c = r.counts;
  std::string out = "{\"ok\":";
  out += r.status.ok() ? "true" : "false";
  if (!r.status.ok()) {
    out += ",\"error\":";
    core::AppendJsonString(SV(r.status.message()), &out);
  }
  out += ",\"batch\":";
  core::AppendJsonString(r.batch, &out);
  absl::StrAppend(&out, ",\"read\":", c.read, ",\"accepted\":", c.accepted,
                  ",\"duplicate\":", c.duplicate, ",\"rejected\":", c.rejected, ",\"decisions\":{");
  bool first = true;
  for (const auto& [k, n] : c.decisions) {
    if (!first) out += ',';
    first = false;
    core::AppendJsonString(k, &out);
    absl::StrAppend(&out, ":", n);
  }
  out += "},\"rejects\":";
  core::AppendJsonString(c.rejected > 0 ? r.rejects_path : "", &out);
  absl::StrAppend(&out, ",\"rows_this_run\":", r.rows_this_run,
                  ",\"unacknowledged\":", r.unacknowledged, ",\"bytes\":", r.bytes,
                  ",\"seconds\":", absl::ToDoubleSeconds(r.elapsed));
  if (r.dry_run) absl::StrAppend(&out, ",\"dry_run\":", DryRunJson(*r.dry_run));
  out += "}";
  return out;
}

ImportResult Import(const ImportOptions& options) {
  Run run(options);
  ImportResult r = run.Go();
  return r;
}

}  // namespace quell::importer
