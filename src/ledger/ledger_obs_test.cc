// The ledger's observability: commit histograms and the commit-thread spans of traced
// submissions (issue 9).
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/ids.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "ledger/internal/test_backends.h"
#include "ledger/ledger.h"
#include "obs/metrics.h"
#include "obs/trace.h"

namespace quell::ledger {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

Mutation Create(std::string entity) {
  return [entity = std::move(entity)](Txn& txn, absl::Time now) -> absl::Status {
    core::Mitigation m;
    m.id = core::NewId("m_", now);
    QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(entity));
    m.action = "block";
    m.created_at = m.updated_at = m.starts_at = now;
    m.expires_at = now + absl::Hours(1);
    m.source = "manual";
    m.actor = "k_test";
    m.seq = txn.NextSeq();
    Change c;
    c.kind = ChangeKind::kMitigation;
    c.actor = "k_test";
    return txn.Append(std::move(c), &m).status();
  };
}

class Exporter final : public obs::SpanExporter {
 public:
  absl::Status Export(std::span<const obs::SpanData> spans) override {
    absl::MutexLock lock(&mu);
    for (const auto& s : spans) got.push_back(s);
    return absl::OkStatus();
  }
  absl::Mutex mu;
  std::vector<obs::SpanData> got;
};

// Waits for the completion of a Submit.
struct Done {
  absl::Mutex mu;
  bool done = false;
  absl::Status status;
  void Wait() {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&done));
  }
  Completion Fn() {
    return [this](absl::Status s, std::vector<Change>) {
      absl::MutexLock lock(&mu);
      status = std::move(s);
      done = true;
    };
  }
};

double Sample(const std::string& text, const std::string& name) {
  size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

TEST(LedgerObservabilityTest, HistogramsAndCommitThreadSpans) {
  testing::SqliteTestBackend backend;
  obs::Registry registry;
  auto e = std::make_unique<Exporter>();
  Exporter* exporter = e.get();
  obs::Tracer::Options to;
  to.flush_interval = absl::Milliseconds(5);
  auto tracer = obs::Tracer::Create(std::move(e), to, nullptr, nullptr);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  core::FakeClock clock(kT0);
  LedgerOptions options;
  options.metrics = &registry;
  options.tracer = tracer->get();
  auto store = backend.Open();
  ASSERT_TRUE(store.ok()) << store.status();
  auto ledger = Ledger::Open(*std::move(store), options, &clock);
  ASSERT_TRUE(ledger.ok()) << ledger.status();

  auto parent = obs::ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(parent.ok());
  obs::SpanContext unsampled = *parent;
  unsampled.flags = 0;
  {
    Done ok, failed, plain, not_sampled;
    (*ledger)->Submit(Create("user:traced"), ok.Fn(), *parent);
    ok.Wait();
    (*ledger)->Submit(
        [](Txn&, absl::Time) { return absl::InvalidArgumentError("refused by the mutation"); },
        failed.Fn(), *parent);
    failed.Wait();
    (*ledger)->Submit(Create("user:plain"), plain.Fn());
    plain.Wait();
    (*ledger)->Submit(Create("user:unsampled"), not_sampled.Fn(), unsampled);
    not_sampled.Wait();
    EXPECT_TRUE(ok.status.ok()) << ok.status;
    EXPECT_FALSE(failed.status.ok());
  }
  ASSERT_TRUE((*ledger)->SubmitAndWait(Create("user:waited")).ok());
  const Ledger::Stats stats = (*ledger)->stats();

  // One observation per group commit; the batch sizes add up to the mutations run.
  const std::string text = registry.Render();
  EXPECT_EQ(Sample(text, "quell_ledger_commit_duration_seconds_count"),
            static_cast<double>(stats.commits + stats.failed_commits));
  EXPECT_EQ(Sample(text, "quell_ledger_batch_size_count"),
            static_cast<double>(stats.commits + stats.failed_commits));
  EXPECT_EQ(Sample(text, "quell_ledger_batch_size_sum"), static_cast<double>(stats.mutations));
  EXPECT_EQ(stats.mutations, 5);

  (*tracer)->FlushForTest();
  absl::MutexLock lock(&exporter->mu);
  // Only the two sampled submissions left spans: commit + apply for the one that wrote,
  // commit (error) alone for the one that failed.
  ASSERT_EQ(exporter->got.size(), 3u);
  std::vector<const obs::SpanData*> commits, applies;
  for (const auto& s : exporter->got) {
    EXPECT_EQ(s.context.trace_id, parent->trace_id);
    (s.name == "ledger.commit" ? commits : applies).push_back(&s);
  }
  ASSERT_EQ(commits.size(), 2u);
  ASSERT_EQ(applies.size(), 1u);
  const obs::SpanData* good =
      commits[0]->status == obs::SpanStatus::kError ? commits[1] : commits[0];
  const obs::SpanData* bad = good == commits[0] ? commits[1] : commits[0];
  EXPECT_EQ(good->parent_span_id, parent->span_id);
  EXPECT_EQ(bad->parent_span_id, parent->span_id);
  EXPECT_EQ(good->status, obs::SpanStatus::kUnset);
  EXPECT_EQ(bad->status, obs::SpanStatus::kError);
  EXPECT_EQ(bad->status_message, "refused by the mutation");
  EXPECT_EQ(applies[0]->name, "index.apply");
  EXPECT_EQ(applies[0]->parent_span_id, good->context.span_id);
  EXPECT_LE(good->start_unix_nanos, good->end_unix_nanos);
  EXPECT_LE(good->end_unix_nanos, applies[0]->start_unix_nanos);
  EXPECT_LE(applies[0]->start_unix_nanos, applies[0]->end_unix_nanos);
  bool has_seq = false;
  for (const auto& a : good->attributes) has_seq |= a.key == "quell.ledger.seq";
  EXPECT_TRUE(has_seq);
}

}  // namespace
}  // namespace quell::ledger
