// Where rows go: a running server (HttpSink, POST /v1/detections over keep-alive
// HTTP/1.1, the rows as NDJSON: the server decodes and validates them) or, decoded, the
// data directory itself (DirectSink: the same evaluation and
// workflow::ApplyDetections the server runs, through a Ledger of its own). Both are
// idempotent per (source, id), so replaying a batch after an interruption is safe.
//
// Thread-safety: Send is called from one thread; `done` runs on a sink thread, exactly
// once per Send, and must not block for long.
#ifndef QUELL_IMPORTER_SINK_H_
#define QUELL_IMPORTER_SINK_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "policy/policy_set.h"
#include "workflow/safeguards.h"

namespace quell::importer {

struct ItemResult {
  enum class Status { kAccepted, kDuplicate, kRejected };
  Status status = Status::kAccepted;
  std::string error;                // kRejected: why
  std::string row;                  // kRejected: the detection as sent
  std::vector<std::string> states;  // kAccepted: the state of each decision
};

struct BatchResult {
  absl::Status status;            // not OK: the batch was not applied (or not known to be)
  std::vector<ItemResult> items;  // one per detection, in order, when status is OK
  int64_t refused_row = -1;       // >= 0 with status: the row (in the batch) it was refused for
};

// A batch of rows, in the form its sink takes (Sink::TakesJson); a batch holding rows of
// the other form fails whole (kInternal).
struct Rows {
  std::vector<engine::Detection> detections;  // decoded
  std::vector<std::string> json;              // or one JSON object text per row
  size_t size() const { return detections.size() + json.size(); }
};

class Sink {
 public:
  virtual ~Sink() = default;
  //! Whether Send takes rows as JSON texts (an NDJSON line as read, a CSV or Avro row
  //! decoded and encoded again), which the sink's far end validates, or decoded.
  virtual bool TakesJson() const = 0;
  virtual void Send(Rows rows, std::function<void(BatchResult)> done) = 0;
  //! How the sink is described in messages ("server http://..", "data dir ./var").
  virtual std::string Describe() const = 0;
  //! The policy set whose declared detection types the importer checks before sending
  //! (a row of another type is rejected as the server would), or null when the far end
  //! checks them itself or no set is published.
  virtual const policy::PolicySet* DeclaredTypes() const { return nullptr; }
};

struct HttpSinkOptions {
  std::string url;      // http://host:port[/prefix]
  std::string key;      // bearer key (a detector key for the sources in the file, or admin)
  std::string batch;    // the import batch, recorded on every detection (?batch=)
  int connections = 8;  // batches in flight
  // Keep retrying 429/503/connection errors this long; a request waits as long (5 minutes
  // at least) for its reply.
  absl::Duration retry_for = absl::Seconds(60);
  // Set: retrying stops, and a request still waiting for its reply ends within
  // HttpConnection::kCancelGrace (the batch fails kCancelled), so Ctrl-C is held neither by
  // a server that is down nor by one that hangs. May be null; must outlive the sink.
  const std::atomic<bool>* stop = nullptr;
};

//! Connects once to check the address (kUnavailable if nothing answers; kInvalidArgument
//! for a bad URL: only http:// is supported).
absl::StatusOr<std::unique_ptr<Sink>> OpenHttpSink(const HttpSinkOptions& options);

struct DirectSinkOptions {
  std::string data_dir;
  bool durable = true;                    // SQLite synchronous=FULL
  workflow::SafeguardOptions safeguards;  // immunity, pending_ttl: as the server's
};

//! Locks DIR/import.lock and DIR/server.lock (kFailedPrecondition if another import or a
//! server holds them), opens the store and a ledger, and loads the latest published
//! policy set (none: detections are stored and earn no decisions).
absl::StatusOr<std::unique_ptr<Sink>> OpenDirectSink(const DirectSinkOptions& options);

//! An exclusive flock on `path` (created if needed), not waiting: the descriptor to keep
//! open, or kFailedPrecondition `holder_message` if another process holds it. The file may
//! be removed by its holder when done (a checkpoint's lock): a lock taken on a file that is
//! no longer the one at `path` is dropped and taken again, so two holders never hold two
//! files of one name.
absl::StatusOr<int> LockFile(const std::string& path, const std::string& holder_message);

//! The lock a `quell serve` on DIR holds for its lifetime (DIR/server.lock, flock
//! exclusive; DIR created if needed). Returns the descriptor to keep open;
//! kFailedPrecondition if held.
absl::StatusOr<int> LockDataDir(const std::string& dir, const std::string& file,
                                const std::string& holder_message);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_SINK_H_
