// `quell import`: bulk detections from files (NDJSON, CSV, Avro; gzip/zstd; stdin) into a
// running server or straight into a data directory — resumable, idempotent, with every
// row accounted for (accepted, duplicate, or in the rejects file with its line and
// reason), and a dry run that previews the impact without writing. docs/import.md is the
// user's guide.
//
//   importer::ImportOptions o;
//   o.files = {"day.ndjson.zst"};
//   o.data_dir = "./var";
//   importer::ImportResult r = importer::Import(o);   // r.status, r.counts, r.batch
//
// Thread-safety: Import runs on the calling thread (plus the sink's threads); one import
// per data directory at a time (a lock enforces it).
#ifndef QUELL_IMPORTER_IMPORTER_H_
#define QUELL_IMPORTER_IMPORTER_H_

#include <atomic>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "importer/checkpoint.h"
#include "importer/dry_run.h"
#include "importer/progress.h"
#include "importer/row_decoder.h"
#include "workflow/safeguards.h"

namespace quell::importer {

struct ImportOptions {
  std::vector<std::string> files;  // "-" = standard input
  std::optional<Format> format;    // overrides detection by name and content

  // Where to: a server (server_url non-empty) or the data directory.
  std::string server_url;
  std::string key;
  std::string data_dir = "./var";
  bool durable = true;  // embedded store: fsync every commit
  // Without a server (the embedded path and the dry run): the safeguards a server on that
  // ledger runs with (the CLI's --config and QUELL_SAFEGUARDS_*, as serve reads them).
  workflow::SafeguardOptions safeguards;

  std::string
      rejects_path;  // "" = <first file>.rejects.ndjson (quell-import.rejects.ndjson for stdin)
  // "" = <first file>.quell-checkpoint; next to --rejects for standard input, an input in a
  // directory that cannot be written, or a checkpoint an earlier version left there.
  std::string checkpoint_path;
  bool resume = false;

  bool dry_run = false;
  std::string policies_file;  // dry run: evaluate against this set instead of the stored one
  // Dry run: opens the ledger it reads (the CLI's --postgres, read-only); unset, the data
  // directory's (none there: an empty state). Called once, on Import's thread; its error
  // refuses the run.
  std::function<absl::StatusOr<std::unique_ptr<ledger::Store>>()> dry_run_ledger;

  size_t batch_rows = 1000;
  // Batches sent and not yet acknowledged. A server's commit thread takes every batch
  // queued as one transaction, then waits for more: with 3 in flight it ran 83% of a
  // server import, with 8 92% (docs/benchmarks.md).
  int in_flight = 8;
  size_t max_row_bytes = 1 << 20;
  absl::Duration retry_for = absl::Seconds(60);
  absl::Duration checkpoint_every = absl::Milliseconds(500);

  Progress::Mode progress = Progress::Mode::kOff;
  FILE* progress_out = stderr;
  FILE* notes_out = stderr;  // the batch id, resume notes

  // Set (by a signal handler) to stop: the run finishes the batches in flight, writes the
  // checkpoint and returns kCancelled.
  const std::atomic<bool>* stop = nullptr;
  // Tests: behave as if `stop` were set once this many rows were read (-1: never).
  int64_t stop_after_rows_for_test = -1;
};

struct ImportResult {
  absl::Status status;     // OK, or why the run stopped (the checkpoint allows --resume)
  bool refused = false;    // the run was refused before anything was written
  bool bad_usage = false;  // refused for its arguments (output paths), not its input
  std::string batch;       // the batch id recorded on every detection and decision
  Counts counts;
  absl::Duration elapsed;
  uint64_t bytes = 0;         // raw bytes read (this run)
  int64_t rows_this_run = 0;  // rows read by this run (a resume skips the ones before)
  int64_t read_before = 0;    // a resume: the rows earlier runs read (in counts.read)
  // Rows this run read whose batch was not acknowledged (a failed or interrupted run):
  // not in counts nor in the checkpoint; --resume reads them again.
  int64_t unacknowledged = 0;
  std::string rejects_path;  // where rejected rows went ("" if none were rejected)
  std::string checkpoint_path;
  std::optional<DryRunReport> dry_run;
};

ImportResult Import(const ImportOptions& options);

//! The human summary (several lines) and the --json summary (one object).
std::string SummaryText(const ImportResult& r);
std::string SummaryJson(const ImportResult& r);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_IMPORTER_H_
