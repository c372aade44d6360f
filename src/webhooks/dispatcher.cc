#include "webhooks/dispatcher.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/threads.h"
#include "obs/metrics.h"
#include "webhooks/http_post.h"
#include "webhooks/signature.h"

namespace quell::webhooks {

// A subscription and its delivery state. Every field is guarded by Dispatcher::mu_.
struct Dispatcher::Sub {
  Subscription s;  // s.cursor: highest seq handled (the durable one may lag for skipped seqs)
  bool deleted = false;
  int failures = 0;
  int64_t pending_seq = 0;  // the matching change being delivered; 0 = none
  std::string pending_body;
  absl::Time next_attempt = absl::InfinitePast();
  std::string last_error;
  int64_t delivered = 0;
  int64_t dead_letters = 0;
};

absl::Duration BackoffDelay(int failures, const DispatcherOptions& options, double jitter01) {
  absl::Duration d = options.backoff_initial;
  for (int i = 1; i < failures && d < options.backoff_max; ++i) d *= 2;
  d = std::min(d, options.backoff_max);
  jitter01 = std::clamp(jitter01, 0.0, 1.0);
  return d * (0.5 + 0.5 * jitter01);
}

bool Matches(const Subscription& s, const core::Mitigation& m) {
  if (!s.actions.empty() &&
      std::find(s.actions.begin(), s.actions.end(), m.action) == s.actions.end())
    return false;
  if (!s.entity_types.empty() && std::find(s.entity_types.begin(), s.entity_types.end(),
                                           m.entity.type()) == s.entity_types.end())
    return false;
  return true;
}

std::string DeliveryBody(int64_t seq, std::string_view subscription_id, const core::Mitigation& m) {
  std::string out = absl::StrCat("{\"seq\":", seq, ",\"op\":\"",
                                 m.state == core::MitigationState::kActive ? "upsert" : "delete",
                                 "\",\"subscription\":");
  core::AppendJsonString(subscription_id, &out);
  out += ",\"mitigation\":";
  core::AppendMitigationJson(m, &out);
  out += '}';
  return out;
}

Dispatcher::Dispatcher(std::unique_ptr<StateStore> state, ledger::Store* ledger_store,
                       core::Clock* clock, DispatcherOptions options)
    : state_(std::move(state)), ledger_store_(ledger_store), clock_(clock), options_(options) {}

absl::StatusOr<std::unique_ptr<Dispatcher>> Dispatcher::Create(std::unique_ptr<StateStore> state,
                                                               ledger::Store* ledger_store,
                                                               core::Clock* clock,
                                                               DispatcherOptions options,
                                                               obs::Registry* metrics) {
  if (options.max_attempts < 1 || options.page < 1 || options.page > 10000)
    return absl::InvalidArgumentError("webhooks: max_attempts >= 1 and page in [1, 10000]");
  QUELL_ASSIGN_OR_RETURN(auto subs, state->ListSubscriptions());
  std::unique_ptr<Dispatcher> d(new Dispatcher(std::move(state), ledger_store, clock, options));
  for (auto& s : subs) {
    auto sub = std::make_shared<Sub>();
    sub->s = std::move(s);
    d->subs_.emplace(sub->s.id, std::move(sub));
  }
  if (metrics != nullptr) {
    QUELL_ASSIGN_OR_RETURN(auto* family, metrics->AddCounterFamily(
                                             "quell_webhook_deliveries_total",
                                             "Webhook delivery attempts by result.", {"result"}));
    d->delivered_ = family->WithLabels({"ok"});
    d->failed_ = family->WithLabels({"failed"});
    d->dead_ = family->WithLabels({"dead_letter"});
    QUELL_ASSIGN_OR_RETURN(
        d->depth_,
        metrics->AddGauge("quell_webhook_queue_depth",
                          "Ledger changes not yet handled, summed over webhook subscriptions."));
  }
  d->worker_ = std::thread([p = d.get()] {  // in standby until Start
    core::NameThisThread("quell-webhooks");
    p->Run();
  });
  return d;
}

Dispatcher::~Dispatcher() {
  {
    std::lock_guard lock(mu_);
    shutdown_ = true;
    active_ = false;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Dispatcher::Start() {
  {
    std::lock_guard lock(mu_);
    if (shutdown_) return;
    if (!active_) {
      active_ = true;
      reload_ = true;
    }
    wake_ = true;
  }
  cv_.notify_all();
}

void Dispatcher::Stop() {
  std::unique_lock lock(mu_);
  active_ = false;
  cv_.notify_all();
  cv_.wait(lock, [this] { return !busy_; });
}

bool Dispatcher::running() const {
  std::lock_guard lock(mu_);
  return active_;
}

absl::Status Dispatcher::Refresh(bool reload) {
  std::lock_guard refresh(refresh_mu_);
  QUELL_ASSIGN_OR_RETURN(auto stored, state_->ListSubscriptions());
  std::lock_guard lock(mu_);
  std::map<std::string, std::shared_ptr<Sub>> next;
  for (Subscription& s : stored) {
    auto it = subs_.find(s.id);
    std::shared_ptr<Sub> sub;
    if (it == subs_.end()) {
      sub = std::make_shared<Sub>();
      sub->s = std::move(s);
    } else {
      sub = it->second;
      const int64_t cursor =
          reload ? s.cursor : std::max(sub->s.cursor, s.cursor);  // forward only while running
      sub->s = std::move(s);
      sub->s.cursor = cursor;
      if (reload) {  // the delivery starts again from the recorded cursor
        sub->failures = 0;
        sub->pending_seq = 0;
        sub->pending_body.clear();
        sub->next_attempt = absl::InfinitePast();
      }
    }
    next.emplace(sub->s.id, std::move(sub));
  }
  for (auto& [id, sub] : subs_) {
    if (next.find(id) == next.end()) sub->deleted = true;  // deleted through another node
  }
  subs_ = std::move(next);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Dispatcher::LastSeq() {
  if (options_.ledger != nullptr) return options_.ledger->last_seq();
  return ledger_store_->LastSeq();
}

void Dispatcher::OnCommitted(const std::vector<ledger::Change>& changes) {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();  // all: a Stop may be waiting on cv_ too
}

void Dispatcher::Run() {
  absl::Time refreshed = absl::InfinitePast();
  for (;;) {
    bool active = false, reload = false;
    {
      std::unique_lock lock(mu_);
      if (shutdown_ || !active_) {
        if (busy_) {  // a Stop may be waiting for the delivery round to end
          busy_ = false;
          cv_.notify_all();
          if (depth_ != nullptr) depth_->Set(0);  // another node delivers now
        }
        if (shutdown_) return;
        const absl::Duration since = absl::Now() - refreshed;
        if (since < options_.poll) {
          cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.poll - since),
                       [this] { return shutdown_ || active_; });
          continue;
        }
      } else {
        busy_ = true;
        active = true;
        reload = reload_;
      }
    }
    if (!active) {  // standby: keep this node's view of the shared state fresh
      (void)Refresh(/*reload=*/false);
      refreshed = absl::Now();
      continue;
    }
    if (reload || absl::Now() - refreshed >= options_.poll) {
      absl::Status st = Refresh(reload);
      if (st.ok()) {
        refreshed = absl::Now();
        std::lock_guard lock(mu_);
        reload_ = false;
      } else if (reload) {  // no delivery before the recorded cursors are known
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, std::chrono::seconds(1), [this] { return shutdown_ || !active_; });
        continue;
      }
    }
    std::vector<std::string> ids;
    {
      std::lock_guard lock(mu_);
      for (const auto& [id, sub] : subs_) ids.push_back(id);
    }
    absl::Time next = absl::Now() + options_.poll;
    bool stopped = false;
    for (const std::string& id : ids) {
      next = std::min(next, Step(id));
      std::lock_guard lock(mu_);
      if (shutdown_ || !active_) {
        stopped = true;
        break;
      }
    }
    if (stopped) continue;
    if (depth_ != nullptr) {
      auto last = LastSeq();
      if (last.ok()) {
        double depth = 0;
        std::lock_guard lock(mu_);
        for (const auto& [id, sub] : subs_) {
          if (sub->s.enabled)
            depth += static_cast<double>(std::max<int64_t>(0, *last - sub->s.cursor));
        }
        depth_->Set(depth);
      }
    }
    std::unique_lock lock(mu_);
    const absl::Duration wait = next - absl::Now();
    if (wait > absl::ZeroDuration() && !wake_ && active_ && !shutdown_) {
      cv_.wait_for(lock, absl::ToChronoNanoseconds(wait),
                   [this] { return wake_ || !active_ || shutdown_; });
    }
    wake_ = false;
  }
}

namespace {
// The start of the last_error a cursor past the ledger's head sets (and clears).
constexpr std::string_view kCursorAhead = "the subscription's cursor ";
}  // namespace

absl::Time Dispatcher::Step(const std::string& id) {
  const absl::Time now = absl::Now();
  std::shared_ptr<Sub> sub;
  Subscription s;
  int64_t pending_seq = 0;
  std::string body;
  {
    std::lock_guard lock(mu_);
    auto it = subs_.find(id);
    if (it == subs_.end()) return absl::InfiniteFuture();
    sub = it->second;
    if (sub->deleted || !sub->s.enabled) return absl::InfiniteFuture();
    if (sub->next_attempt > now) return sub->next_attempt;
    s = sub->s;
    pending_seq = sub->pending_seq;
    body = sub->pending_body;
  }

  if (pending_seq == 0) {
    // Find the next matching change after the cursor.
    auto changes = options_.ledger != nullptr
                       ? ledger::ReadDurableChanges(*options_.ledger, s.cursor, options_.page)
                       : ledger_store_->ReadChanges(s.cursor, options_.page);
    if (!changes.ok()) {
      std::lock_guard lock(mu_);
      sub->last_error = std::string(SV(changes.status().message()));
      sub->next_attempt = now + absl::Seconds(1);
      return sub->next_attempt;
    }
    if (changes->empty()) {
      // A cursor past the ledger's head (the ledger restored from a backup older than
      // webhooks.db): the changes that reuse those seqs will never be sent. Said where an
      // operator looks (GET /v1/webhooks); docs/operations.md, "Backups".
      absl::StatusOr<int64_t> last = LastSeq();
      std::lock_guard lock(mu_);
      if (last.ok() && s.cursor > *last) {
        sub->last_error = absl::StrCat(
            AV(kCursorAhead), s.cursor, " is past the ledger's last change ", *last,
            " (restored from an older backup?): the changes that take seqs up to ", s.cursor,
            " are not delivered; re-create the subscription with from_seq ", *last);
      } else if (absl::StartsWith(sub->last_error, AV(kCursorAhead))) {
        sub->last_error.clear();
      }
      return absl::InfiniteFuture();  // the poll or a commit wakes us
    }
    int64_t skipped_to = s.cursor;
    for (const ledger::Change& c : *changes) {
      if (c.kind == ledger::ChangeKind::kMitigation) {
        auto m = core::MitigationFromJson(c.payload);
        if (m.ok() && Matches(s, *m)) {
          pending_seq = c.seq;
          body = DeliveryBody(c.seq, s.id, *m);
          break;
        }
      }
      skipped_to = c.seq;
    }
    if (pending_seq == 0) {
      // A whole page without a match: remember durably that it was handled.
      auto st = state_->AdvanceCursor(s.id, skipped_to);
      std::lock_guard lock(mu_);
      if (absl::IsNotFound(st)) {
        sub->deleted = true;
        return absl::InfiniteFuture();
      }
      if (!st.ok()) {
        sub->last_error = std::string(SV(st.message()));
        sub->next_attempt = now + absl::Seconds(1);
        return sub->next_attempt;
      }
      sub->s.cursor = std::max(sub->s.cursor, skipped_to);
      return static_cast<int>(changes->size()) == options_.page ? now : absl::InfiniteFuture();
    }
    std::lock_guard lock(mu_);
    sub->s.cursor = std::max(sub->s.cursor, skipped_to);  // skipped seqs: in memory only
    sub->pending_seq = pending_seq;
    sub->pending_body = body;
    // The attempts made before a restart (or by the node that delivered before this one)
    // go on counting: a receiver that fails every time still gets its dead letter.
    if (sub->failures == 0 && s.failed_seq == pending_seq && s.failures > 0) {
      sub->failures = s.failures;
      sub->last_error = s.last_error;
    }
  }

  // Deliver the pending change.
  absl::Status result;
  auto url = ParseHttpUrl(s.url);
  int attempt = 0;
  {
    std::lock_guard lock(mu_);
    attempt = sub->failures + 1;
  }
  if (!url.ok()) {
    result = url.status();
  } else {
    std::vector<std::pair<std::string, std::string>> headers = {
        {"Content-Type", "application/json"},
        {"X-Quell-Signature", SignatureHeader(s.secret, body)},
        {"X-Quell-Seq", std::to_string(pending_seq)},
        {"X-Quell-Subscription", s.id},
        {"X-Quell-Attempt", std::to_string(attempt)},
    };
    auto code = HttpPost(*url, headers, body, options_.timeout);
    if (!code.ok()) {
      result = code.status();
    } else if (*code < 200 || *code > 299) {
      result = absl::UnavailableError(absl::StrCat("HTTP ", *code));
    }
  }

  if (result.ok()) {
    return Settled(*sub, state_->AdvanceCursor(s.id, pending_seq), pending_seq, now,
                   /*dead_letter=*/false);
  }

  std::string error(SV(result.message()));
  int failures = 0;
  {
    std::lock_guard lock(mu_);
    failures = ++sub->failures;
    sub->last_error = error;
  }
  if (failures < options_.max_attempts) {
    // Recorded for a restart to go on counting from (if it cannot be, a restart counts
    // this change's attempts from 1 again: more retries, nothing lost).
    if (absl::IsNotFound(state_->RecordFailure(s.id, pending_seq, failures, error))) {
      std::lock_guard lock(mu_);
      sub->deleted = true;
      return absl::InfiniteFuture();
    }
    // One result per attempt: a failed one is retried; the last is counted dead_letter.
    if (failed_) failed_->Increment();
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const double jitter = std::uniform_real_distribution<double>(0, 1)(rng);
    std::lock_guard lock(mu_);
    sub->next_attempt = absl::Now() + BackoffDelay(failures, options_, jitter);
    return sub->next_attempt;
  }
  DeadLetter letter{s.id, pending_seq, failures, error, clock_->Now(), body};
  return Settled(*sub, state_->AddDeadLetter(letter), pending_seq, now, /*dead_letter=*/true);
}

absl::Time Dispatcher::Settled(Sub& sub, const absl::Status& recorded, int64_t pending_seq,
                               absl::Time now, bool dead_letter) {
  std::lock_guard lock(mu_);
  if (absl::IsNotFound(recorded)) {
    sub.deleted = true;
    return absl::InfiniteFuture();
  }
  if (!recorded.ok()) {  // not recorded: the change is sent again later (at least once)
    sub.last_error = std::string(SV(recorded.message()));
    sub.next_attempt = now + absl::Seconds(1);
    return sub.next_attempt;
  }
  if (dead_letter) {
    if (dead_) dead_->Increment();
    sub.dead_letters++;
  } else {
    if (delivered_) delivered_->Increment();
    sub.delivered++;
    sub.last_error.clear();  // delivering again: the failure it reported is over
  }
  sub.s.cursor = std::max(sub.s.cursor, pending_seq);
  sub.failures = 0;
  sub.pending_seq = 0;
  sub.pending_body.clear();
  sub.next_attempt = absl::InfinitePast();
  return absl::Now();
}

absl::StatusOr<Subscription> Dispatcher::Subscribe(const NewSubscription& request) {
  auto url = ParseHttpUrl(request.url);
  if (!url.ok()) return url.status();
  for (const auto* list : {&request.actions, &request.entity_types}) {
    for (const std::string& v : *list) {
      if (v.empty() || v.size() > 64 || v.find('\n') != std::string::npos)
        return absl::InvalidArgumentError("filters must be non-empty names of at most 64 bytes");
    }
  }
  Subscription s;
  s.created_at = clock_->Now();
  s.id = core::NewId("wh_", s.created_at);
  s.url = request.url;
  s.secret = "whsec_" + core::RandomHex(24);
  s.actions = request.actions;
  s.entity_types = request.entity_types;
  s.enabled = true;
  if (request.from_seq) {
    if (*request.from_seq < 0) return absl::InvalidArgumentError("from_seq must be >= 0");
    // Past the ledger's last change it is not from this ledger, and would skip every
    // change up to it once written (as /v1/changes and Watch refuse such a cursor).
    QUELL_ASSIGN_OR_RETURN(int64_t last, LastSeq());
    if (*request.from_seq > last) {
      return absl::OutOfRangeError(absl::StrCat("from_seq ", *request.from_seq,
                                                " is past the ledger's last change (", last,
                                                "): deliveries would skip every change up to it"));
    }
    s.cursor = *request.from_seq;
  } else {
    QUELL_ASSIGN_OR_RETURN(s.cursor, LastSeq());
  }
  std::lock_guard refresh(refresh_mu_);
  QUELL_RETURN_IF_ERROR(state_->CreateSubscription(s));
  {
    std::lock_guard lock(mu_);
    auto sub = std::make_shared<Sub>();
    sub->s = s;
    subs_[s.id] = std::move(sub);
    wake_ = true;
  }
  cv_.notify_all();  // all: a Stop may be waiting on cv_ too
  return s;
}

absl::Status Dispatcher::Unsubscribe(std::string_view id) {
  std::lock_guard refresh(refresh_mu_);
  QUELL_RETURN_IF_ERROR(state_->DeleteSubscription(id));
  std::lock_guard lock(mu_);
  auto it = subs_.find(std::string(id));
  if (it != subs_.end()) {
    it->second->deleted = true;
    subs_.erase(it);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SubscriptionStatus>> Dispatcher::ListCurrent() {
  QUELL_RETURN_IF_ERROR(Refresh(/*reload=*/false));
  return List();
}

std::vector<SubscriptionStatus> Dispatcher::List() const {
  std::lock_guard lock(mu_);
  std::vector<SubscriptionStatus> out;
  for (const auto& [id, sub] : subs_) {
    SubscriptionStatus st;
    st.subscription = sub->s;
    st.failures = sub->failures;
    st.pending_seq = sub->pending_seq;
    st.last_error = sub->last_error;
    st.delivered = sub->delivered;
    st.dead_letters = sub->dead_letters;
    out.push_back(std::move(st));
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.subscription.id < b.subscription.id; });
  return out;
}

absl::StatusOr<std::vector<DeadLetter>> Dispatcher::DeadLetters(std::string_view id, int64_t after,
                                                                int limit) {
  bool known = false;
  {
    std::lock_guard lock(mu_);
    known = subs_.find(std::string(id)) != subs_.end();
  }
  if (!known) {  // perhaps created through another node
    QUELL_RETURN_IF_ERROR(Refresh(/*reload=*/false));
    std::lock_guard lock(mu_);
    if (subs_.find(std::string(id)) == subs_.end())
      return absl::NotFoundError("no such webhook subscription");
  }
  return state_->DeadLetters(id, after, limit);
}

}  // namespace quell::webhooks
