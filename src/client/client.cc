#include "client/client.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/internal/feed.h"
#include "client/internal/http_conn.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "index/index.h"

namespace quell::client {

using internal::FeedItem;

class Client::Impl {
 public:
  Impl(ClientOptions options, internal::Endpoint endpoint)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? options_.clock : core::RealClock::Get()),
        authorization_(absl::StrCat("Bearer ", options_.key)),
        conn_(std::move(endpoint)) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    conn_.Abort();
    if (thread_.joinable()) thread_.join();
  }

  void StartThread() {
    thread_ = std::thread([this] {
      core::NameThisThread("quell-client");
      Run();
    });
  }

  // ---- readers (any thread) ----

  core::Verdict Check(const core::Entity& entity, std::string_view surface) const {
    index::Hits hits;
    index_.Lookup(entity, clock_->Now(), &hits);
    core::Verdict verdict = core::Verdict::kAllow;
    for (const index::Hit& h : hits) {
      const core::Action* a = options_.catalog->Find(index_.ActionName(h.action));
      if (a == nullptr) continue;  // unknown action: no verdict effect (allow)
      if (!a->AppliesTo(surface)) continue;
      verdict = std::max(verdict, a->verdict);
    }
    return verdict;
  }

  std::vector<Match> Lookup(const core::Entity& entity, std::string_view surface) const {
    index::Hits hits;
    index_.Lookup(entity, clock_->Now(), &hits);
    std::vector<Match> out;
    for (const index::Hit& h : hits) {
      std::string_view action = index_.ActionName(h.action);
      const core::Action* a = options_.catalog->Find(action);
      if (a != nullptr && !a->AppliesTo(surface)) continue;
      Match m;
      m.id = index::DecodeId(h.id);
      if (h.cidr_prefix >= 0) {
        auto ip = core::ParseIp(entity.id());
        core::Network net{core::MaskIp(*ip, h.cidr_prefix), h.cidr_prefix};
        m.entity = absl::StrCat("cidr:", core::FormatNetwork(net));
      } else {
        m.entity = entity.str();
      }
      m.action = std::string(action);
      m.verdict = a != nullptr ? a->verdict : core::Verdict::kAllow;
      m.expires_at = core::FromMicros(h.expires_us);
      out.push_back(std::move(m));
    }
    return out;
  }

  Staleness staleness() const {
    Staleness s;
    s.seq = seq_.load(std::memory_order_acquire);
    s.server_seq = std::max(server_seq_.load(std::memory_order_acquire), s.seq);
    s.lag = s.server_seq - s.seq;
    s.synced = synced_.load(std::memory_order_acquire);
    s.connected = connected_.load(std::memory_order_acquire);
    int64_t last_ok = last_ok_us_.load(std::memory_order_acquire);
    if (last_ok > 0) s.since_sync = clock_->Now() - core::FromMicros(last_ok);
    std::lock_guard<std::mutex> lock(error_mu_);
    s.last_error = last_error_;
    return s;
  }

  ClientStats stats() const {
    ClientStats s;
    s.snapshots_loaded = snapshots_.load();
    s.changes_applied = applied_.load();
    s.stale_changes = stale_.load();
    s.reconnects = reconnects_.load();
    s.size = static_cast<int64_t>(index_.size());
    s.snapshot_wait = absl::Microseconds(snapshot_wait_us_.load());
    s.snapshot_load = absl::Microseconds(snapshot_load_us_.load());
    s.snapshot_apply = absl::Microseconds(snapshot_apply_us_.load());
    s.snapshot_bytes = snapshot_bytes_.load();
    return s;
  }

  absl::Status WaitUntil(absl::Duration timeout, const std::function<bool()>& done,
                         std::string_view what) const {
    absl::Time deadline = absl::Now() + timeout;
    std::unique_lock<std::mutex> lock(progress_mu_);
    while (!done()) {
      absl::Time now = absl::Now();
      if (now >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat("mirror not ", AV(what), " after ",
                                                        absl::FormatDuration(timeout),
                                                        "; last error: ", staleness().last_error));
      }
      progress_cv_.wait_for(
          lock, absl::ToChronoMicroseconds(std::min(deadline - now, absl::Milliseconds(100))));
    }
    return absl::OkStatus();
  }

  std::vector<std::string> Dump() const {
    std::vector<std::string> lines;
    std::lock_guard<std::mutex> lock(apply_mu_);
    lines.reserve(index_.size());
    index_.ForEach([&lines](const Key& id, std::string_view entity, std::string_view action,
                            int64_t expires_us) {
      lines.push_back(
          absl::StrCat(index::DecodeId(id), " ", AV(entity), " ", AV(action), " ", expires_us));
    });
    std::sort(lines.begin(), lines.end());
    return lines;
  }

  std::atomic<int64_t> seq_{0};
  std::atomic<bool> synced_{false};

 private:
  using Key = std::array<uint8_t, 16>;
  // Threads that insert a loaded snapshot into the index (the sync thread and one more:
  // once the snapshot is in, the server that sent it has no more work for the cores).
  static constexpr int kLoadThreads = 2;

  // A snapshot's mitigations as they are read: handed to a bulk loader of the index
  // (which hashes and groups each at once, and applies them all once the whole snapshot
  // is in, sizing its tables once). The entity texts live in blocks that never move, so
  // the loader's views stay valid. Sync thread only; one per load.
  class SnapshotEntries {
   public:
    explicit SnapshotEntries(index::Index* index, bool keep_ids) : loader(index) {
      if (keep_ids) ids.emplace();
    }

    index::Index::BulkLoader loader;
    std::optional<absl::flat_hash_set<Key>> ids;  // when reconciling: every id loaded

    absl::Status Add(const index::Index::ActiveEntry& e) {
      if (ids.has_value()) ids->insert(e.id);
      return loader.Add(e);
    }

    std::string_view Keep(std::string_view text) {
      if (used_ + text.size() > capacity_) {
        capacity_ = std::max(kBlockBytes, text.size());
        blocks_.emplace_back(new char[capacity_]);  // not zeroed: written before read
        used_ = 0;
      }
      char* at = blocks_.back().get() + used_;
      std::memcpy(at, text.data(), text.size());
      used_ += text.size();
      return std::string_view(at, text.size());
    }

   private:
    static constexpr size_t kBlockBytes = size_t{1} << 20;
    std::vector<std::unique_ptr<char[]>> blocks_;
    size_t used_ = 0;
    size_t capacity_ = 0;
  };

  // ---- the sync thread ----

  void Run() {
    absl::Duration backoff = options_.min_backoff;
    std::mt19937_64 rng(std::random_device{}());
    while (!stopping()) {
      absl::Status s = synced_.load() ? FollowOnce() : LoadSnapshot();
      if (s.ok()) {
        backoff = options_.min_backoff;
        continue;
      }
      if (stopping()) break;
      connected_.store(false, std::memory_order_release);
      {
        std::lock_guard<std::mutex> lock(error_mu_);
        last_error_ = std::string(SV(s.ToString()));
      }
      reconnects_.fetch_add(1);
      conn_.Close();
      // Full jitter over [backoff/2, backoff], so many clients do not reconnect together.
      std::uniform_real_distribution<double> jitter(0.5, 1.0);
      absl::Duration sleep = backoff * jitter(rng);
      backoff = std::min(options_.max_backoff, backoff * 2);
      std::unique_lock<std::mutex> lock(stop_mu_);
      stop_cv_.wait_for(lock, absl::ToChronoMicroseconds(sleep), [this] { return stop_; });
    }
  }

  bool stopping() {
    std::lock_guard<std::mutex> lock(stop_mu_);
    return stop_;
  }

  void MarkOk() {
    connected_.store(true, std::memory_order_release);
    last_ok_us_.store(core::ToMicros(clock_->Now()), std::memory_order_release);
    std::lock_guard<std::mutex> lock(error_mu_);
    last_error_.clear();
  }

  void Progress() {
    { std::lock_guard<std::mutex> lock(progress_mu_); }
    progress_cv_.notify_all();
  }

  // Caller holds apply_mu_.
  absl::Status Apply(const FeedItem& item) {
    Key key;
    if (!index::EncodeId(item.id, &key)) {
      return absl::DataLossError(absl::StrCat("not a mitigation id: ", item.id));
    }
    mitigation_.id = item.id;
    mitigation_.entity = item.entity;
    mitigation_.action = item.action;
    mitigation_.state =
        item.active ? core::MitigationState::kActive : core::MitigationState::kRevoked;
    mitigation_.expires_at = core::FromMicros(item.expires_us);
    return index_.Apply(mitigation_);
  }

  // The index's id for an action name; the last one is remembered (a snapshot's lines
  // mostly repeat a few names).
  absl::StatusOr<uint16_t> ActionId(std::string_view name) {
    if (!last_action_.empty() && name == last_action_) return last_action_id_;
    QUELL_ASSIGN_OR_RETURN(uint16_t id, index_.InternAction(name));
    last_action_ = index_.ActionName(id);  // interned names live as long as the index
    last_action_id_ = id;
    return id;
  }

  // One snapshot line (not the header) into `out`: the enforcement view's lines by the
  // fast path, anything else (or anything it declines) as JSON.
  absl::Status AddSnapshotLine(std::string_view line, SnapshotEntries* out) {
    index::Index::ActiveEntry e;
    // `e.id` is set; the rest, from either path.
    auto add = [&](std::string_view entity, std::string_view action,
                   int64_t expires_us) -> absl::Status {
      QUELL_ASSIGN_OR_RETURN(e.action, ActionId(action));
      e.entity = out->Keep(entity);
      e.expires_us = expires_us;
      return out->Add(e);
    };
    internal::EnforcementView v;
    if (internal::ParseEnforcementView(line, &v) && index::EncodeId(v.id, &e.id)) {
      auto entity = core::Entity::Parse(v.entity);
      if (entity.ok()) return add(entity->str(), v.action, v.expires_us);
    }
    // The fast path declined it: the JSON path (not ParseSnapshotLine, which would try the
    // fast path again) reads it or says what is wrong.
    QUELL_ASSIGN_OR_RETURN(FeedItem item, internal::ParseSnapshotLineJson(line));
    if (!index::EncodeId(item.id, &e.id)) {
      return absl::DataLossError(absl::StrCat("not a mitigation id: ", item.id));
    }
    return add(item.entity.str(), item.action, item.expires_us);
  }

  // GET /v1/snapshot, parsed line by line as it streams in, then applied to the index at
  // once. When the mirror already holds something (a retried load), what the snapshot
  // lacks is removed after.
  absl::Status LoadSnapshot() {
    std::optional<int64_t> snapshot_seq;
    // Only the sync thread writes the index, so what it holds now it holds at the end.
    const bool reconcile = index_.size() > 0;
    SnapshotEntries snapshot(&index_, reconcile);
    std::string partial;
    std::string error_body;
    auto on_line = [&](std::string_view line) -> absl::Status {
      if (line.empty()) return absl::OkStatus();
      if (!snapshot_seq.has_value()) {
        QUELL_ASSIGN_OR_RETURN(snapshot_seq, internal::ParseSnapshotHeader(line));
        return absl::OkStatus();
      }
      return AddSnapshotLine(line, &snapshot);
    };
    // An error reply's body is kept for the message, not parsed.
    const absl::Time requested = absl::Now();
    absl::Time first_byte = absl::InfiniteFuture();
    int64_t bytes = 0;
    auto code = conn_.Get("/v1/snapshot?view=enforcement", authorization_,
                          options_.snapshot_timeout, [&](std::string_view piece) -> absl::Status {
                            if (bytes == 0) first_byte = absl::Now();
                            bytes += static_cast<int64_t>(piece.size());
                            if (conn_.status_code() != 200) {
                              if (error_body.size() < 4096)
                                error_body.append(piece.substr(0, 4096));
                              return absl::OkStatus();
                            }
                            size_t start = 0;
                            if (!partial.empty()) {
                              size_t nl = piece.find('\n');
                              if (nl == std::string_view::npos) {
                                partial.append(piece);
                                return absl::OkStatus();
                              }
                              partial.append(piece.substr(0, nl));
                              QUELL_RETURN_IF_ERROR(on_line(partial));
                              partial.clear();
                              start = nl + 1;
                            }
                            while (start < piece.size()) {
                              size_t nl = piece.find('\n', start);
                              if (nl == std::string_view::npos) {
                                partial.assign(piece.substr(start));
                                break;
                              }
                              QUELL_RETURN_IF_ERROR(on_line(piece.substr(start, nl - start)));
                              start = nl + 1;
                            }
                            return absl::OkStatus();
                          });
    if (!code.ok()) return code.status();
    if (*code != 200) {
      return absl::UnavailableError(
          absl::StrCat("GET /v1/snapshot: HTTP ", *code, " ", error_body));
    }
    if (!partial.empty()) QUELL_RETURN_IF_ERROR(on_line(partial));
    if (!snapshot_seq.has_value()) return absl::DataLossError("empty snapshot");
    const absl::Time received = absl::Now();
    {
      std::lock_guard<std::mutex> lock(apply_mu_);
      QUELL_RETURN_IF_ERROR(snapshot.loader.Finish(kLoadThreads));
      if (reconcile) QUELL_RETURN_IF_ERROR(RemoveAllBut(*snapshot.ids));
    }
    index_.set_seq(*snapshot_seq);
    const absl::Time loaded = absl::Now();
    snapshot_wait_us_.store(absl::ToInt64Microseconds(std::min(first_byte, loaded) - requested));
    snapshot_load_us_.store(absl::ToInt64Microseconds(loaded - std::min(first_byte, loaded)));
    snapshot_bytes_.store(bytes);
    snapshot_apply_us_.store(absl::ToInt64Microseconds(loaded - received));
    seq_.store(*snapshot_seq, std::memory_order_release);
    // The snapshot is the server's state as of its seq, newer than anything it said before
    // (after a cursor_ahead reload, the older ledger's head is below what it said then).
    server_seq_.store(*snapshot_seq, std::memory_order_release);
    snapshots_.fetch_add(1);
    synced_.store(true, std::memory_order_release);
    MarkOk();
    Progress();
    return absl::OkStatus();
  }

  // Removes from the index every mitigation whose id is not in `keep`. Caller holds
  // apply_mu_.
  absl::Status RemoveAllBut(const absl::flat_hash_set<Key>& seen) {
    std::vector<FeedItem> gone;
    absl::Status st;
    index_.ForEach(
        [&](const Key& id, std::string_view entity, std::string_view action, int64_t expires_us) {
          if (seen.contains(id) || !st.ok()) return;
          FeedItem item;
          item.id = index::DecodeId(id);
          auto e = core::Entity::Parse(entity);
          if (!e.ok()) {
            st = e.status();
            return;
          }
          item.entity = *std::move(e);
          item.action = std::string(action);
          item.expires_us = expires_us;
          item.active = false;
          gone.push_back(std::move(item));
        });
    QUELL_RETURN_IF_ERROR(st);
    for (const FeedItem& item : gone) QUELL_RETURN_IF_ERROR(Apply(item));
    return absl::OkStatus();
  }

  // One long-poll of /v1/changes after the mirror's seq.
  absl::Status FollowOnce() {
    const int64_t after = seq_.load(std::memory_order_acquire);
    std::string target =
        absl::StrCat("/v1/changes?after=", after, "&limit=", options_.page,
                     "&wait=", std::max<int64_t>(0, absl::ToInt64Seconds(options_.poll_wait)));
    std::string body;
    auto code = conn_.Get(target, authorization_, options_.poll_wait + options_.io_timeout,
                          [&body](std::string_view piece) {
                            body.append(piece);
                            return absl::OkStatus();
                          });
    if (!code.ok()) return code.status();
    if (*code == 409 && absl::StrContains(body, "\"cursor_ahead\"")) {
      // The mirror is ahead of the server's ledger (restored from an older backup, or
      // another cluster): following on would skip every change up to its seq. Reload.
      synced_.store(false, std::memory_order_release);
      return absl::OkStatus();
    }
    if (*code != 200) {
      return absl::UnavailableError(
          absl::StrCat("GET /v1/changes: HTTP ", *code, " ", body.substr(0, 4096)));
    }
    QUELL_ASSIGN_OR_RETURN(internal::ChangesPage page, internal::ParseChangesPage(body));
    int64_t seq = after;
    {
      std::lock_guard<std::mutex> lock(apply_mu_);
      for (const FeedItem& item : page.items) {
        if (item.seq <= seq) {  // a duplicate or out of order: never expected from the server
          stale_.fetch_add(1);
          continue;
        }
        QUELL_RETURN_IF_ERROR(Apply(item));
        seq = item.seq;
        applied_.fetch_add(1);
      }
    }
    seq = std::max(seq, page.next);
    index_.set_seq(seq);
    seq_.store(seq, std::memory_order_release);
    server_seq_.store(std::max(server_seq_.load(), page.next), std::memory_order_release);
    MarkOk();
    Progress();
    return absl::OkStatus();
  }

  const ClientOptions options_;
  core::Clock* const clock_;
  const std::string authorization_;
  internal::HttpConn conn_;  // sync thread only (Abort from the destructor)
  index::Index index_;       // written by the sync thread only

  // Sync thread only: reused by Apply so that a feed's changes do not allocate a
  // Mitigation each; the last action name ActionId interned.
  core::Mitigation mitigation_;
  std::string_view last_action_;
  uint16_t last_action_id_ = 0;
  // Held by the sync thread while it writes the index, and by Dump while it lists it.
  mutable std::mutex apply_mu_;

  std::atomic<int64_t> server_seq_{0};
  std::atomic<bool> connected_{false};
  std::atomic<int64_t> last_ok_us_{0};
  mutable std::mutex error_mu_;
  std::string last_error_;  // guarded by error_mu_
  std::atomic<int64_t> snapshots_{0}, applied_{0}, stale_{0}, reconnects_{0};
  std::atomic<int64_t> snapshot_wait_us_{0}, snapshot_load_us_{0}, snapshot_bytes_{0};
  std::atomic<int64_t> snapshot_apply_us_{0};

  mutable std::mutex progress_mu_;
  mutable std::condition_variable progress_cv_;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // guarded by stop_mu_
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Start(ClientOptions options) {
  QUELL_ASSIGN_OR_RETURN(internal::Endpoint endpoint, internal::ParseHttpUrl(options.url));
  if (options.key.empty()) return absl::InvalidArgumentError("key: an API key is required");
  if (options.page < 1 || options.page > 10000) {
    return absl::InvalidArgumentError("page must be in [1, 10000]");
  }
  if (options.catalog == nullptr) return absl::InvalidArgumentError("catalog is required");
  auto impl = std::make_unique<Impl>(std::move(options), std::move(endpoint));
  impl->StartThread();
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::Status Client::WaitUntilSynced(absl::Duration timeout) const {
  return impl_->WaitUntil(
      timeout, [this] { return impl_->synced_.load(); }, "synced");
}

absl::Status Client::WaitForSeq(int64_t seq, absl::Duration timeout) const {
  return impl_->WaitUntil(
      timeout, [this, seq] { return impl_->synced_.load() && impl_->seq_.load() >= seq; },
      absl::StrCat("at seq ", seq));
}

core::Verdict Client::Check(const core::Entity& entity, std::string_view surface) const {
  return impl_->Check(entity, surface);
}

absl::StatusOr<core::Verdict> Client::Check(std::string_view entity,
                                            std::string_view surface) const {
  QUELL_ASSIGN_OR_RETURN(core::Entity e, core::Entity::Parse(entity));
  return impl_->Check(e, surface);
}

std::vector<Match> Client::Lookup(const core::Entity& entity, std::string_view surface) const {
  return impl_->Lookup(entity, surface);
}

Staleness Client::staleness() const { return impl_->staleness(); }
ClientStats Client::stats() const { return impl_->stats(); }
std::vector<std::string> Client::DumpForTest() const { return impl_->Dump(); }

}  // namespace quell::client
