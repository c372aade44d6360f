// Webhook delivery: ledger mitigation changes POSTed to subscribers, at least once, in
// seq order per subscription.
//
// One worker thread serves every subscription. For each enabled subscription it reads
// ledger changes after the subscription's cursor (pages of 100), keeps kMitigation
// changes matching its filters and POSTs them one per request:
//   {"seq": N, "op": "upsert"|"delete", "subscription": "wh_...", "mitigation": {...}}
// ("upsert" when the mitigation is active, "delete" otherwise) with X-Quell-Signature,
// X-Quell-Seq and X-Quell-Subscription headers. The cursor advances durably only after
// a 2xx (or when the change is skipped by the filters, or dead-lettered). A failure
// schedules a retry with exponential backoff and jitter; other subscriptions go on in
// the meantime (a slow receiver still holds the worker for up to `timeout`). After
// `max_attempts` failures of the same change it goes to the dead-letter list and
// delivery continues with the next change. Commits wake the worker (the dispatcher is a
// ledger::ChangeListener); a periodic poll covers anything else.
//
// Several nodes sharing one StateStore (PostgreSQL): delivery runs on one node at a
// time (Start when it takes the "webhooks" lease, Stop when it loses it). Start reloads
// every subscription and its durable cursor from the store before the first delivery
// (retrying until the store answers), so a new holder resumes where the last one's
// recorded cursor is: at least once, no change skipped. The worker thread lives from
// Create to the destructor; it re-reads the subscriptions from the store every `poll`
// whether delivering or not (ones created or deleted through other nodes), so List on
// any node shows the shared state without touching the store itself.
//
// Thread-safety: all public methods are thread-safe. Ownership: the Dispatcher borrows
// the ledger Store, the Clock and the metrics Registry (all must outlive it) and owns
// its StateStore.
#ifndef QUELL_WEBHOOKS_DISPATCHER_H_
#define QUELL_WEBHOOKS_DISPATCHER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/mitigation.h"
#include "core/time.h"
#include "ledger/ledger.h"
#include "ledger/store.h"
#include "webhooks/state_store.h"

namespace quell::obs {
class Registry;
class Counter;
class Gauge;
}  // namespace quell::obs

namespace quell::webhooks {

struct DispatcherOptions {
  int max_attempts = 8;  // failures before a dead letter
  absl::Duration backoff_initial = absl::Milliseconds(500);
  absl::Duration backoff_max = absl::Seconds(60);
  absl::Duration timeout = absl::Seconds(5);  // connect + request + status line
  absl::Duration poll = absl::Seconds(1);     // wake-up without commits
  int page = 100;                             // ledger changes read at once
  // Borrowed, may be null. When set, changes are read through it up to its durable seq
  // (ledger::ReadDurableChanges) and new subscriptions start there, so nothing a crash
  // could undo is sent; null: straight from the store (tests).
  ledger::Ledger* ledger = nullptr;
};

//! The wait before retry number `failures` (>= 1): initial * 2^(failures-1), capped at
//! max, then scaled by a jitter factor in [0.5, 1.0] given as `jitter01` in [0, 1].
absl::Duration BackoffDelay(int failures, const DispatcherOptions& options, double jitter01);

//! Whether a mitigation passes a subscription's filters (empty filter = all).
bool Matches(const Subscription& s, const core::Mitigation& m);

//! The JSON body POSTed for one change.
std::string DeliveryBody(int64_t seq, std::string_view subscription_id, const core::Mitigation& m);

// Per-subscription delivery status, for GET /v1/webhooks.
struct SubscriptionStatus {
  Subscription subscription;
  int failures = 0;          // consecutive failures of the change being delivered
  int64_t pending_seq = 0;   // the change being delivered (0 = none)
  std::string last_error;    // of the last failed attempt
  int64_t delivered = 0;     // 2xx since start
  int64_t dead_letters = 0;  // dead-lettered since start
};

class Dispatcher final : public ledger::ChangeListener {
 public:
  //! Loads the subscriptions from `state`. `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Dispatcher>> Create(std::unique_ptr<StateStore> state,
                                                            ledger::Store* ledger_store,
                                                            core::Clock* clock,
                                                            DispatcherOptions options,
                                                            obs::Registry* metrics);
  ~Dispatcher() override;  // stops the worker thread

  //! Starts delivering (no-op if delivering). May follow Stop: the worker then reloads
  //! the subscriptions and cursors from the store before the first delivery.
  void Start();
  //! Stops delivering; returns once an in-flight POST (bounded by the timeout) is done.
  //! The worker stays in standby (it refreshes this node's view of the state).
  void Stop();
  //! Whether delivering (between Start and Stop).
  bool running() const;

  //! Wakes the worker (a kDurable listener: the ledger's finisher thread; does not block).
  void OnCommitted(const std::vector<ledger::Change>& changes) override;

  struct NewSubscription {
    std::string url;
    std::vector<std::string> actions;
    std::vector<std::string> entity_types;
    std::optional<int64_t>
        from_seq;  // deliver changes after this seq; default: the current last seq
  };
  //! Validates (http:// URL) and stores a subscription; the result holds the secret.
  absl::StatusOr<Subscription> Subscribe(const NewSubscription& request);
  absl::Status Unsubscribe(std::string_view id);
  //! Every subscription with this node's delivery state (from memory: the worker
  //! refreshes it from the store every `poll`, delivering or not).
  std::vector<SubscriptionStatus> List() const;
  //! As List, after reading the subscriptions from the store: with several nodes, one
  //! created or deleted through another is listed as it is now, not as of the last poll.
  absl::StatusOr<std::vector<SubscriptionStatus>> ListCurrent();
  //! kNotFound if no such subscription.
  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(std::string_view id, int64_t after,
                                                      int limit);

 private:
  struct Sub;
  Dispatcher(std::unique_ptr<StateStore> state, ledger::Store* ledger_store, core::Clock* clock,
             DispatcherOptions options);
  void Run();
  // Merges the store's subscriptions into subs_: new ones are added, ones gone from the
  // store dropped; with `reload`, every delivery state restarts from the store's cursor
  // (a new lease holder), else a cursor only moves forward.
  absl::Status Refresh(bool reload);
  // Works on `id` once if due; returns when it should next be looked at.
  absl::Time Step(const std::string& id);
  // The pending change is done with (delivered, or dead-lettered), `recorded` being the
  // state store's answer: moves the cursor past it, or retries the recording in 1 s, or
  // drops a subscription deleted meanwhile. Returns when to look at `sub` next.
  absl::Time Settled(Sub& sub, const absl::Status& recorded, int64_t pending_seq, absl::Time now,
                     bool dead_letter);
  // The last change that may be sent: options_.ledger's durable seq, else the store's.
  absl::StatusOr<int64_t> LastSeq();

  std::unique_ptr<StateStore> state_;
  ledger::Store* ledger_store_;
  core::Clock* clock_;
  const DispatcherOptions options_;

  std::mutex refresh_mu_;  // a Refresh does not interleave with Subscribe/Unsubscribe
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Sub>> subs_;  // guarded by mu_
  bool wake_ = false;                                 // guarded by mu_
  bool active_ = false;                               // guarded by mu_: between Start and Stop
  bool busy_ = false;      // guarded by mu_: the worker is in a delivery round
  bool reload_ = false;    // guarded by mu_: Refresh(true) before the next delivery
  bool shutdown_ = false;  // guarded by mu_: the destructor runs
  std::thread worker_;     // from Create to the destructor

  obs::Counter* delivered_ = nullptr;
  obs::Counter* failed_ = nullptr;
  obs::Counter* dead_ = nullptr;
  obs::Gauge* depth_ = nullptr;
};

}  // namespace quell::webhooks

#endif  // QUELL_WEBHOOKS_DISPATCHER_H_
