#include "ledger/ledger.h"

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/ids.h"
#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ledger/audit.h"
#include "ledger/internal/test_backends.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::ledger {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

// A mutation that creates one mitigation on `entity`: active for an hour, or scheduled to
// start in an hour, or pending approval.
Mutation CreateMitigation(std::string entity, std::string actor = "k_test",
                          core::MitigationState state = core::MitigationState::kActive) {
  return [entity = std::move(entity), actor = std::move(actor), state](
             Txn& txn, absl::Time now) -> absl::Status {
    core::Mitigation m;
    m.id = core::NewId("m_", now);
    QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(entity));
    m.action = "block";
    m.state = state;
    m.created_at = m.updated_at = m.starts_at = now;
    if (state == core::MitigationState::kScheduled) m.starts_at = now + absl::Hours(1);
    m.expires_at = m.starts_at + absl::Hours(1);
    m.source = "manual";
    m.actor = actor;
    m.seq = txn.NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = actor;
    QUELL_ASSIGN_OR_RETURN(Change done, txn.Append(std::move(c), &m));
    (void)done;
    return absl::OkStatus();
  };
}

// Records what it sees; checks it only ever sees increasing, gap-free seqs.
class RecordingListener final : public ChangeListener {
 public:
  void OnCommitted(const std::vector<Change>& changes) override {
    absl::MutexLock lock(&mu_);
    for (const Change& c : changes) {
      if (c.seq != last_ + 1) out_of_order_ = true;
      last_ = c.seq;
      seen_.push_back(c.seq);
    }
    last_seen_.store(last_);
  }
  int64_t last_seen() const { return last_seen_.load(); }
  std::vector<int64_t> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  bool out_of_order() {
    absl::MutexLock lock(&mu_);
    return out_of_order_;
  }

 private:
  absl::Mutex mu_;
  int64_t last_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int64_t> seen_ ABSL_GUARDED_BY(mu_);
  bool out_of_order_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> last_seen_{0};
};

// Wraps a Store; can make the next Commit fail, as a full disk would.
class FaultyStore final : public Store {
 public:
  explicit FaultyStore(std::unique_ptr<Store> inner) : inner_(std::move(inner)) {}
  std::atomic<bool> fail_next_commit{false};
  std::atomic<bool> fail_next_sync{false};
  // When set, the next SyncCommitted notifies sync_entered and waits for sync_release.
  std::atomic<bool> hold_sync{false};
  absl::Notification sync_entered, sync_release;

  // It can hold or fail a sync after a commit is visible.
  bool DefersSync() const override { return true; }
  absl::Status SyncCommitted() override {
    if (hold_sync.exchange(false)) {
      sync_entered.Notify();
      sync_release.WaitForNotification();
    }
    if (fail_next_sync.exchange(false)) return absl::DataLossError("fsync failed (injected)");
    return inner_->SyncCommitted();
  }

  absl::StatusOr<std::unique_ptr<Txn>> Begin(absl::Time now) override {
    QUELL_ASSIGN_OR_RETURN(std::unique_ptr<Txn> txn, inner_->Begin(now));
    return std::unique_ptr<Txn>(new FaultyTxn(std::move(txn), this));
  }
  absl::StatusOr<int64_t> LastSeq() override { return inner_->LastSeq(); }
  absl::StatusOr<std::vector<Change>> ReadChanges(int64_t after, int limit) override {
    return inner_->ReadChanges(after, limit);
  }
  absl::StatusOr<std::vector<Change>> ReadEntityChanges(const core::Entity& e, int limit,
                                                        int64_t after) override {
    return inner_->ReadEntityChanges(e, limit, after);
  }
  absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
    return inner_->GetMitigation(id);
  }
  absl::StatusOr<MitigationPage> ListMitigations(const MitigationQuery& q) override {
    return inner_->ListMitigations(q);
  }
  absl::StatusOr<int64_t> ScanLive(
      const std::function<absl::Status(const core::Mitigation&)>& fn) override {
    return inner_->ScanLive(fn);
  }
  absl::StatusOr<int64_t> ScanActiveJson(
      const std::function<void(int64_t)>& start,
      const std::function<absl::Status(std::string_view)>& fn) override {
    return inner_->ScanActiveJson(start, fn);
  }
  absl::StatusOr<int64_t> ScanMitigationRows(
      const std::function<void(int64_t)>& start,
      const std::function<absl::Status(const MitigationRow&)>& fn) override {
    return inner_->ScanMitigationRows(start, fn);
  }
  absl::StatusOr<int64_t> ScanDue(const std::function<void(int64_t)>& start,
                                  const std::function<absl::Status(const DueEntry&)>& fn) override {
    return inner_->ScanDue(start, fn);
  }
  absl::StatusOr<std::vector<core::Mitigation>> ListDue(absl::Time now, int limit) override {
    return inner_->ListDue(now, limit);
  }
  absl::StatusOr<std::optional<absl::Time>> NextDue() override { return inner_->NextDue(); }
  absl::StatusOr<int64_t> PurgeIdempotency(absl::Time before) override {
    return inner_->PurgeIdempotency(before);
  }
  absl::Status CreateKey(const ApiKey& key) override { return inner_->CreateKey(key); }
  absl::StatusOr<std::vector<ApiKey>> ListKeys() override { return inner_->ListKeys(); }
  absl::Status RevokeKey(std::string_view id, absl::Time at, bool keep_last_admin) override {
    return inner_->RevokeKey(id, at, keep_last_admin);
  }
  absl::StatusOr<int64_t> KeysVersion() override { return inner_->KeysVersion(); }
  absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view s,
                                                              std::string_view id) override {
    return inner_->GetDetection(s, id);
  }
  absl::Status ScanDetections(
      absl::Time from, absl::Time to,
      const std::function<absl::Status(const StoredDetection&)>& fn) override {
    return inner_->ScanDetections(from, to, fn);
  }
  absl::StatusOr<int64_t> PurgeDetections(absl::Time before) override {
    return inner_->PurgeDetections(before);
  }
  absl::StatusOr<int64_t> CountMitigations(const core::Entity& e, std::string_view p,
                                           std::string_view a, absl::Time since,
                                           bool no_shadow) override {
    return inner_->CountMitigations(e, p, a, since, no_shadow);
  }
  absl::StatusOr<std::optional<PolicySetVersion>> GetPolicySet(int64_t v) override {
    return inner_->GetPolicySet(v);
  }
  absl::StatusOr<std::optional<PolicySetVersion>> LatestPolicySet() override {
    return inner_->LatestPolicySet();
  }
  absl::StatusOr<std::vector<ListInfo>> Lists() override { return inner_->Lists(); }
  absl::StatusOr<std::vector<std::string>> ListEntries(std::string_view name) override {
    return inner_->ListEntries(name);
  }
  absl::StatusOr<int64_t> ScanListEntries(
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) override {
    return inner_->ScanListEntries(fn);
  }

 private:
  class FaultyTxn final : public Txn {
   public:
    FaultyTxn(std::unique_ptr<Txn> inner, FaultyStore* store)
        : inner_(std::move(inner)), store_(store) {}
    absl::StatusOr<std::optional<core::Mitigation>> GetMitigation(std::string_view id) override {
      return inner_->GetMitigation(id);
    }
    absl::StatusOr<std::vector<core::Mitigation>> FindLive(const core::Entity& e,
                                                           std::string_view a) override {
      return inner_->FindLive(e, a);
    }
    absl::StatusOr<std::vector<core::Mitigation>> EntityMitigations(const core::Entity& e,
                                                                    absl::Time since) override {
      return inner_->EntityMitigations(e, since);
    }
    absl::StatusOr<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view s,
                                                                    std::string_view k) override {
      return inner_->GetIdempotency(s, k);
    }
    absl::Status PutIdempotency(const IdempotencyRecord& r) override {
      return inner_->PutIdempotency(r);
    }
    absl::StatusOr<Change> Append(Change c, const core::Mitigation* m) override {
      return inner_->Append(std::move(c), m);
    }
    int64_t NextSeq() const override { return inner_->NextSeq(); }
    absl::StatusOr<std::optional<StoredDetection>> GetDetection(std::string_view s,
                                                                std::string_view id) override {
      return inner_->GetDetection(s, id);
    }
    absl::Status PutDetection(const StoredDetection& d) override { return inner_->PutDetection(d); }
    absl::StatusOr<std::vector<bool>> PutNewDetections(
        const std::vector<StoredDetection>& ds) override {
      return inner_->PutNewDetections(ds);
    }
    // The batched forms too, so a test through this store runs the backend's own.
    absl::StatusOr<std::vector<std::optional<std::string>>> GetDetectionReplies(
        const std::vector<DetectionKey>& keys) override {
      return inner_->GetDetectionReplies(keys);
    }
    absl::Status PutDetections(const std::vector<StoredDetection>& ds) override {
      return inner_->PutDetections(ds);
    }
    absl::StatusOr<std::optional<Change>> AppendMitigationIfAt(Change c, const core::Mitigation& m,
                                                               int64_t expected_seq) override {
      return inner_->AppendMitigationIfAt(std::move(c), m, expected_seq);
    }
    absl::StatusOr<int64_t> CountMitigations(const core::Entity& e, std::string_view p,
                                             std::string_view a, absl::Time since,
                                             bool no_shadow) override {
      return inner_->CountMitigations(e, p, a, since, no_shadow);
    }
    absl::StatusOr<int64_t> NextPolicyVersion() override { return inner_->NextPolicyVersion(); }
    absl::StatusOr<bool> ListHas(std::string_view n, const core::Entity& e) override {
      return inner_->ListHas(n, e);
    }
    absl::Status Savepoint() override { return inner_->Savepoint(); }
    absl::Status RollbackToSavepoint() override { return inner_->RollbackToSavepoint(); }
    absl::Status ReleaseSavepoint() override { return inner_->ReleaseSavepoint(); }
    absl::Status Commit() override {
      if (store_->fail_next_commit.exchange(false)) {
        inner_->Rollback();
        return absl::ResourceExhaustedError("disk full (injected)");
      }
      return inner_->Commit();
    }
    absl::Status CommitVisible() override {
      if (store_->fail_next_commit.exchange(false)) {
        inner_->Rollback();
        return absl::ResourceExhaustedError("disk full (injected)");
      }
      return inner_->CommitVisible();
    }
    void Rollback() override { inner_->Rollback(); }

   private:
    std::unique_ptr<Txn> inner_;
    FaultyStore* store_;
  };

  std::unique_ptr<Store> inner_;
};

class LedgerTest : public ::testing::TestWithParam<testing::BackendFactory> {
 protected:
  void SetUp() override { backend_ = GetParam().make(); }

  std::unique_ptr<Ledger> OpenLedger(LedgerOptions options = {}, FaultyStore** faulty = nullptr) {
    auto store = backend_->Open();
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    std::unique_ptr<Store> s = *std::move(store);
    if (faulty != nullptr) {
      auto f = std::make_unique<FaultyStore>(std::move(s));
      *faulty = f.get();
      s = std::move(f);
    }
    auto ledger = Ledger::Open(std::move(s), options, &clock_);
    EXPECT_TRUE(ledger.ok()) << ledger.status();
    return ledger.ok() ? *std::move(ledger) : nullptr;
  }

  core::FakeClock clock_{kT0};
  std::unique_ptr<testing::TestBackend> backend_;
};

TEST_P(LedgerTest, ConcurrentSubmittersGetUniqueGapFreeSeqsListenersFirst) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  RecordingListener listener;
  ledger->AddListener(&listener);

  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  absl::Mutex mu;
  std::vector<int64_t> acked;
  std::atomic<int> listener_late{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::Notification done;
        ledger->Submit(CreateMitigation(absl::StrCat("user:t", t, "-", i)),
                       [&](absl::Status st, std::vector<Change> changes) {
                         if (!st.ok() || changes.size() != 1) {
                           failures.fetch_add(1);
                         } else {
                           // The listener has already seen this change.
                           if (listener.last_seen() < changes[0].seq) listener_late.fetch_add(1);
                           absl::MutexLock lock(&mu);
                           acked.push_back(changes[0].seq);
                         }
                         done.Notify();
                       });
        done.WaitForNotification();
      }
    });
  }
  for (auto& th : threads) th.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(listener_late.load(), 0);
  std::sort(acked.begin(), acked.end());
  ASSERT_THAT(acked, SizeIs(kThreads * kPerThread));
  for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ(acked[i], static_cast<int64_t>(i + 1));
  EXPECT_FALSE(listener.out_of_order());
  EXPECT_EQ(listener.seen().size(), acked.size());
  EXPECT_EQ(ledger->last_seq(), kThreads * kPerThread);

  Ledger::Stats stats = ledger->stats();
  EXPECT_EQ(stats.mutations, kThreads * kPerThread);
  EXPECT_EQ(stats.changes, kThreads * kPerThread);
  EXPECT_EQ(stats.failed_mutations, 0);
  EXPECT_EQ(stats.failed_commits, 0);
  EXPECT_GE(stats.commits, 1);
  EXPECT_LE(stats.commits, kThreads * kPerThread);

  auto report = VerifyChain(ledger->store(), {.page_size = 100});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok()) << report->reason;
  EXPECT_EQ(report->checked, kThreads * kPerThread);
  EXPECT_EQ(report->last_seq, kThreads * kPerThread);
}

TEST_P(LedgerTest, CommittedMitigationChangesCarryTheRecordTheirPayloadEncodes) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  absl::Notification done;
  std::vector<Change> committed;
  ledger->Submit(CreateMitigation("user:carried"), [&](absl::Status st, std::vector<Change> cs) {
    EXPECT_TRUE(st.ok()) << st;
    committed = std::move(cs);
    done.Notify();
  });
  done.WaitForNotification();
  ASSERT_EQ(committed.size(), 1u);
  const Change& c = committed[0];
  ASSERT_NE(c.mitigation, nullptr);
  absl::StatusOr<core::Mitigation> parsed = core::MitigationFromJson(c.payload);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*c.mitigation, *parsed);
  EXPECT_EQ(c.mitigation->seq, c.seq);

  // Read back from the store: nothing attached, MitigationOf parses the payload.
  auto stored = ledger->store().ReadChanges(0, 10);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), 1u);
  EXPECT_EQ((*stored)[0].mitigation, nullptr);
  core::Mitigation scratch;
  absl::StatusOr<const core::Mitigation*> read = MitigationOf((*stored)[0], &scratch);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(**read, *parsed);

  Change broken = (*stored)[0];
  broken.payload = "{\"id\":";
  EXPECT_EQ(MitigationOf(broken, &scratch).status().code(), absl::StatusCode::kDataLoss);
}

TEST_P(LedgerTest, FailingMutationDoesNotSinkItsBatch) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  RecordingListener listener;
  ledger->AddListener(&listener);

  // Hold the commit thread inside a first batch so that the next three queue up together.
  absl::Notification entered, release;
  ledger->Submit(
      [&](Txn& txn, absl::Time now) {
        entered.Notify();
        release.WaitForNotification();
        return CreateMitigation("user:first")(txn, now);
      },
      [](absl::Status st, std::vector<Change>) { EXPECT_TRUE(st.ok()) << st; });
  entered.WaitForNotification();

  struct Result {
    absl::Notification done;
    absl::Status status;
    std::vector<Change> changes;
  };
  Result a, b, c;
  auto record = [](Result* r) {
    return [r](absl::Status st, std::vector<Change> changes) {
      r->status = std::move(st);
      r->changes = std::move(changes);
      r->done.Notify();
    };
  };
  ledger->Submit(CreateMitigation("user:a"), record(&a));
  ledger->Submit(
      [](Txn& txn, absl::Time now) -> absl::Status {
        QUELL_RETURN_IF_ERROR(CreateMitigation("user:b")(txn, now));  // written, then undone
        return absl::InvalidArgumentError("policy says no");
      },
      record(&b));
  ledger->Submit(CreateMitigation("user:c"), record(&c));
  release.Notify();
  a.done.WaitForNotification();
  b.done.WaitForNotification();
  c.done.WaitForNotification();

  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(b.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(b.status.message()), HasSubstr("policy says no"));
  EXPECT_TRUE(b.changes.empty());
  ASSERT_THAT(a.changes, SizeIs(1));
  ASSERT_THAT(c.changes, SizeIs(1));
  EXPECT_EQ(a.changes[0].seq, 2);
  EXPECT_EQ(c.changes[0].seq, 3);  // b's seq was rewound
  EXPECT_EQ(c.changes[0].prev_hash, a.changes[0].hash);
  EXPECT_EQ(ledger->stats().last_batch_size, 3);
  EXPECT_EQ(ledger->stats().failed_mutations, 1);

  auto timeline = ledger->store().ReadEntityChanges(*core::Entity::Parse("user:b"), 10);
  ASSERT_TRUE(timeline.ok());
  EXPECT_TRUE(timeline->empty());
  EXPECT_EQ(listener.seen(), (std::vector<int64_t>{1, 2, 3}));
  auto report = VerifyChain(ledger->store());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->reason;
  EXPECT_EQ(report->checked, 3);
}

TEST_P(LedgerTest, CommitFailureFailsTheWholeBatchAndNotifiesNoListener) {
  FaultyStore* faulty = nullptr;
  auto ledger = OpenLedger({}, &faulty);
  ASSERT_NE(ledger, nullptr);
  RecordingListener listener;
  ledger->AddListener(&listener);
  ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation("user:ok")).ok());

  faulty->fail_next_commit = true;
  auto failed = ledger->SubmitAndWait(CreateMitigation("user:lost"));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ledger->last_seq(), 1);
  EXPECT_EQ(ledger->stats().failed_commits, 1);
  EXPECT_EQ(listener.seen(), (std::vector<int64_t>{1}));

  auto next = ledger->SubmitAndWait(CreateMitigation("user:after"));
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_THAT(*next, SizeIs(1));
  EXPECT_EQ((*next)[0].seq, 2);
  EXPECT_EQ(listener.seen(), (std::vector<int64_t>{1, 2}));
}

// A full disk (here: the database file at its page limit) fails the writes that do not
// fit as unavailable (the API's 503 + Retry-After, not a client's fault), keeps every
// acknowledged one, and writes again once there is room.
TEST_P(LedgerTest, AFullDiskIsUnavailableAndWritesResumeOnceThereIsRoom) {
  if (GetParam().name != std::string("sqlite")) GTEST_SKIP() << "the page limit is SQLite's";
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation("user:before")).ok());
  auto pages = SqlitePragmaForTest(ledger->store(), "page_count");
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_TRUE(SqlitePragmaForTest(ledger->store(), absl::StrCat("max_page_count=", *pages)).ok());
  absl::Status failed;
  int64_t acked = 1;
  for (int i = 0; i < 500 && failed.ok(); ++i) {
    auto r = ledger->SubmitAndWait(CreateMitigation(absl::StrCat("user:f", i)));
    if (r.ok()) {
      ++acked;
    } else {
      failed = r.status();
    }
  }
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_THAT(failed.message(), HasSubstr("full"));
  ASSERT_TRUE(SqlitePragmaForTest(ledger->store(), "max_page_count=1073741823").ok());
  ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation("user:after")).ok());
  auto report = VerifyChain(ledger->store());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->reason;
  EXPECT_EQ(report->checked, acked + 1);
}

TEST_P(LedgerTest, AcknowledgesABatchAfterItsSyncWhileTheNextOneRuns) {
  FaultyStore* faulty = nullptr;
  auto ledger = OpenLedger({}, &faulty);
  ASSERT_NE(ledger, nullptr);
  RecordingListener committed, durable;
  ledger->AddListener(&committed);  // kCommitted: before the next batch runs
  ledger->AddListener(&durable, ListenerTiming::kDurable);
  faulty->hold_sync = true;
  const absl::Duration kLong = absl::Seconds(30);  // a hang fails the test, not CI
  absl::Notification a_done, b_ran, b_done;
  ledger->Submit(CreateMitigation("user:a"), [&](absl::Status st, std::vector<Change> changes) {
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_THAT(changes, SizeIs(1));
    a_done.Notify();
  });
  // a committed; its fsync is in flight.
  ASSERT_TRUE(faulty->sync_entered.WaitForNotificationWithTimeout(kLong));
  std::vector<int64_t> committed_seen_by_b;
  ledger->Submit(
      [&](Txn& txn, absl::Time now) -> absl::Status {
        committed_seen_by_b = committed.seen();
        b_ran.Notify();
        return CreateMitigation("user:b")(txn, now);
      },
      [&](absl::Status st, std::vector<Change>) {
        EXPECT_TRUE(st.ok()) << st;
        b_done.Notify();
      });
  ASSERT_TRUE(b_ran.WaitForNotificationWithTimeout(kLong));   // the next batch runs meanwhile,
  EXPECT_EQ(committed_seen_by_b, (std::vector<int64_t>{1}));  // after the views heard of a,
  EXPECT_FALSE(a_done.HasBeenNotified());  // but a is not acknowledged before its sync,
  EXPECT_TRUE(durable.seen().empty());     // nor passed on
  faulty->sync_release.Notify();
  ASSERT_TRUE(a_done.WaitForNotificationWithTimeout(kLong));
  ASSERT_TRUE(b_done.WaitForNotificationWithTimeout(kLong));
  EXPECT_EQ(committed.seen(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(durable.seen(), (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(committed.out_of_order());
  EXPECT_FALSE(durable.out_of_order());
  EXPECT_EQ(ledger->last_seq(), 2);
}

// The durable watermark: a reader that passes changes on stops at last_seq().
TEST_P(LedgerTest, ReadDurableChangesStopsAtTheSyncedSeq) {
  FaultyStore* faulty = nullptr;
  auto ledger = OpenLedger({}, &faulty);
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation("user:a")).ok());
  faulty->hold_sync = true;
  absl::Notification done;
  ledger->Submit(CreateMitigation("user:b"),
                 [&](absl::Status, std::vector<Change>) { done.Notify(); });
  ASSERT_TRUE(faulty->sync_entered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  auto visible = ledger->store().ReadChanges(0, 10);
  ASSERT_TRUE(visible.ok()) << visible.status();
  EXPECT_THAT(*visible, SizeIs(2));  // the store shows b already
  auto durable = ReadDurableChanges(*ledger, 0, 10);
  ASSERT_TRUE(durable.ok()) << durable.status();
  ASSERT_THAT(*durable, SizeIs(1));
  EXPECT_EQ((*durable)[0].seq, 1);
  EXPECT_TRUE(WaitDurable(*ledger, 1, absl::Seconds(30)).ok());
  // Seq 2 is held: a short wait gives up, a long one returns once the sync is released.
  EXPECT_EQ(WaitDurable(*ledger, 2, absl::Milliseconds(20)).code(), absl::StatusCode::kUnavailable);
  absl::Status waited = absl::UnknownError("not run");
  std::thread waiter([&] { waited = WaitDurable(*ledger, 2, absl::Seconds(30)); });
  faulty->sync_release.Notify();
  waiter.join();
  EXPECT_TRUE(waited.ok()) << waited;
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  durable = ReadDurableChanges(*ledger, 0, 10);
  ASSERT_TRUE(durable.ok());
  EXPECT_THAT(*durable, SizeIs(2));
  durable = ReadDurableChanges(*ledger, 2, 10);
  ASSERT_TRUE(durable.ok());
  EXPECT_TRUE(durable->empty());
}

TEST_P(LedgerTest, SyncFailureFailsItsBatchButListenersFollowTheStore) {
  FaultyStore* faulty = nullptr;
  auto ledger = OpenLedger({}, &faulty);
  ASSERT_NE(ledger, nullptr);
  RecordingListener committed, durable;
  ledger->AddListener(&committed);
  ledger->AddListener(&durable, ListenerTiming::kDurable);
  faulty->fail_next_sync = true;
  auto r = ledger->SubmitAndWait(CreateMitigation("user:unsure"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  // Committed and visible all the same: the views (the index) follow the store...
  EXPECT_EQ(committed.seen(), (std::vector<int64_t>{1}));
  // ...but nothing is passed on, and the durable watermark stays.
  EXPECT_TRUE(durable.seen().empty());
  EXPECT_EQ(ledger->last_seq(), 0);
  auto none = ReadDurableChanges(*ledger, 0, 10);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST_P(LedgerTest, MutationMustNotFinishTheTransaction) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  auto r = ledger->SubmitAndWait([](Txn& txn, absl::Time now) -> absl::Status {
    QUELL_RETURN_IF_ERROR(CreateMitigation("user:x")(txn, now));
    return txn.Commit();
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  r = ledger->SubmitAndWait([](Txn& txn, absl::Time now) -> absl::Status {
    QUELL_RETURN_IF_ERROR(txn.Savepoint());
    return CreateMitigation("user:y")(txn, now);  // leaves its savepoint open
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  r = ledger->SubmitAndWait(CreateMitigation("user:z"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].seq, 1);
}

TEST_P(LedgerTest, FullQueueRejectsAtOnce) {
  auto ledger = OpenLedger({.max_batch = 1, .max_queue = 1});
  ASSERT_NE(ledger, nullptr);
  absl::Notification entered, release;
  ledger->Submit(
      [&](Txn&, absl::Time) {
        entered.Notify();
        release.WaitForNotification();
        return absl::OkStatus();
      },
      [](absl::Status, std::vector<Change>) {});
  entered.WaitForNotification();
  absl::Notification queued_done;
  ledger->Submit(CreateMitigation("user:q"), [&](absl::Status st, std::vector<Change>) {
    EXPECT_TRUE(st.ok()) << st;
    queued_done.Notify();
  });
  absl::Status rejected;
  bool ran = false;
  ledger->Submit(CreateMitigation("user:r"), [&](absl::Status st, std::vector<Change>) {
    rejected = st;
    ran = true;
  });
  EXPECT_TRUE(ran);  // synchronously, on this thread
  EXPECT_EQ(rejected.code(), absl::StatusCode::kUnavailable);
  release.Notify();
  queued_done.WaitForNotification();
}

TEST_P(LedgerTest, DestructorDrainsTheQueue) {
  std::atomic<int> ok{0};
  {
    auto ledger = OpenLedger();
    ASSERT_NE(ledger, nullptr);
    for (int i = 0; i < 50; ++i) {
      ledger->Submit(CreateMitigation(absl::StrCat("user:d", i)),
                     [&](absl::Status st, std::vector<Change>) {
                       if (st.ok()) ok.fetch_add(1);
                     });
    }
  }
  EXPECT_EQ(ok.load(), 50);
  auto ledger = OpenLedger();  // re-open: last_seq found at Open
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->last_seq(), 50);
}

TEST_P(LedgerTest, AuditNamesExactlyTheTamperedChange) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 30; ++i) {
    clock_.Advance(absl::Seconds(1));
    ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation(absl::StrCat("user:a", i))).ok());
  }
  int pages = 0;
  auto report = VerifyChain(ledger->store(), {.page_size = 7, .progress = [&](const AuditReport&) {
                                                ++pages;
                                                return true;
                                              }});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->checked, 30);
  EXPECT_EQ(pages, 5);

  ASSERT_TRUE(
      backend_->ExecRaw("UPDATE changes SET payload = '{\"tampered\":true}' WHERE seq = 17").ok());
  report = VerifyChain(ledger->store(), {.page_size = 7});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->ok());
  EXPECT_EQ(report->broken_seq, 17);
  EXPECT_EQ(report->checked, 16);
  EXPECT_EQ(report->last_seq, 16);
  EXPECT_THAT(report->reason, HasSubstr("hash"));
}

TEST_P(LedgerTest, AuditFindsRewrittenLinksAndGaps) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation(absl::StrCat("user:g", i))).ok());
  }
  // A forger who recomputes the hash of the row he edits still breaks the next link.
  auto read = ledger->store().ReadChanges(4, 1);
  ASSERT_TRUE(read.ok());
  Change forged = (*read)[0];
  forged.actor = "someone else";
  std::string hash = ChainHash(forged);
  ASSERT_TRUE(backend_
                  ->ExecRaw(absl::StrCat("UPDATE changes SET actor = 'someone else', hash = '",
                                         hash, "' WHERE seq = 5"))
                  .ok());
  auto report = VerifyChain(ledger->store());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->broken_seq, 6);
  EXPECT_THAT(report->reason, HasSubstr("prev_hash"));

  ASSERT_TRUE(backend_->ExecRaw("DELETE FROM changes WHERE seq = 3").ok());
  report = VerifyChain(ledger->store());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->broken_seq, 4);
  EXPECT_EQ(report->last_seq, 2);
  EXPECT_THAT(report->reason, HasSubstr("gap"));
}

// The chain can be intact while what the server loads is not: the mitigations table (the
// index is built from its live rows) and rows outside 1..N.
TEST_P(LedgerTest, AuditComparesTheMitigationsTableWithTheChain) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 6; ++i) {
    clock_.Advance(absl::Seconds(1));
    ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation(absl::StrCat("user:v", i))).ok());
  }
  // Seq 7 revokes the mitigation created at seq 5.
  auto created = ledger->store().ReadChanges(4, 1);
  ASSERT_TRUE(created.ok());
  const std::string revoked_id = (*created)[0].subject;
  ASSERT_TRUE(ledger
                  ->SubmitAndWait([&](Txn& txn, absl::Time now) -> absl::Status {
                    QUELL_ASSIGN_OR_RETURN(std::optional<core::Mitigation> m,
                                           txn.GetMitigation(revoked_id));
                    m->state = core::MitigationState::kRevoked;
                    m->seq = txn.NextSeq();
                    Change c;
                    c.kind = ChangeKind::kMitigation;
                    c.actor = "k_test";
                    c.subject = m->id;
                    c.entity = m->entity.str();
                    return txn.Append(std::move(c), &*m).status();
                  })
                  .ok());
  auto verify = [&]() {
    auto r = VerifyChain(ledger->store(), {.page_size = 3});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : AuditReport{};
  };
  AuditReport r = verify();
  ASSERT_TRUE(r.ok()) << r.reason;
  EXPECT_EQ(r.checked, 7);
  auto read3 = ledger->store().ReadChanges(2, 1);
  ASSERT_TRUE(read3.ok());
  const std::string id3 = (*read3)[0].subject;

  // A live row turned off in the table (the server would stop enforcing it).
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'revoked' WHERE seq = 3").ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, 3);
  EXPECT_THAT(r.reason, HasSubstr(absl::StrCat("change 3 leaves mitigation ", id3,
                                               " live, the table does not have it live")));
  EXPECT_EQ(r.checked, 7);  // the chain itself is whole
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'active' WHERE seq = 3").ok());
  ASSERT_TRUE(verify().ok());

  // A revoked one turned back on.
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'active' WHERE seq = 7").ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, 7);
  EXPECT_THAT(r.reason, HasSubstr(absl::StrCat("it has a live mitigation ", revoked_id,
                                               " as of seq 7, which the chain does not")));
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'revoked' WHERE seq = 7").ok());
  ASSERT_TRUE(verify().ok());
  // An ended one's state changed (GET /v1/mitigations?state=expired would list a revoked
  // one): not live either way, so only the row's check against its change sees it.
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'expired' WHERE seq = 7").ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, 7);
  EXPECT_THAT(r.reason, HasSubstr(absl::StrCat("the row of mitigation ", revoked_id,
                                               " has state \"expired\", its latest change (seq "
                                               "7) \"revoked\"")));
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET state = 'revoked' WHERE seq = 7").ok());
  ASSERT_TRUE(verify().ok());

  // A row below seq 1: shown in the entity's timeline, never walked from 1.
  ASSERT_TRUE(backend_
                  ->ExecRaw("INSERT INTO changes (seq, at, kind, actor, subject, entity, payload, "
                            "prev_hash, hash) VALUES (-1, 0, 1, 'mallory', 'm_x', 'user:v1', "
                            "'{}', '', '')")
                  .ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, -1);
  EXPECT_THAT(r.reason, HasSubstr("not a ledger position"));
  ASSERT_TRUE(backend_->ExecRaw("DELETE FROM changes WHERE seq = -1").ok());
  ASSERT_TRUE(verify().ok());

  // PostgreSQL: a change appended past the chain head, hashed into the chain (a note
  // nothing materialises): no commit wrote it, and every later write would collide with
  // it. The walk ended "intact up to seq 8" once the head came from chain_head.
  if (GetParam().name == std::string("postgres")) {
    auto last = ledger->store().ReadChanges(6, 1);
    ASSERT_TRUE(last.ok() && last->size() == 1);
    Change forged;
    forged.seq = 8;
    forged.at = (*last)[0].at;
    forged.kind = ChangeKind::kReview;
    forged.actor = "mallory";
    forged.subject = "r_x";
    forged.entity = "user:v1";
    forged.payload = "{}";
    forged.prev_hash = (*last)[0].hash;
    forged.hash = ChainHash(forged);
    ASSERT_TRUE(backend_
                    ->ExecRaw(absl::StrCat(
                        "INSERT INTO changes (seq, at, kind, actor, subject, entity, payload, "
                        "prev_hash, hash) VALUES (8, ",
                        absl::ToUnixMicros(forged.at), ", ", static_cast<int>(forged.kind),
                        ", 'mallory', 'r_x', 'user:v1', '{}', '", forged.prev_hash, "', '",
                        forged.hash, "')"))
                    .ok());
    r = verify();
    EXPECT_EQ(r.broken_seq, 8);
    EXPECT_THAT(r.reason, HasSubstr("past the ledger's head 7"));
    ASSERT_TRUE(backend_->ExecRaw("DELETE FROM changes WHERE seq = 8").ok());
    ASSERT_TRUE(verify().ok());

    // The tail cut: a change no table refers to (a review journal's) deleted. The walk
    // ended intact at 7; chain_head, which its commit wrote, still says 8.
    ASSERT_TRUE(ledger
                    ->SubmitAndWait([&](Txn& txn, absl::Time) -> absl::Status {
                      Change c;
                      c.kind = ChangeKind::kReview;
                      c.actor = "k_test";
                      c.subject = "rb_x";
                      c.entity = "quell:rollbacks";
                      c.payload = "{}";
                      return txn.Append(std::move(c), nullptr).status();
                    })
                    .ok());
    ASSERT_TRUE(verify().ok());
    ASSERT_TRUE(backend_->ExecRaw("DELETE FROM changes WHERE seq = 8").ok());
    r = verify();
    EXPECT_EQ(r.broken_seq, 8);
    EXPECT_THAT(r.reason, HasSubstr("the changes end at seq 7, the ledger's head was 8"));
    ASSERT_TRUE(backend_
                    ->ExecRaw("UPDATE chain_head SET seq = 7, hash = '" + (*last)[0].hash +
                              "' WHERE id = 1")
                    .ok());
    ASSERT_TRUE(verify().ok());
  }

  // An ended mitigation's row deleted (its record of a revocation erased): no live row
  // differs, and the rows left agree with their changes; the count does not.
  ASSERT_TRUE(backend_->ExecRaw("DELETE FROM mitigations WHERE seq = 7").ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, 7);
  EXPECT_THAT(r.reason, HasSubstr("the mitigations table has 5 rows for the 6 mitigations of "
                                  "the chain (a row is never deleted: 1 missing)"));

  // A row deleted from the table.
  ASSERT_TRUE(backend_->ExecRaw("DELETE FROM mitigations WHERE seq = 2").ok());
  r = verify();
  EXPECT_EQ(r.broken_seq, 2);
  EXPECT_THAT(r.reason, HasSubstr("the table does not have it live"));
}

// The scheduler starts and expires mitigations by the table's due_at: a scheduled
// mitigation's start moved later (or dropped) would never be enforced, a due_at given to a
// pending one would be acted on by no change. Each is found, on both backends.
TEST_P(LedgerTest, AuditComparesTheSchedulersTransitionTimes) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  using core::MitigationState;
  ASSERT_TRUE(
      ledger->SubmitAndWait(CreateMitigation("user:s1", "k_test", MitigationState::kScheduled))
          .ok());
  ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation("user:a2")).ok());
  ASSERT_TRUE(
      ledger
          ->SubmitAndWait(CreateMitigation("user:p3", "k_test", MitigationState::kPendingApproval))
          .ok());
  auto verify = [&]() {
    auto r = VerifyChain(ledger->store(), {.page_size = 2});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : AuditReport{};
  };
  ASSERT_TRUE(verify().ok()) << verify().reason;
  auto first = ledger->store().ReadChanges(0, 1);
  ASSERT_TRUE(first.ok());
  const std::string scheduled_id = (*first)[0].subject;

  // The scheduled one's start a day later.
  ASSERT_TRUE(
      backend_->ExecRaw("UPDATE mitigations SET due_at = due_at + 86400000000 WHERE seq = 1").ok());
  AuditReport r = verify();
  EXPECT_EQ(r.broken_seq, 1);
  EXPECT_THAT(r.reason,
              HasSubstr(absl::StrCat("change 1 makes mitigation ", scheduled_id, " due at ")));
  EXPECT_THAT(r.reason, HasSubstr("the table's due_at says"));
  EXPECT_EQ(r.checked, 3);  // the chain itself is whole
  ASSERT_TRUE(
      backend_->ExecRaw("UPDATE mitigations SET due_at = due_at - 86400000000 WHERE seq = 1").ok());
  ASSERT_TRUE(verify().ok()) << verify().reason;

  // A transition time given to the pending one.
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET due_at = 1 WHERE seq = 3").ok());
  r = verify();
  EXPECT_FALSE(r.ok());
  auto third = ledger->store().ReadChanges(2, 1);
  ASSERT_TRUE(third.ok() && third->size() == 1);
  EXPECT_THAT(r.reason, HasSubstr(absl::StrCat("gives a transition time (due_at) to mitigation ",
                                               (*third)[0].subject,
                                               " that no change leaves active or scheduled")));
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET due_at = NULL WHERE seq = 3").ok());
  ASSERT_TRUE(verify().ok()) << verify().reason;

  // No start at all: the scheduler would never start it.
  ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET due_at = NULL WHERE seq = 1").ok());
  r = verify();
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.reason, HasSubstr("has 1 rows with a transition time (due_at), the changes "
                                  "leave 2 mitigations active or scheduled"));
}

// What the server loads from outside the chain besides the live set: the active rows' own
// columns (the index and the enforcement snapshot read them), the policy sets and the
// lists. A row at seq 0 is no ledger position either.
TEST_P(LedgerTest, AuditComparesServedColumnsPolicySetsAndLists) {
  auto ledger = OpenLedger();
  ASSERT_NE(ledger, nullptr);
  auto append = [&](ChangeKind kind, std::string payload) {
    return ledger->SubmitAndWait([kind, payload](Txn& txn, absl::Time) -> absl::Status {
      Change c;
      c.kind = kind;
      c.actor = "k_test";
      c.payload = payload;
      return txn.Append(std::move(c), nullptr).status();
    });
  };
  ASSERT_TRUE(append(ChangeKind::kPolicySet, R"({"version":1,"yaml":"policies: []\n"})").ok());
  ASSERT_TRUE(
      append(ChangeKind::kList, R"({"list":"vip","add":["user:a","user:b"],"protected":true})")
          .ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(ledger->SubmitAndWait(CreateMitigation(absl::StrCat("user:c", i))).ok());
  }
  ASSERT_TRUE(append(ChangeKind::kList, R"({"list":"vip","remove":["user:b"]})").ok());
  auto verify = [&]() {
    auto r = VerifyChain(ledger->store(), {.page_size = 2});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : AuditReport{};
  };
  ASSERT_TRUE(verify().ok()) << verify().reason;
  // Each tampering is found, and undoing it verifies again.
  const std::vector<std::pair<std::string, std::string>> tamperings = {
      {"UPDATE mitigations SET entity = 'user:zz' WHERE seq = 4",
       "UPDATE mitigations SET entity = 'user:c1' WHERE seq = 4"},
      {"UPDATE mitigations SET action = 'allow' WHERE seq = 4",
       "UPDATE mitigations SET action = 'block' WHERE seq = 4"},
      {"UPDATE mitigations SET due_at = due_at + 86400000000 WHERE seq = 4",
       "UPDATE mitigations SET due_at = due_at - 86400000000 WHERE seq = 4"},
      // The columns the list filters and timelines read, live row or not.
      {"UPDATE mitigations SET source = 'zzz' WHERE seq = 4",
       "UPDATE mitigations SET source = 'manual' WHERE seq = 4"},
      {"UPDATE mitigations SET policy = 'p1' WHERE seq = 4",
       "UPDATE mitigations SET policy = '' WHERE seq = 4"},
      {"UPDATE mitigations SET created_at = created_at + 1 WHERE seq = 4",
       "UPDATE mitigations SET created_at = created_at - 1 WHERE seq = 4"},
      {"INSERT INTO mitigations (id, entity, action, state, created_at, due_at, source, policy, "
       "seq) VALUES ('m_forged', 'user:evil', 'block', 'active', 1, NULL, 'manual', '', 5)",
       "DELETE FROM mitigations WHERE id = 'm_forged'"},
      {"UPDATE policy_sets SET yaml = 'breakers: []' WHERE version = 1",
       "UPDATE policy_sets SET yaml = 'policies: []\n' WHERE version = 1"},
      {"UPDATE lists SET protected = false WHERE name = 'vip'",
       "UPDATE lists SET protected = true WHERE name = 'vip'"},
      {"DELETE FROM list_entries WHERE entity = 'user:a'",
       "INSERT INTO list_entries (list, entity) VALUES ('vip', 'user:a')"},
      {"INSERT INTO list_entries (list, entity) VALUES ('vip', 'user:b')",
       "DELETE FROM list_entries WHERE entity = 'user:b'"},
      {"INSERT INTO changes (seq, at, kind, actor, subject, entity, payload, prev_hash, hash) "
       "VALUES (0, 0, 1, 'mallory', 'm_x', 'user:v1', '{}', '', '')",
       "DELETE FROM changes WHERE seq = 0"},
  };
  // An active row's enforcement columns altered: the report names the mitigation and its
  // latest change, not only the snapshot's head.
  if (GetParam().name == std::string("sqlite")) {
    auto fourth = ledger->store().ReadChanges(3, 1);
    ASSERT_TRUE(fourth.ok() && fourth->size() == 1);
    ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET action = 'allow' WHERE seq = 4").ok());
    AuditReport r = verify();
    EXPECT_EQ(r.broken_seq, 4);
    EXPECT_THAT(r.reason, HasSubstr(absl::StrCat("serves mitigation ", (*fourth)[0].subject,
                                                 " with entity, action or expiry columns")));
    EXPECT_THAT(r.reason, HasSubstr("(seq 4)"));
    ASSERT_TRUE(backend_->ExecRaw("UPDATE mitigations SET action = 'block' WHERE seq = 4").ok());
  }
  for (const auto& [tamper, undo] : tamperings) {
    // PostgreSQL's trigger refuses a row changing entity; every other column is checked
    // on both backends (each row against its change).
    if (GetParam().name == std::string("postgres") &&
        tamper.rfind("UPDATE mitigations SET entity", 0) == 0) {
      continue;
    }
    absl::Status st = backend_->ExecRaw(tamper);
    ASSERT_TRUE(st.ok()) << tamper << ": " << st;
    AuditReport r = verify();
    EXPECT_FALSE(r.ok()) << tamper;
    ASSERT_TRUE(backend_->ExecRaw(undo).ok()) << undo;
    EXPECT_TRUE(verify().ok()) << undo << ": " << verify().reason;
  }
  // The newest policy set deleted: the server would serve an older one.
  ASSERT_TRUE(append(ChangeKind::kPolicySet, R"({"version":2,"yaml":"policies: []\n"})").ok());
  ASSERT_TRUE(verify().ok());
  ASSERT_TRUE(backend_->ExecRaw("DELETE FROM policy_sets WHERE version = 2").ok());
  AuditReport r = verify();
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.reason, HasSubstr("version 2"));
}

INSTANTIATE_TEST_SUITE_P(Backends, LedgerTest, ::testing::ValuesIn(testing::AllBackends()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace quell::ledger
