// quell::client::Client — a local mirror of a Quell server's enforced set, for product
// services that check on their hot path without a network round trip.
//
//   auto client = Client::Start({.url = "http://127.0.0.1:8080", .key = key});
//   (*client)->WaitUntilSynced(absl::Seconds(10));
//   core::Verdict v = (*client)->Check(entity);             // in process, ~100 ns
//
// How it syncs (SPEC "change feed"): one background thread loads GET /v1/snapshot
// (NDJSON; first line {"seq": N}) into an in-memory quell::index::Index, then follows
// GET /v1/changes?after=SEQ&wait=W (long-poll) and applies each change in seq order, over
// one keep-alive HTTP/1.1 connection. On any error it reconnects with exponential backoff
// and jitter, and resumes from the last applied seq (no reload: the feed has every
// change). It reloads the snapshot only if the server's feed went backwards (a server
// whose data was replaced).
//
// Verdicts: the mirror holds action names; their verdict and surfaces come from
// `options.catalog` (the example catalog of SPEC by default) — give it the server's
// catalog if that was configured differently.
//
// Thread-safety: Check, Lookup, staleness() and stats() are thread-safe and lock-free
// (they read the index, which the sync thread writes — with one helper thread, on other
// shards, while it inserts a loaded snapshot). Start/destructor from one thread.
// Ownership: the Client owns its sync thread; destroying it stops the thread (aborting a
// long-poll in flight).
#ifndef QUELL_CLIENT_CLIENT_H_
#define QUELL_CLIENT_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/action.h"
#include "core/entity.h"
#include "core/time.h"

namespace quell::client {

struct ClientOptions {
  std::string url;  // "http://HOST:PORT" of a quell server (or a load balancer)
  std::string key;  // API key with the check permission (enforcer, viewer, admin...)
  std::shared_ptr<const core::ActionCatalog> catalog = core::ActionCatalog::Default();
  absl::Duration poll_wait = absl::Seconds(10);  // long-poll wait per /v1/changes request
  int page = 1000;                               // changes per request
  absl::Duration min_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration io_timeout = absl::Seconds(10);  // connect, and silence beyond poll_wait
  // Silence allowed while the server prepares the snapshot (today's server builds the
  // whole body before the first byte: seconds at a million mitigations).
  absl::Duration snapshot_timeout = absl::Seconds(300);
  core::Clock* clock = nullptr;  // for expiry; null: the real clock
};

// One active mitigation that applies, as the mirror holds it.
struct Match {
  std::string id;
  std::string entity;  // the entity asked, or the covering cidr: network
  std::string action;
  core::Verdict verdict = core::Verdict::kAllow;
  absl::Time expires_at;
};

// How far behind the server the mirror may be.
struct Staleness {
  int64_t seq = 0;         // last change applied (the snapshot's seq right after a load)
  int64_t server_seq = 0;  // highest seq the server has reported
  int64_t lag = 0;         // server_seq - seq: > 0 while catching up
  bool synced = false;     // a snapshot has been loaded
  bool connected = false;  // the last request to the server succeeded
  // Time since the last successful reply from the server (a long-poll in flight on a
  // healthy connection lasts up to poll_wait, so up to that is normal).
  absl::Duration since_sync = absl::InfiniteDuration();
  std::string last_error;  // "" if the last request succeeded
};

struct ClientStats {
  int64_t snapshots_loaded = 0;
  int64_t changes_applied = 0;  // upserts and deletes applied from the feed
  int64_t stale_changes = 0;    // changes with seq <= the mirror's (never expected)
  int64_t reconnects = 0;       // failed requests followed by a backoff
  int64_t size = 0;             // active mitigations held
  // The last snapshot load: request to first body byte (the server preparing it), and
  // first byte to loaded (transfer, parsing and applying to the mirror).
  absl::Duration snapshot_wait;
  absl::Duration snapshot_load;
  // Of snapshot_load: applying the parsed snapshot to the index once it was all in.
  absl::Duration snapshot_apply;
  int64_t snapshot_bytes = 0;
};

class Client {
 public:
  //! Validates the options and starts the sync thread (it connects in the background).
  //! kInvalidArgument for a bad url, empty key, page outside [1, 10000].
  static absl::StatusOr<std::unique_ptr<Client>> Start(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  //! Blocks until the first snapshot is loaded; kDeadlineExceeded after `timeout` (with
  //! the last error in the message).
  absl::Status WaitUntilSynced(absl::Duration timeout) const;
  //! Blocks until the mirror has applied every change up to `seq`; kDeadlineExceeded
  //! after `timeout`.
  absl::Status WaitForSeq(int64_t seq, absl::Duration timeout) const;

  //! The verdict for `entity` (allow when nothing applies), `surface` as in the HTTP
  //! check. An `ip:` entity also matches covering `cidr:` mitigations. Lock-free, no
  //! allocation for up to 4 matches.
  core::Verdict Check(const core::Entity& entity, std::string_view surface = {}) const;
  //! Parses `entity` first: kInvalidArgument if it is not `type:id`.
  absl::StatusOr<core::Verdict> Check(std::string_view entity, std::string_view surface = {}) const;
  //! The active mitigations that apply (what the HTTP check lists).
  std::vector<Match> Lookup(const core::Entity& entity, std::string_view surface = {}) const;

  Staleness staleness() const;
  ClientStats stats() const;

  //! Every active mitigation held, sorted by id, one "id entity action expires_us" line
  //! each. For tests and tools: it takes a lock the sync thread holds while applying.
  std::vector<std::string> DumpForTest() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quell::client

#endif  // QUELL_CLIENT_CLIENT_H_
