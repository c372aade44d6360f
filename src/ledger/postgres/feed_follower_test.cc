// Two ledgers ("nodes") on one PostgreSQL database, each with external delivery driven by
// its own feed: every node's listeners see every change of both nodes exactly once, in
// seq order, and a node's acknowledged write has already reached its own listeners.
#include "ledger/postgres/feed_follower.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/postgres/postgres_store.h"

namespace quell::ledger {
namespace {

using pg_internal::TestCluster;

std::string FreshDatabase() {
  auto cluster = TestCluster::Shared();
  EXPECT_TRUE(cluster.ok()) << cluster.status();  // PostgreSQL must be installed
  if (!cluster.ok()) return "";
  auto url = (*cluster)->NewDatabase();
  EXPECT_TRUE(url.ok()) << url.status();
  return url.ok() ? *url : "";
}

// Records the seqs it is told of, in order.
class Recorder final : public ChangeListener {
 public:
  void OnCommitted(const std::vector<Change>& changes) override {
    absl::MutexLock lock(&mu_);
    for (const Change& c : changes) {
      seqs_.push_back(c.seq);
      seen_.insert(c.seq);
    }
  }
  bool Saw(int64_t seq) {
    absl::MutexLock lock(&mu_);
    return seen_.count(seq) > 0;
  }
  std::vector<int64_t> Seqs() {
    absl::MutexLock lock(&mu_);
    return seqs_;
  }

 private:
  absl::Mutex mu_;
  std::vector<int64_t> seqs_ ABSL_GUARDED_BY(mu_);
  std::set<int64_t> seen_ ABSL_GUARDED_BY(mu_);
};

Mutation Note(std::string subject) {
  return [subject = std::move(subject)](Txn& txn, absl::Time) -> absl::Status {
    Change c;
    c.kind = ChangeKind::kReview;
    c.actor = "node";
    c.subject = subject;
    c.payload = R"({"note":"x"})";
    return txn.Append(std::move(c), nullptr).status();
  };
}

struct Node {
  std::unique_ptr<Ledger> ledger;
  Recorder recorder;
  std::unique_ptr<PostgresChangeFeed> feed;
};

void OpenNode(const std::string& url, Node* node) {
  auto store = OpenPostgresStore({.url = url});
  ASSERT_TRUE(store.ok()) << store.status();
  LedgerOptions o;
  o.external_delivery = true;
  o.delivery_wait = absl::Seconds(60);  // bounds a hang; the test counts timeouts
  auto ledger = Ledger::Open(*std::move(store), o, core::RealClock::Get());
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  node->ledger = *std::move(ledger);
  node->ledger->AddListener(&node->recorder);
  auto feed = FollowLedger(node->ledger.get(), {.url = url, .after = 0});
  ASSERT_TRUE(feed.ok()) << feed.status();
  node->feed = *std::move(feed);
}

TEST(FollowLedger, EveryNodesListenersSeeEveryChangeOnceAndOwnWritesBeforeTheAck) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  Node nodes[2];
  for (Node& n : nodes) ASSERT_NO_FATAL_FAILURE(OpenNode(url, &n));

  constexpr int kWritersPerNode = 4, kWritesPerWriter = 75;
  std::atomic<int> failures{0}, unseen_at_ack{0};
  std::vector<std::thread> writers;
  for (int n = 0; n < 2; ++n) {
    for (int w = 0; w < kWritersPerNode; ++w) {
      writers.emplace_back([&, n, w] {
        for (int i = 0; i < kWritesPerWriter; ++i) {
          auto changes = nodes[n].ledger->SubmitAndWait(Note(absl::StrCat(n, "/", w, "/", i)));
          if (!changes.ok() || changes->size() != 1) {
            ++failures;
            continue;
          }
          if (!nodes[n].recorder.Saw((*changes)[0].seq)) ++unseen_at_ack;
        }
      });
    }
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(unseen_at_ack.load(), 0);  // read-your-writes on the writing node

  constexpr int64_t kTotal = 2 * kWritersPerNode * kWritesPerWriter;
  std::vector<int64_t> expected;
  for (int64_t s = 1; s <= kTotal; ++s) expected.push_back(s);
  for (Node& n : nodes) {
    for (int i = 0; i < 600 && n.ledger->delivered_seq() < kTotal; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(n.recorder.Seqs(), expected);  // each change once, in order, both nodes' writes
    EXPECT_EQ(n.ledger->last_seq(), kTotal);
    EXPECT_EQ(n.ledger->stats().delivery_timeouts, 0);
    EXPECT_TRUE(n.feed->status().ok()) << n.feed->status();
  }
  for (Node& n : nodes) n.feed.reset();  // before the ledgers
}

TEST(FollowLedger, WithoutAFeedTheLedgerDoesNotTellListenersOfItsOwnCommits) {
  std::string url = FreshDatabase();
  ASSERT_FALSE(url.empty());
  auto store = OpenPostgresStore({.url = url});
  ASSERT_TRUE(store.ok()) << store.status();
  LedgerOptions o;
  o.external_delivery = true;
  o.delivery_wait = absl::Milliseconds(50);
  auto ledger = Ledger::Open(*std::move(store), o, core::RealClock::Get());
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  Recorder recorder;
  (*ledger)->AddListener(&recorder);
  auto changes = (*ledger)->SubmitAndWait(Note("alone"));
  ASSERT_TRUE(changes.ok()) << changes.status();  // durable all the same
  EXPECT_TRUE(recorder.Seqs().empty());
  EXPECT_EQ((*ledger)->stats().delivery_timeouts, 1);
  // Delivered later (by a feed that catches up), it is heard once; a repeat is ignored.
  (*ledger)->Deliver(*changes);
  (*ledger)->Deliver(*changes);
  EXPECT_EQ(recorder.Seqs(), std::vector<int64_t>{1});
  EXPECT_EQ((*ledger)->delivered_seq(), 1);
}

TEST(FollowLedger, RejectsANullLedger) {
  EXPECT_EQ(FollowLedger(nullptr, {.url = "x"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quell::ledger
