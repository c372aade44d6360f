// GrpcServer against a real SQLite ledger and index, through a real gRPC channel.
#include "grpc/grpc_server.h"

#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/ids.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"
#include "quell/v1/detections.grpc.pb.h"
#include "quell/v1/enforcement.grpc.pb.h"

namespace quell::grpc_api {
namespace {

namespace v1 = ::quell::v1;

// The index as a view of the ledger (what api::IndexApplier does in the server).
class Applier final : public ledger::ChangeListener {
 public:
  explicit Applier(index::Index* index) : index_(index) {}
  void OnCommitted(const std::vector<ledger::Change>& changes) override {
    for (const ledger::Change& c : changes) {
      if (c.kind == ledger::ChangeKind::kMitigation) {
        auto m = core::MitigationFromJson(c.payload);
        ASSERT_TRUE(m.ok());
        ASSERT_TRUE(index_->Apply(*m).ok());
      }
      index_->set_seq(c.seq);
    }
  }

 private:
  index::Index* index_;
};

ledger::Mutation Create(std::string entity, std::string action, std::string* id_out = nullptr) {
  return [=](ledger::Txn& txn, absl::Time now) -> absl::Status {
    core::Mitigation m;
    m.id = core::NewId("m_", now);
    if (id_out != nullptr) *id_out = m.id;
    QUELL_ASSIGN_OR_RETURN(m.entity, core::Entity::Parse(entity));
    m.action = action;
    m.created_at = m.updated_at = m.starts_at = now;
    m.expires_at = now + absl::Hours(1);
    m.source = "manual";
    m.actor = "k_test";
    m.seq = txn.NextSeq();
    ledger::Change c;
    c.kind = ledger::ChangeKind::kMitigation;
    c.actor = "k_test";
    return txn.Append(std::move(c), &m).status();
  };
}

ledger::Mutation Revoke(std::string id) {
  return [=](ledger::Txn& txn, absl::Time now) -> absl::Status {
    QUELL_ASSIGN_OR_RETURN(auto m, txn.GetMitigation(id));
    if (!m.has_value()) return absl::NotFoundError(id);
    m->state = core::MitigationState::kRevoked;
    m->updated_at = now;
    m->seq = txn.NextSeq();
    ledger::Change c;
    c.kind = ledger::ChangeKind::kMitigation;
    c.actor = "k_test";
    return txn.Append(std::move(c), &*m).status();
  };
}

class GrpcServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("quell-grpc-test-" + core::RandomHex(8));
    auto store = ledger::OpenSqliteStore({.path = dir_.string(), .synchronous_full = false});
    ASSERT_TRUE(store.ok()) << store.status();
    auto ledger = ledger::Ledger::Open(*std::move(store), {}, &clock_);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = *std::move(ledger);
    applier_ = std::make_unique<Applier>(&index_);
    ledger_->AddListener(applier_.get());
    auto keys = auth::KeyRing::Create(&ledger_->store(), &clock_);
    ASSERT_TRUE(keys.ok());
    keys_ = *std::move(keys);
    enforcer_ = AddKey(auth::Role::kEnforcer, {});
    detector_ = AddKey(auth::Role::kDetector, {"d1"});

    GrpcDeps deps;
    deps.ledger = ledger_.get();
    deps.index = &index_;
    deps.keys = keys_.get();
    deps.clock = &clock_;
    deps.catalog = [] { return core::ActionCatalog::Default(); };
    GrpcOptions options;
    options.watch_page = 3;  // several pages on replay
    auto server = GrpcServer::Start(deps, options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = ::grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                         ::grpc::InsecureChannelCredentials());
    enforcement_ = v1::Enforcement::NewStub(channel);
    detections_ = v1::Detections::NewStub(channel);
  }

  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(1));
    server_.reset();
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string AddKey(auth::Role role, std::vector<std::string> sources) {
    auto key = auth::MakeKey(role, std::move(sources), "test", clock_.Now());
    EXPECT_TRUE(key.ok());
    EXPECT_TRUE(ledger_->store().CreateKey(key->record).ok());
    EXPECT_TRUE(keys_->Refresh().ok());
    return key->token;
  }

  void Auth(::grpc::ClientContext* ctx, const std::string& key) {
    ctx->AddMetadata("authorization", "Bearer " + key);
  }

  ::grpc::Status Check(std::vector<std::string> entities, std::string surface,
                       v1::CheckResponse* out, const std::string& key) {
    ::grpc::ClientContext ctx;
    if (!key.empty()) Auth(&ctx, key);
    v1::CheckRequest req;
    for (auto& e : entities) req.add_entities(e);
    req.set_surface(surface);
    return enforcement_->Check(&ctx, req, out);
  }

  std::filesystem::path dir_;
  core::FakeClock clock_{absl::FromUnixSeconds(1700000000)};
  std::unique_ptr<ledger::Ledger> ledger_;
  index::Index index_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<auth::KeyRing> keys_;
  std::string enforcer_, detector_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<v1::Enforcement::Stub> enforcement_;
  std::unique_ptr<v1::Detections::Stub> detections_;
};

TEST_F(GrpcServerTest, CheckNeedsAKeyThatMayCheck) {
  v1::CheckResponse resp;
  EXPECT_EQ(Check({"user:a"}, "", &resp, "").error_code(), ::grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Check({"user:a"}, "", &resp, "k_nope.secret").error_code(),
            ::grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Check({"user:a"}, "", &resp, detector_).error_code(),
            ::grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Check({"user:a"}, "", &resp, enforcer_).ok());
  EXPECT_EQ(resp.verdict(), v1::VERDICT_ALLOW);
}

TEST_F(GrpcServerTest, CheckRejectsBadEntitiesNamingTheField) {
  v1::CheckResponse resp;
  auto s = Check({"user:a", "no colon"}, "", &resp, enforcer_);
  EXPECT_EQ(s.error_code(), ::grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("entities[1]"), std::string::npos) << s.error_message();
  s = Check({}, "", &resp, enforcer_);
  EXPECT_EQ(s.error_code(), ::grpc::StatusCode::INVALID_ARGUMENT);
  std::vector<std::string> many(101, "user:a");
  EXPECT_EQ(Check(many, "", &resp, enforcer_).error_code(), ::grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcServerTest, CheckReportsVerdictMitigationsAndSurfaces) {
  std::string id;
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:u1", "challenge", &id)).ok());
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("cidr:10.1.0.0/16", "block")).ok());
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:u2", "exclude_royalties")).ok());

  v1::CheckResponse resp;
  ASSERT_TRUE(Check({"user:u1"}, "", &resp, enforcer_).ok());
  EXPECT_EQ(resp.verdict(), v1::VERDICT_CHALLENGE);
  ASSERT_EQ(resp.mitigations_size(), 1);
  EXPECT_EQ(resp.mitigations(0).id(), id);
  EXPECT_EQ(resp.mitigations(0).entity(), "user:u1");
  EXPECT_EQ(resp.mitigations(0).action(), "challenge");
  EXPECT_EQ(resp.mitigations(0).expires_at().seconds(), 1700000000 + 3600);
  EXPECT_EQ(resp.seq(), 3);

  resp.Clear();
  ASSERT_TRUE(Check({"user:u1", "ip:10.1.2.3"}, "", &resp, enforcer_).ok());
  EXPECT_EQ(resp.verdict(), v1::VERDICT_DENY);
  ASSERT_EQ(resp.mitigations_size(), 2);
  EXPECT_EQ(resp.mitigations(1).entity(), "cidr:10.1.0.0/16");
  EXPECT_EQ(resp.mitigations(1).verdict(), v1::VERDICT_DENY);

  // exclude_royalties applies to the payout surface only.
  resp.Clear();
  ASSERT_TRUE(Check({"user:u2"}, "login", &resp, enforcer_).ok());
  EXPECT_EQ(resp.mitigations_size(), 0);
  resp.Clear();
  ASSERT_TRUE(Check({"user:u2"}, "payout", &resp, enforcer_).ok());
  EXPECT_EQ(resp.mitigations_size(), 1);
}

TEST_F(GrpcServerTest, CheckStreamAnswersEachRequestInOrder) {
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:s1", "block")).ok());
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckRequest req;
  v1::CheckResponse resp;
  for (const char* e : {"user:s1", "bad", "user:s2"}) {
    req.Clear();
    req.add_entities(e);
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    if (std::string(e) == "user:s1") {
      EXPECT_EQ(resp.verdict(), v1::VERDICT_DENY);
      EXPECT_EQ(resp.mitigations_size(), 1);
    } else if (std::string(e) == "bad") {
      EXPECT_NE(resp.error().find("entities[0]"), std::string::npos) << resp.error();
      EXPECT_EQ(resp.verdict(), v1::VERDICT_UNSPECIFIED);
    } else {
      EXPECT_EQ(resp.verdict(), v1::VERDICT_ALLOW);
      EXPECT_TRUE(resp.error().empty());
    }
  }
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(GrpcServerTest, CheckStreamNeedsAKey) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, detector_);
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_EQ(stream->Finish().error_code(), ::grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(GrpcServerTest, WatchReplaysThenStreamsLiveChangesInOrder) {
  std::vector<std::string> ids(5);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(ledger_->SubmitAndWait(Create(absl::StrCat("user:w", i), "block", &ids[i])).ok());
  }
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchRequest req;
  req.set_after_seq(1);
  auto reader = enforcement_->Watch(&ctx, req);
  v1::Change c;
  for (int64_t seq = 2; seq <= 5; ++seq) {
    ASSERT_TRUE(reader->Read(&c));
    EXPECT_EQ(c.seq(), seq);
    EXPECT_EQ(c.op(), v1::Change::OP_UPSERT);
    EXPECT_EQ(c.mitigation().id(), ids[seq - 1]);
    EXPECT_EQ(c.mitigation().state(), "active");
  }
  // Live: a revoke committed after the replay.
  ASSERT_TRUE(ledger_->SubmitAndWait(Revoke(ids[2])).ok());
  ASSERT_TRUE(reader->Read(&c));
  EXPECT_EQ(c.seq(), 6);
  EXPECT_EQ(c.op(), v1::Change::OP_DELETE);
  EXPECT_EQ(c.mitigation().id(), ids[2]);
  EXPECT_EQ(c.mitigation().state(), "revoked");
  ctx.TryCancel();
  while (reader->Read(&c)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::CANCELLED);
}

TEST_F(GrpcServerTest, WatchEndsAtItsDeadline) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto reader = enforcement_->Watch(&ctx, v1::WatchRequest());
  v1::Change c;
  EXPECT_FALSE(reader->Read(&c));
  EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(GrpcServerTest, WatchNeedsAKey) {
  ::grpc::ClientContext ctx;
  auto reader = enforcement_->Watch(&ctx, v1::WatchRequest());
  v1::Change c;
  EXPECT_FALSE(reader->Read(&c));
  EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(GrpcServerTest, SubmitSaysUnimplemented) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, detector_);
  v1::SubmitResponse resp;
  auto writer = detections_->Submit(&ctx, &resp);
  writer->WritesDone();
  auto s = writer->Finish();
  EXPECT_EQ(s.error_code(), ::grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(GrpcServerTest, ShutdownEndsOpenWatches) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto reader = enforcement_->Watch(&ctx, v1::WatchRequest());
  // Let the call reach the server before shutting it down.
  v1::CheckResponse resp;
  ASSERT_TRUE(Check({"user:a"}, "", &resp, enforcer_).ok());
  server_->Shutdown(absl::Milliseconds(200));
  v1::Change c;
  EXPECT_FALSE(reader->Read(&c));
  EXPECT_FALSE(reader->Finish().ok());
}

}  // namespace
}  // namespace quell::grpc_api
