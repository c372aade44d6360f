// The checkpoint of an import run: where the last acknowledged batch ended, so that
// `--resume` continues from there. Written atomically (temporary file, fsync, rename,
// fsync of the directory): after a crash the file is the old or the new checkpoint,
// never a mix. Rows after it are replayed on resume, which is safe because detections
// are idempotent per (source, id).
//
// Thread-safety: plain data and functions; callers serialise access to one path.
#ifndef QUELL_IMPORTER_CHECKPOINT_H_
#define QUELL_IMPORTER_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quell::importer {

// What an import has done so far (also the final summary).
struct Counts {
  int64_t read = 0;                          // rows read (valid or not)
  int64_t accepted = 0;                      // new detections stored
  int64_t duplicate = 0;                     // already stored (same source and id): nothing changed
  int64_t rejected = 0;                      // written to the rejects file
  std::map<std::string, int64_t> decisions;  // decisions of accepted rows, by state
  friend bool operator==(const Counts&, const Counts&) = default;
};

struct Checkpoint {
  std::string batch;               // the run's batch id, kept across resumes
  std::vector<std::string> files;  // the inputs, in order
  std::vector<int64_t> sizes;      // their sizes (-1: not a regular file)
  int64_t file = 0;                // index of the file being read (== files.size(): done)
  uint64_t offset = 0;             // decompressed offset after the last acknowledged row
  int64_t line = 0;                // lines consumed up to there
  int64_t rows = 0;                // rows consumed up to there (Avro resumes by this)
  uint64_t rejects_bytes = 0;      // the rejects file's length at that point
  std::string rejects;             // the rejects file, absolute ("": a checkpoint before it)
  // CRC-32 of the file's decompressed bytes before `offset` (text formats), or of the keys
  // of its first `rows` records (Avro); none: a checkpoint before it. A resume reads them
  // again and refuses other data (Position::crc).
  std::optional<uint32_t> crc;
  // Where the rows go: "server URL" or "data dir /abs/path" ("": a checkpoint before it).
  std::string destination;
  Counts counts;
  friend bool operator==(const Checkpoint&, const Checkpoint&) = default;
};

std::string CheckpointToJson(const Checkpoint& c);
//! kInvalidArgument for a file that is not a checkpoint.
absl::StatusOr<Checkpoint> CheckpointFromJson(std::string_view json);

//! Writes `c` to `path` durably and atomically.
absl::Status WriteCheckpoint(const std::string& path, const Checkpoint& c);
//! The checkpoint at `path`, or nullopt if there is none.
absl::StatusOr<std::optional<Checkpoint>> ReadCheckpoint(const std::string& path);
//! Removes the checkpoint (after a complete run). Absent is fine.
absl::Status RemoveCheckpoint(const std::string& path);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_CHECKPOINT_H_
