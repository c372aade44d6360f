#include "api/server_metrics.h"

#include <unistd.h>

#include <filesystem>

#include "core/ids.h"
#include "core/mitigation.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"

namespace quell::api {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

ledger::Change MitigationChange(const std::string& id, core::MitigationState state, absl::Time at,
                                const std::string& reason = "r") {
  core::Mitigation m;
  m.id = id;
  m.entity = *core::Entity::Parse("user:a");
  m.action = "block";
  m.state = state;
  m.reason = reason;
  m.created_at = m.updated_at = m.starts_at = at;
  m.expires_at = at + absl::Hours(1);
  ledger::Change c;
  c.kind = ledger::ChangeKind::kMitigation;
  c.subject = id;
  c.at = at;
  c.payload = core::MitigationToJson(m);
  return c;
}

TEST(ServerMetricsTest, PendingApprovalIsReadFromTheTopLevelStateOnly) {
  using core::MitigationState;
  EXPECT_TRUE(PayloadIsPendingApproval(
      MitigationChange("m_1", MitigationState::kPendingApproval, kT0).payload));
  EXPECT_FALSE(
      PayloadIsPendingApproval(MitigationChange("m_1", MitigationState::kActive, kT0).payload));
  // Text that looks like the field, inside a value, is escaped and does not count.
  EXPECT_FALSE(PayloadIsPendingApproval(
      MitigationChange("m_1", MitigationState::kActive, kT0, "\"state\":\"pending_approval\"")
          .payload));
  EXPECT_FALSE(PayloadIsPendingApproval("{}"));
}

TEST(ServerMetricsTest, ReviewQueueFollowsTheChangeStream) {
  using core::MitigationState;
  ReviewQueueTracker t;
  EXPECT_EQ(t.Depth(), 0);
  EXPECT_FALSE(t.OldestSince().has_value());
  t.OnCommitted(
      {MitigationChange("m_1", MitigationState::kPendingApproval, kT0),
       MitigationChange("m_2", MitigationState::kActive, kT0),
       MitigationChange("m_3", MitigationState::kPendingApproval, kT0 + absl::Minutes(5))});
  EXPECT_EQ(t.Depth(), 2);
  EXPECT_EQ(t.OldestSince(), kT0);
  // A first approval of two keeps it pending, and its age.
  t.OnCommitted(
      {MitigationChange("m_1", MitigationState::kPendingApproval, kT0 + absl::Minutes(9))});
  EXPECT_EQ(t.OldestSince(), kT0);
  // Approved (active), rejected or expired: out of the queue.
  t.OnCommitted({MitigationChange("m_1", MitigationState::kActive, kT0 + absl::Minutes(10))});
  EXPECT_EQ(t.Depth(), 1);
  EXPECT_EQ(t.OldestSince(), kT0 + absl::Minutes(5));
  ledger::Change other;
  other.kind = ledger::ChangeKind::kPolicySet;
  other.subject = "m_3";
  t.OnCommitted({other});  // not a mitigation change: ignored
  EXPECT_EQ(t.Depth(), 1);
  t.OnCommitted({MitigationChange("m_3", MitigationState::kExpired, kT0 + absl::Hours(2))});
  EXPECT_EQ(t.Depth(), 0);
  EXPECT_FALSE(t.OldestSince().has_value());
}

TEST(ServerMetricsTest, ReviewQueueLoadsEveryPendingMitigationPageByPage) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("quell-server-metrics-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  {
    auto store = ledger::OpenSqliteStore({.path = dir.string()});
    ASSERT_TRUE(store.ok()) << store.status();
    core::FakeClock clock(kT0);
    auto ledger = ledger::Ledger::Open(*std::move(store), {}, &clock);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    // 2,500 pending (more than two pages of 1,000) and 3 active, one transaction.
    auto added = (*ledger)->SubmitAndWait([](ledger::Txn& txn, absl::Time now) -> absl::Status {
      for (int i = 0; i < 2503; ++i) {
        core::Mitigation m;
        m.id = core::NewId("m_", now);
        QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse("user:p" + std::to_string(i)));
        m.action = "block";
        m.state =
            i < 2500 ? core::MitigationState::kPendingApproval : core::MitigationState::kActive;
        m.created_at = m.updated_at = m.starts_at = now - absl::Seconds(i);
        m.expires_at = now + absl::Hours(1);
        m.source = "manual";
        m.actor = "k_test";
        m.seq = txn.NextSeq();
        ledger::Change c;
        c.kind = ledger::ChangeKind::kMitigation;
        c.actor = "k_test";
        QUELL_RETURN_IF_ERROR(txn.Append(std::move(c), &m).status());
      }
      return absl::OkStatus();
    });
    ASSERT_TRUE(added.ok()) << added.status();
    ReviewQueueTracker t;
    ASSERT_TRUE(t.Load((*ledger)->store()).ok());
    EXPECT_EQ(t.Depth(), 2500);
    EXPECT_EQ(t.OldestSince(), kT0 - absl::Seconds(2499));
  }
  std::filesystem::remove_all(dir);
}

TEST(ServerMetricsTest, NodeName) {
  EXPECT_EQ(NodeName("quell-eu-1"), "quell-eu-1");
  EXPECT_FALSE(NodeName("").empty());
}

}  // namespace
}  // namespace quell::api
