// GrpcServer against a real SQLite ledger and index, through a real gRPC channel.
#include "grpc/grpc_server.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "api/api.h"
#include "api/detection_intake.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/internal/convert.h"
#include "gtest/gtest.h"
#include "ledger/sqlite/sqlite_store.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/trace.h"
#include "quell/v1/detections.grpc.pb.h"
#include "quell/v1/enforcement.grpc.pb.h"
#include "rapidjson/document.h"
#include "workflow/mitigations.h"
#include "workflow/policies.h"

namespace quell::grpc_api {
namespace {

namespace v1 = ::quell::v1;

// One detection type, one policy: a score of at least 0.9 blocks the entity for an hour.
constexpr char kPolicies[] = R"(
detection_types: [artificial_streaming]
actions:
  - {name: block, verdict: deny, severity: high, ttl: 7d}
  - {name: challenge, verdict: challenge, severity: low, ttl: 1d}
  - {name: exclude_royalties, verdict: allow, severity: medium, ttl: 90d, surfaces: [payout]}
policies:
  - id: bots
    mode: enforce
    on: detection
    when: detection.score >= 0.9
    action: block
    ttl: 1h
)";

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
    return workflow::AppendMitigationChange(txn, *m, "k_test", now).status();
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

    // The HTTP API's decision path, as quell serve wires it (no HTTP server needed).
    api::ApiDeps api_deps;
    api_deps.ledger = ledger_.get();
    api_deps.index = &index_;
    api_deps.keys = keys_.get();
    api_deps.clock = &clock_;
    api_deps.catalog = core::ActionCatalog::Default();
    api_deps.metrics = &metrics_;
    auto api = api::Api::Create(api_deps, {});
    ASSERT_TRUE(api.ok()) << api.status();
    api_ = *std::move(api);
    auto published = ledger_->SubmitAndWait(
        workflow::PublishPolicySet(kPolicies, "test", std::make_shared<int64_t>(0)));
    ASSERT_TRUE(published.ok()) << published.status();
    base_seq_ = ledger_->last_seq();  // the policy set's change

    GrpcDeps deps;
    deps.ledger = ledger_.get();
    deps.index = &index_;
    deps.keys = keys_.get();
    deps.clock = &clock_;
    deps.catalog = [] { return core::ActionCatalog::Default(); };
    deps.submit_detections = [a = api_.get()](const auth::Principal& who,
                                              std::vector<absl::StatusOr<std::string>> items,
                                              GrpcDeps::SubmitDone done, const obs::SpanContext&) {
      a->detection_intake().SubmitJson(who, std::move(items), std::move(done));
    };
    deps_ = deps;              // without metrics: a test's second server counts apart
    deps.metrics = &metrics_;  // this server's calls, for Metric()
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
    api_.reset();
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

  static v1::Detection Det(std::string id, std::string entity, double score,
                           std::string source = "d1") {
    v1::Detection d;
    d.set_id(std::move(id));
    d.set_source(std::move(source));
    d.set_type("artificial_streaming");
    d.set_entity(std::move(entity));
    d.set_score(score);
    d.mutable_observed_at()->set_seconds(1700000000 - 60);
    return d;
  }

  ::grpc::Status Submit(const std::vector<v1::Detection>& items, v1::SubmitResponse* out,
                        const std::string& key) {
    ::grpc::ClientContext ctx;
    if (!key.empty()) Auth(&ctx, key);
    auto writer = detections_->Submit(&ctx, out);
    for (const v1::Detection& d : items) {
      if (!writer->Write(d)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  // The value of sample `series` (name and labels as rendered) in metrics_, 0 if absent.
  double Metric(std::string_view series) {
    const std::string text = metrics_.Render();
    const std::string needle = absl::StrCat("\n", AV(series), " ");
    const size_t at = text.find(needle);
    if (at == std::string::npos) return 0;
    return std::stod(text.substr(at + needle.size()));
  }
  // Waits (10 s at most) until `series` reaches `value`: the server counts a stream once
  // its call is done, which can be after the client has seen it end.
  double WaitForMetric(std::string_view series, double value) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    double now = Metric(series);
    while (now < value && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
      now = Metric(series);
    }
    return now;
  }

  obs::Registry metrics_;
  std::filesystem::path dir_;
  core::FakeClock clock_{absl::FromUnixSeconds(1700000000)};
  std::unique_ptr<ledger::Ledger> ledger_;
  index::Index index_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<auth::KeyRing> keys_;
  std::string enforcer_, detector_;
  int64_t base_seq_ = 0;  // the ledger's seq when a test starts
  std::unique_ptr<api::Api> api_;
  GrpcDeps deps_;  // server_'s (no tracer)
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
  // The key without its scheme, or under another one, is not a bearer credential.
  for (const std::string& value : {enforcer_, "Basic " + enforcer_}) {
    ::grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", value);
    v1::CheckRequest req;
    req.add_entities("user:a");
    EXPECT_EQ(enforcement_->Check(&ctx, req, &resp).error_code(),
              ::grpc::StatusCode::UNAUTHENTICATED)
        << value;
  }
  {  // Two credentials: which one counts would be a guess, so neither does.
    ::grpc::ClientContext twice;
    twice.AddMetadata("authorization", "Bearer " + detector_);
    twice.AddMetadata("authorization", "Bearer " + enforcer_);
    v1::CheckRequest req;
    req.add_entities("user:a");
    EXPECT_EQ(enforcement_->Check(&twice, req, &resp).error_code(),
              ::grpc::StatusCode::UNAUTHENTICATED);
  }
  ::grpc::ClientContext lower;  // the scheme's case does not matter (RFC 7235)
  lower.AddMetadata("authorization", "bearer " + enforcer_);
  v1::CheckRequest req;
  req.add_entities("user:a");
  EXPECT_TRUE(enforcement_->Check(&lower, req, &resp).ok());
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
  EXPECT_EQ(resp.seq(), base_seq_ + 3);

  resp.Clear();
  ASSERT_TRUE(Check({"user:u1", "ip:10.1.2.3"}, "", &resp, enforcer_).ok());
  EXPECT_EQ(resp.verdict(), v1::VERDICT_DENY);
  ASSERT_EQ(resp.mitigations_size(), 2);
  EXPECT_EQ(resp.mitigations(1).entity(), "cidr:10.1.0.0/16");
  EXPECT_EQ(resp.mitigations(1).verdict(), v1::VERDICT_DENY);
  // Two addresses the network covers: its mitigation once (it was listed twice).
  resp.Clear();
  ASSERT_TRUE(Check({"ip:10.1.2.3", "ip:10.1.9.9"}, "", &resp, enforcer_).ok());
  EXPECT_EQ(resp.mitigations_size(), 1);

  // exclude_royalties applies to the payout surface only.
  resp.Clear();
  ASSERT_TRUE(Check({"user:u2"}, "login", &resp, enforcer_).ok());
  EXPECT_EQ(resp.mitigations_size(), 0);
  resp.Clear();
  ASSERT_TRUE(Check({"user:u2"}, "payout", &resp, enforcer_).ok());
  EXPECT_EQ(resp.mitigations_size(), 1);
}

// One request on a CheckStream, for one entity, and its answer: false if the stream broke.
template <typename Stream>
bool Exchange(Stream& stream, std::string_view entity, v1::CheckResponse* resp) {
  v1::CheckRequest req;
  req.add_entities(std::string(entity));
  return stream.Write(req) && stream.Read(resp);
}

constexpr std::string_view kStreamOk =
    R"(quell_grpc_requests_total{method="quell.v1.Enforcement/CheckStream",code="OK"})";
constexpr std::string_view kStreamCancelled =
    R"(quell_grpc_requests_total{method="quell.v1.Enforcement/CheckStream",code="CANCELLED"})";

TEST_F(GrpcServerTest, CheckStreamAnswersEachRequestInOrder) {
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:s1", "block")).ok());
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckResponse resp;
  for (const char* e : {"user:s1", "bad", "user:s2"}) {
    ASSERT_TRUE(Exchange(*stream, e, &resp));
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
  EXPECT_EQ(WaitForMetric(kStreamOk, 1), 1);
  EXPECT_EQ(Metric(kStreamCancelled), 0);
}

// A bouncer that goes away mid-stream (its process killed, its connection cut) did not
// end the stream well: the stream counts as CANCELLED, not as OK.
TEST_F(GrpcServerTest, ACheckStreamTheClientBreaksCountsAsCancelled) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckResponse resp;
  ASSERT_TRUE(Exchange(*stream, "user:s1", &resp));
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), ::grpc::StatusCode::CANCELLED);
  EXPECT_EQ(WaitForMetric(kStreamCancelled, 1), 1);
  EXPECT_EQ(Metric(kStreamOk), 0);
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
  req.set_after_seq(base_seq_ + 1);
  auto reader = enforcement_->Watch(&ctx, req);
  v1::Change c;
  for (int64_t seq = base_seq_ + 2; seq <= base_seq_ + 5; ++seq) {
    ASSERT_TRUE(reader->Read(&c));
    EXPECT_EQ(c.seq(), seq);
    EXPECT_EQ(c.op(), v1::Change::OP_UPSERT);
    EXPECT_EQ(c.mitigation().id(), ids[seq - base_seq_ - 1]);
    EXPECT_EQ(c.mitigation().state(), "active");
  }
  // Live: a revoke committed after the replay.
  ASSERT_TRUE(ledger_->SubmitAndWait(Revoke(ids[2])).ok());
  ASSERT_TRUE(reader->Read(&c));
  EXPECT_EQ(c.seq(), base_seq_ + 6);
  EXPECT_EQ(c.op(), v1::Change::OP_DELETE);
  EXPECT_EQ(c.mitigation().id(), ids[2]);
  EXPECT_EQ(c.mitigation().state(), "revoked");
  ctx.TryCancel();
  while (reader->Read(&c)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::CANCELLED);
}

// The proto Mitigation carries every field of the HTTP object (docs/grpc.md): each key of
// core::MitigationToJson for a mitigation with every field set is a field of the message.
TEST(GrpcConvert, MitigationCarriesEveryFieldOfTheHttpObject) {
  core::Mitigation m;
  m.id = "m_1";
  m.entity = *core::Entity::Parse("user:a");
  m.action = "block";
  m.reason = m.source = m.policy = m.actor = m.batch = m.state_reason = "x";
  m.policy_version = 3;
  m.detections = {"d1", "d2"};
  m.detection_policies = {"p", "q"};
  m.approvals = {"k_1"};
  m.seq = 9;
  v1::Mitigation proto;
  internal::ToProto(m, &proto);
  std::string proto_json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(proto, &proto_json, options).ok());
  rapidjson::Document http, grpc;
  http.Parse(core::MitigationToJson(m).c_str());
  grpc.Parse(proto_json.c_str());
  ASSERT_TRUE(http.IsObject() && grpc.IsObject());
  for (auto it = http.MemberBegin(); it != http.MemberEnd(); ++it) {
    EXPECT_TRUE(grpc.HasMember(it->name)) << it->name.GetString() << " is not in the proto";
  }
  EXPECT_EQ(proto.approvals_size(), 1);
  EXPECT_EQ(proto.detection_policies(1), "q");
}

// A key revoked while its streams are open ends them, as it fails any new call: a Watch
// at its next wake-up, a CheckStream at its next request (keys are checked again at most
// once a second there).
TEST_F(GrpcServerTest, ARevokedKeyEndsItsOpenStreams) {
  const std::string key = AddKey(auth::Role::kEnforcer, {});
  ::grpc::ClientContext watch_ctx, stream_ctx;
  Auth(&watch_ctx, key);
  Auth(&stream_ctx, key);
  // Deadlines, so that a stream that does not end fails the test instead of hanging it.
  watch_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  stream_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WatchRequest req;
  req.set_after_seq(ledger_->last_seq());
  auto watch = enforcement_->Watch(&watch_ctx, req);
  auto stream = enforcement_->CheckStream(&stream_ctx);
  v1::CheckRequest check;
  check.add_entities("user:k1");
  v1::CheckResponse resp;
  ASSERT_TRUE(stream->Write(check));
  ASSERT_TRUE(stream->Read(&resp));  // the stream is open and answering
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:k1", "block")).ok());
  v1::Change c;
  ASSERT_TRUE(watch->Read(&c));  // and the watch delivering

  ASSERT_TRUE(ledger_->store().RevokeKey(key.substr(0, key.find('.')), clock_.Now(), false).ok());
  ASSERT_TRUE(keys_->Refresh().ok());
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:k2", "block")).ok());
  EXPECT_FALSE(watch->Read(&c)) << "delivered " << c.mitigation().entity() << " to a revoked key";
  EXPECT_EQ(watch->Finish().error_code(), ::grpc::StatusCode::UNAUTHENTICATED);

  clock_.Advance(absl::Seconds(2));  // past the stream's once-a-second check (its clock)
  stream->Write(check);
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_EQ(stream->Finish().error_code(), ::grpc::StatusCode::UNAUTHENTICATED);
}

// And is counted so: the wake-up at the deadline found the call cancelled (gRPC cancels it
// then) and about half such calls were counted and logged CANCELLED, a broken client.
TEST_F(GrpcServerTest, WatchEndsAtItsDeadline) {
  constexpr int kCalls = 6;
  for (int i = 0; i < kCalls; ++i) {
    ::grpc::ClientContext ctx;
    Auth(&ctx, enforcer_);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(150));
    auto reader = enforcement_->Watch(&ctx, v1::WatchRequest());
    v1::Change c;
    EXPECT_FALSE(reader->Read(&c));
    EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  constexpr std::string_view kDeadline =
      R"(quell_grpc_requests_total{method="quell.v1.Enforcement/Watch",code="DEADLINE_EXCEEDED"})";
  EXPECT_EQ(WaitForMetric(kDeadline, kCalls), kCalls);
  EXPECT_EQ(Metric(R"(quell_grpc_requests_total{method="quell.v1.Enforcement/Watch",)"
                   R"(code="CANCELLED"})"),
            0);
}

TEST_F(GrpcServerTest, ACheckStreamPastItsDeadlineCountsAsDeadlineExceeded) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckResponse resp;
  ASSERT_TRUE(Exchange(*stream, "user:s1", &resp));
  EXPECT_FALSE(stream->Read(&resp));  // nothing more asked: the deadline ends it
  EXPECT_EQ(stream->Finish().error_code(), ::grpc::StatusCode::DEADLINE_EXCEEDED);
  constexpr std::string_view kDeadline =
      R"(quell_grpc_requests_total{method="quell.v1.Enforcement/CheckStream",)"
      R"(code="DEADLINE_EXCEEDED"})";
  EXPECT_EQ(WaitForMetric(kDeadline, 1), 1);
  EXPECT_EQ(Metric(kStreamCancelled), 0);
}

TEST_F(GrpcServerTest, WatchNeedsAKey) {
  ::grpc::ClientContext ctx;
  auto reader = enforcement_->Watch(&ctx, v1::WatchRequest());
  v1::Change c;
  EXPECT_FALSE(reader->Read(&c));
  EXPECT_EQ(reader->Finish().error_code(), ::grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(GrpcServerTest, SubmitAppliesDetectionsThenCheckSeesThem) {
  v1::SubmitResponse resp;
  ASSERT_TRUE(
      Submit({Det("s-1", "user:bot1", 0.97), Det("s-2", "user:meh", 0.5)}, &resp, detector_).ok());
  ASSERT_EQ(resp.results_size(), 2);
  const v1::DetectionResult& r = resp.results(0);
  EXPECT_EQ(r.status(), v1::DetectionResult::STATUS_ACCEPTED);
  EXPECT_TRUE(r.error().empty());
  ASSERT_EQ(r.decisions_size(), 1);
  EXPECT_EQ(r.decisions(0).entity(), "user:bot1");
  EXPECT_EQ(r.decisions(0).action(), "block");
  EXPECT_EQ(r.decisions(0).state(), "active");
  EXPECT_EQ(r.decisions(0).policy(), "bots");
  EXPECT_FALSE(r.decisions(0).mitigation_id().empty());
  // Below the policy's threshold: accepted, no decision.
  EXPECT_EQ(resp.results(1).status(), v1::DetectionResult::STATUS_ACCEPTED);
  EXPECT_EQ(resp.results(1).decisions_size(), 0);

  // Durable when answered, and enforced: Check sees the mitigation.
  v1::CheckResponse check;
  ASSERT_TRUE(Check({"user:bot1"}, "", &check, enforcer_).ok());
  EXPECT_EQ(check.verdict(), v1::VERDICT_DENY);
  ASSERT_EQ(check.mitigations_size(), 1);
  EXPECT_EQ(check.mitigations(0).id(), r.decisions(0).mitigation_id());
}

TEST_F(GrpcServerTest, SubmitResendIsADuplicateWithTheOriginalDecisions) {
  v1::SubmitResponse first;
  ASSERT_TRUE(Submit({Det("dup-1", "user:dup", 0.95)}, &first, detector_).ok());
  ASSERT_EQ(first.results_size(), 1);
  ASSERT_EQ(first.results(0).status(), v1::DetectionResult::STATUS_ACCEPTED);
  const int64_t seq = ledger_->last_seq();
  v1::SubmitResponse again;
  ASSERT_TRUE(Submit({Det("dup-1", "user:dup", 0.95)}, &again, detector_).ok());
  ASSERT_EQ(again.results_size(), 1);
  EXPECT_EQ(again.results(0).status(), v1::DetectionResult::STATUS_DUPLICATE);
  ASSERT_EQ(again.results(0).decisions_size(), 1);
  EXPECT_EQ(again.results(0).decisions(0).mitigation_id(),
            first.results(0).decisions(0).mitigation_id());
  EXPECT_EQ(ledger_->last_seq(), seq);  // nothing changed
}

TEST_F(GrpcServerTest, SubmitRejectsBadItemsOnTheirOwnNamingTheField) {
  v1::Detection unknown_type = Det("r-3", "user:r3", 0.95);
  unknown_type.set_type("artifical_streaming");
  v1::Detection no_time = Det("r-4", "user:r4", 0.95);
  no_time.clear_observed_at();
  v1::SubmitResponse resp;
  ASSERT_TRUE(Submit({Det("r-1", "user:r1", 1.5), Det("r-2", "user:r2", 0.95), unknown_type,
                      no_time, Det("", "User:bad", 0.95)},
                     &resp, detector_)
                  .ok());
  ASSERT_EQ(resp.results_size(), 5);
  EXPECT_EQ(resp.results(0).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_EQ(resp.results(0).error(), "score: must be between 0 and 1");
  EXPECT_EQ(resp.results(0).decisions_size(), 0);
  EXPECT_EQ(resp.results(1).status(), v1::DetectionResult::STATUS_ACCEPTED);
  EXPECT_EQ(resp.results(2).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_NE(resp.results(2).error().find("type: unknown detection type"), std::string::npos)
      << resp.results(2).error();
  EXPECT_EQ(resp.results(3).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_NE(resp.results(3).error().find("observed_at"), std::string::npos)
      << resp.results(3).error();
  // Every field error of the item is named.
  EXPECT_NE(resp.results(4).error().find("id: "), std::string::npos) << resp.results(4).error();
  EXPECT_NE(resp.results(4).error().find("entity: "), std::string::npos) << resp.results(4).error();
  // Only the good one was applied.
  v1::CheckResponse check;
  ASSERT_TRUE(Check({"user:r1", "user:r2", "user:r3"}, "", &check, enforcer_).ok());
  ASSERT_EQ(check.mitigations_size(), 1);
  EXPECT_EQ(check.mitigations(0).entity(), "user:r2");
}

// Evidence nested as deep as POST /v1/detections takes it is taken here too: protobuf's
// recursion limit (100) counts three per JSON level of a Struct, and refused anything past
// 32 levels as an unreadable message. Past the API's own limit both refuse it.
TEST_F(GrpcServerTest, SubmitTakesEvidenceAsDeepAsTheHttpApi) {
  auto nested = [](int depth) {
    google::protobuf::Struct s;
    (*s.mutable_fields())["leaf"].set_number_value(1);
    for (int i = 1; i < depth; ++i) {
      google::protobuf::Struct outer;
      *(*outer.mutable_fields())["k"].mutable_struct_value() = std::move(s);
      s = std::move(outer);
    }
    return s;
  };
  // The detection object is the first JSON level: evidence 99 deep is 100 levels, the API's
  // limit; 100 deep is one too many, refused by the intake's own check (as HTTP words it),
  // not by the parser.
  v1::Detection deep = Det("deep-99", "user:deep99", 0.95);
  *deep.mutable_evidence() = nested(99);
  v1::Detection too_deep = Det("deep-100", "user:deep100", 0.95);
  *too_deep.mutable_evidence() = nested(100);
  v1::Detection unreadable = Det("deep-150", "user:deep150", 0.95);
  *unreadable.mutable_evidence() = nested(150);
  v1::SubmitResponse resp;
  ASSERT_TRUE(Submit({deep, too_deep, unreadable}, &resp, detector_).ok());
  ASSERT_EQ(resp.results_size(), 3);
  EXPECT_EQ(resp.results(0).status(), v1::DetectionResult::STATUS_ACCEPTED)
      << resp.results(0).error();
  EXPECT_EQ(resp.results(1).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_NE(resp.results(1).error().find("JSON nested deeper than 100 levels"), std::string::npos)
      << resp.results(1).error();
  // Past the parser's bound it is an unreadable message: an error all the same.
  EXPECT_EQ(resp.results(2).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_NE(resp.results(2).error().find("not a Detection message the server can read"),
            std::string::npos)
      << resp.results(2).error();
}

// A message the server cannot parse (here: a string field that is not UTF-8, which
// protobuf refuses to read) is that item's rejection: the items after it are applied and
// answered. gRPC's typed reader ended the stream there, answering OK for what came before.
TEST_F(GrpcServerTest, SubmitRejectsAnUnreadableMessageAndGoesOn) {
  v1::Detection bad = Det("u-2", "user:u2", 0.95);
  bad.set_entity("user:\xff\xfe");  // sent as is: the C++ client only logs it
  v1::SubmitResponse resp;
  ASSERT_TRUE(
      Submit({Det("u-1", "user:u1", 0.95), bad, Det("u-3", "user:u3", 0.95)}, &resp, detector_)
          .ok());
  ASSERT_EQ(resp.results_size(), 3);
  EXPECT_EQ(resp.results(0).status(), v1::DetectionResult::STATUS_ACCEPTED);
  EXPECT_EQ(resp.results(1).status(), v1::DetectionResult::STATUS_REJECTED);
  EXPECT_NE(resp.results(1).error().find("not a Detection message the server can read"),
            std::string::npos)
      << resp.results(1).error();
  EXPECT_EQ(resp.results(2).status(), v1::DetectionResult::STATUS_ACCEPTED);
  v1::CheckResponse check;
  ASSERT_TRUE(Check({"user:u1", "user:u3"}, "", &check, enforcer_).ok());
  EXPECT_EQ(check.mitigations_size(), 2);
  // Counted with the rest, as the HTTP API counts its rejected items.
  EXPECT_EQ(Metric(R"(quell_detections_total{origin="api",status="rejected"})"), 1);
  EXPECT_EQ(Metric(R"(quell_detections_total{origin="api",status="accepted"})"), 2);
}

// The same for Check: an unreadable request is INVALID_ARGUMENT (after the key, as any
// other bad request), and in a CheckStream that request's answer; the stream goes on.
TEST_F(GrpcServerTest, CheckAnswersAnUnreadableRequestAsInvalid) {
  v1::CheckRequest bad;
  bad.add_entities("user:\xff");
  {
    ::grpc::ClientContext ctx;
    Auth(&ctx, enforcer_);
    v1::CheckResponse resp;
    ::grpc::Status st = enforcement_->Check(&ctx, bad, &resp);
    EXPECT_EQ(st.error_code(), ::grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("not a CheckRequest message"), std::string::npos)
        << st.error_message();
  }
  {
    ::grpc::ClientContext ctx;  // no key: that comes first
    v1::CheckResponse resp;
    EXPECT_EQ(enforcement_->Check(&ctx, bad, &resp).error_code(),
              ::grpc::StatusCode::UNAUTHENTICATED);
  }
  ASSERT_TRUE(ledger_->SubmitAndWait(Create("user:s9", "block")).ok());
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto stream = enforcement_->CheckStream(&ctx);
  v1::CheckRequest good;
  good.add_entities("user:s9");
  v1::CheckResponse resp;
  ASSERT_TRUE(stream->Write(bad));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_NE(resp.error().find("not a CheckRequest message"), std::string::npos) << resp.error();
  ASSERT_TRUE(stream->Write(good));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.verdict(), v1::VERDICT_DENY);
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(GrpcServerTest, SubmitAsAForeignSourceIsRefusedWholeAndAppliesNothing) {
  const int64_t seq = ledger_->last_seq();
  v1::SubmitResponse resp;
  auto s = Submit({Det("f-1", "user:f1", 0.95), Det("f-2", "user:f2", 0.95, "other-model")}, &resp,
                  detector_);
  EXPECT_EQ(s.error_code(), ::grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("other-model"), std::string::npos) << s.error_message();
  EXPECT_EQ(ledger_->last_seq(), seq);
  // An admin key may submit as any source.
  std::string admin = AddKey(auth::Role::kAdmin, {});
  resp.Clear();
  ASSERT_TRUE(Submit({Det("f-2", "user:f2", 0.95, "other-model")}, &resp, admin).ok());
  EXPECT_EQ(resp.results(0).status(), v1::DetectionResult::STATUS_ACCEPTED);
}

TEST_F(GrpcServerTest, SubmitNeedsAKeyThatMaySubmit) {
  v1::SubmitResponse resp;
  EXPECT_EQ(Submit({Det("a-1", "user:a1", 0.95)}, &resp, "").error_code(),
            ::grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Submit({Det("a-1", "user:a1", 0.95)}, &resp, "k_nope.secret").error_code(),
            ::grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Submit({Det("a-1", "user:a1", 0.95)}, &resp, enforcer_).error_code(),
            ::grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Submit({}, &resp, detector_).error_code(), ::grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcServerTest, SubmitAppliesALongStreamInChunks) {
  // Past the chunk size (1000): several ledger steps, every result in order.
  std::vector<v1::Detection> items;
  for (int i = 0; i < 2500; ++i) {
    items.push_back(Det(absl::StrCat("long-", i), absl::StrCat("user:long", i), 0.95));
  }
  items[1700].set_score(-1);
  v1::SubmitResponse resp;
  ASSERT_TRUE(Submit(items, &resp, detector_).ok());
  ASSERT_EQ(resp.results_size(), 2500);
  for (int i = 0; i < 2500; ++i) {
    if (i == 1700) {
      EXPECT_EQ(resp.results(i).status(), v1::DetectionResult::STATUS_REJECTED);
      continue;
    }
    ASSERT_EQ(resp.results(i).status(), v1::DetectionResult::STATUS_ACCEPTED) << i;
    ASSERT_EQ(resp.results(i).decisions_size(), 1) << i;
    EXPECT_EQ(resp.results(i).decisions(0).entity(), absl::StrCat("user:long", i));
  }
}

TEST_F(GrpcServerTest, SubmitHonoursTheDeadline) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, detector_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  v1::SubmitResponse resp;
  auto writer = detections_->Submit(&ctx, &resp);
  ASSERT_TRUE(writer->Write(Det("dl-1", "user:dl", 0.95)));
  // The client never finishes writing: the call ends at its deadline.
  EXPECT_EQ(writer->Finish().error_code(), ::grpc::StatusCode::DEADLINE_EXCEEDED);
}

// check_threads 0 means one Check thread per core, not none (a Check would then wait for
// its deadline); a negative count is refused.
TEST_F(GrpcServerTest, ZeroCheckThreadsMeansOnePerCore) {
  GrpcOptions options;
  options.check_threads = -1;
  EXPECT_EQ(GrpcServer::Start(deps_, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.check_threads = 0;
  auto server = GrpcServer::Start(deps_, options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Enforcement::NewStub(::grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), ::grpc::InsecureChannelCredentials()));
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::CheckRequest req;
  req.add_entities("user:a");
  v1::CheckResponse resp;
  ::grpc::Status st = stub->Check(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.verdict(), v1::VERDICT_ALLOW);
  (*server)->Shutdown(absl::Seconds(1));
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

namespace quell::grpc_api {
namespace {

// Keeps every exported span. Thread-safe.
class RecordingExporter final : public obs::SpanExporter {
 public:
  absl::Status Export(std::span<const obs::SpanData> spans) override {
    absl::MutexLock lock(&mu_);
    for (const obs::SpanData& s : spans) spans_.push_back(s);
    return absl::OkStatus();
  }
  std::vector<obs::SpanData> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(spans_, {});
  }

 private:
  absl::Mutex mu_;
  std::vector<obs::SpanData> spans_;
};

bool HasAttribute(const obs::SpanData& span, std::string_view key, const obs::AttributeValue& v) {
  for (const obs::Attribute& a : span.attributes) {
    if (a.key == key) return a.value == v;
  }
  return false;
}

// Every call ends in one access-log line and one count, as an HTTP request does: gRPC
// traffic left no trace in the log or in /metrics (only quell_detections_total).
class CaptureSink final : public obs::LogSink {
 public:
  void Write(std::string_view line) override {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.emplace_back(line);
  }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// A stream still open when the server stops is cut, and counted once, after its call is
// done; no call object outlives the server. Counted CANCELLED (the server cancelled it),
// or UNAVAILABLE when its queue closed before the call could finish (StreamCheck::End):
// which one depends on thread timing (UNAVAILABLE under a loaded CI machine).
TEST_F(GrpcServerTest, AStreamOpenWhenTheServerStopsIsCountedOnce) {
  obs::Registry metrics;
  GrpcDeps deps = deps_;
  deps.metrics = &metrics;
  auto server = GrpcServer::Start(deps, {});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Enforcement::NewStub(::grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), ::grpc::InsecureChannelCredentials()));
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  auto stream = stub->CheckStream(&ctx);
  v1::CheckResponse resp;
  ASSERT_TRUE(Exchange(*stream, "user:s1", &resp));
  (*server)->Shutdown(absl::ZeroDuration());  // returns once every call is done
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_FALSE(stream->Finish().ok());
  const std::string text = metrics.Render();
  int counted = 0;
  for (size_t at =
           text.find("quell_grpc_requests_total{method=\"quell.v1.Enforcement/CheckStream\"");
       at != std::string::npos;
       at = text.find("quell_grpc_requests_total{method=\"quell.v1.Enforcement/CheckStream\"",
                      at + 1)) {
    const size_t space = text.find(' ', at);
    counted += std::stoi(text.substr(space + 1));
  }
  EXPECT_EQ(counted, 1) << text;
  auto counted_as = [&](std::string_view code) {
    return text.find(absl::StrCat(
               "quell_grpc_requests_total{method=\"quell.v1.Enforcement/CheckStream\",code=\"",
               AV(code), "\"} 1")) != std::string::npos;
  };
  EXPECT_TRUE(counted_as("CANCELLED") || counted_as("UNAVAILABLE")) << text;
}

TEST_F(GrpcServerTest, EveryCallIsLoggedAndCountedByMethodAndCode) {
  obs::Registry metrics;
  auto sink = std::make_unique<CaptureSink>();
  CaptureSink* lines = sink.get();
  obs::Logger log(std::move(sink), {});
  GrpcDeps deps = deps_;
  deps.metrics = &metrics;
  deps.access_log = &log;
  auto server = GrpcServer::Start(deps, {});
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = ::grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*server)->port()),
                                       ::grpc::InsecureChannelCredentials());
  auto stub = v1::Enforcement::NewStub(channel);
  for (const std::string& key : {enforcer_, std::string("k_nope.secret")}) {
    ::grpc::ClientContext ctx;
    Auth(&ctx, key);
    v1::CheckRequest req;
    req.add_entities("user:logged");
    v1::CheckResponse resp;
    (void)stub->Check(&ctx, req, &resp);
  }
  (*server)->Shutdown(absl::Seconds(1));
  const std::string text = metrics.Render();
  EXPECT_NE(text.find("quell_grpc_requests_total{method=\"quell.v1.Enforcement/Check\","
                      "code=\"OK\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("quell_grpc_requests_total{method=\"quell.v1.Enforcement/Check\","
                      "code=\"UNAUTHENTICATED\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("quell_grpc_request_duration_seconds_count{method=\"quell.v1.Enforcement/"
                      "Check\"} 2"),
            std::string::npos)
      << text;
  std::vector<std::string> rpc;
  for (const std::string& l : lines->lines()) {
    if (l.find("\"msg\":\"rpc\"") != std::string::npos) rpc.push_back(l);
  }
  ASSERT_EQ(rpc.size(), 2u);
  const std::string key_id = enforcer_.substr(0, enforcer_.find('.'));
  EXPECT_NE(rpc[0].find("\"code\":\"OK\""), std::string::npos) << rpc[0];
  EXPECT_NE(rpc[0].find(absl::StrCat("\"caller\":\"", key_id, "\"")), std::string::npos) << rpc[0];
  EXPECT_NE(rpc[1].find("\"code\":\"UNAUTHENTICATED\""), std::string::npos) << rpc[1];
  for (const std::string& l : rpc) {
    EXPECT_EQ(l.find(enforcer_.substr(enforcer_.find('.') + 1)), std::string::npos) << l;
    EXPECT_EQ(l.find("secret"), std::string::npos) << l;  // a key's secret is never logged
  }
}

// A second server on the fixture's ledger, with a tracer at sample ratio 0 (so only
// upstream-sampled calls are recorded).
class GrpcTraceTest : public GrpcServerTest {
 protected:
  void SetUp() override {
    GrpcServerTest::SetUp();
    auto exporter = std::make_unique<RecordingExporter>();
    exporter_ = exporter.get();
    auto tracer = obs::Tracer::Create(std::move(exporter), {.sample_ratio = 0}, nullptr, nullptr);
    ASSERT_TRUE(tracer.ok()) << tracer.status();
    tracer_ = *std::move(tracer);
    GrpcDeps deps = deps_;
    deps.tracer = tracer_.get();
    deps.submit_detections = [this, a = api_.get()](const auth::Principal& who,
                                                    std::vector<absl::StatusOr<std::string>> items,
                                                    GrpcDeps::SubmitDone done,
                                                    const obs::SpanContext& trace_parent) {
      submit_parents_.push_back(trace_parent);
      a->detection_intake().SubmitJson(who, std::move(items), std::move(done));
    };
    auto server = GrpcServer::Start(deps, {});
    ASSERT_TRUE(server.ok()) << server.status();
    traced_ = *std::move(server);
    auto channel = ::grpc::CreateChannel(absl::StrCat("127.0.0.1:", traced_->port()),
                                         ::grpc::InsecureChannelCredentials());
    traced_enforcement_ = v1::Enforcement::NewStub(channel);
    traced_detections_ = v1::Detections::NewStub(channel);
  }
  void TearDown() override {
    if (traced_) traced_->Shutdown(absl::Seconds(1));
    traced_.reset();
    tracer_.reset();
    GrpcServerTest::TearDown();
  }

  // The spans exported so far.
  std::vector<obs::SpanData> Spans() {
    tracer_->FlushForTest();
    return exporter_->Take();
  }
  // Spans() until it has `n` (10 s at most): a stream's span ends once its call is done,
  // which can be after the client has seen it end.
  std::vector<obs::SpanData> SpansAtLeast(size_t n) {
    std::vector<obs::SpanData> all = Spans();
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (all.size() < n && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
      for (obs::SpanData& d : Spans()) all.push_back(std::move(d));
    }
    return all;
  }

  static constexpr char kTraceId[] = "4bf92f3577b34da6a3ce929d0e0e4736";
  static constexpr char kParentId[] = "00f067aa0ba902b7";
  static std::string Traceparent(std::string_view flags) {
    return absl::StrCat("00-", kTraceId, "-", kParentId, "-", AV(flags));
  }

  RecordingExporter* exporter_ = nullptr;
  std::unique_ptr<obs::Tracer> tracer_;
  std::vector<obs::SpanContext> submit_parents_;  // one per chunk (sync thread, then read)
  std::unique_ptr<GrpcServer> traced_;
  std::unique_ptr<v1::Enforcement::Stub> traced_enforcement_;
  std::unique_ptr<v1::Detections::Stub> traced_detections_;
};

TEST_F(GrpcTraceTest, CheckWithASampledTraceparentRecordsAChildServerSpan) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.AddMetadata("traceparent", Traceparent("01"));
  ctx.AddMetadata("tracestate", "vendor=abc");
  v1::CheckRequest req;
  req.add_entities("user:a");
  v1::CheckResponse resp;
  ASSERT_TRUE(traced_enforcement_->Check(&ctx, req, &resp).ok());

  std::vector<obs::SpanData> spans = Spans();
  ASSERT_EQ(spans.size(), 1u);
  const obs::SpanData& s = spans[0];
  EXPECT_EQ(s.name, "quell.v1.Enforcement/Check");
  EXPECT_EQ(s.kind, obs::SpanKind::kServer);
  EXPECT_EQ(obs::HexId(s.context.trace_id), kTraceId);
  EXPECT_EQ(obs::HexId(s.parent_span_id), kParentId);
  EXPECT_NE(obs::HexId(s.context.span_id), kParentId);
  EXPECT_TRUE(s.context.sampled());
  EXPECT_EQ(s.context.trace_state, "vendor=abc");
  EXPECT_TRUE(HasAttribute(s, "rpc.system", std::string("grpc")));
  EXPECT_TRUE(HasAttribute(s, "rpc.method", std::string("Check")));
  EXPECT_TRUE(HasAttribute(s, "rpc.grpc.status_code", int64_t{0}));
  EXPECT_EQ(s.status, obs::SpanStatus::kUnset);
}

TEST_F(GrpcTraceTest, UnsampledOrMissingTraceparentAtRatioZeroRecordsNothing) {
  for (std::string flags : {"", "00"}) {
    ::grpc::ClientContext ctx;
    Auth(&ctx, enforcer_);
    if (!flags.empty()) ctx.AddMetadata("traceparent", Traceparent(flags));
    v1::CheckRequest req;
    req.add_entities("user:a");
    v1::CheckResponse resp;
    ASSERT_TRUE(traced_enforcement_->Check(&ctx, req, &resp).ok());
  }
  // And the untraced server records nothing either (it has no tracer).
  v1::CheckResponse resp;
  ASSERT_TRUE(Check({"user:a"}, "", &resp, enforcer_).ok());
  EXPECT_TRUE(Spans().empty());
}

TEST_F(GrpcTraceTest, CheckStreamRecordsOneSpanForTheWholeStream) {
  ::grpc::ClientContext ctx;
  Auth(&ctx, enforcer_);
  ctx.AddMetadata("traceparent", Traceparent("01"));
  auto stream = traced_enforcement_->CheckStream(&ctx);
  v1::CheckResponse resp;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Exchange(*stream, "user:a", &resp));
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());

  std::vector<obs::SpanData> spans = SpansAtLeast(1);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].name, "quell.v1.Enforcement/CheckStream");
  EXPECT_EQ(obs::HexId(spans[0].parent_span_id), kParentId);
  EXPECT_TRUE(HasAttribute(spans[0], "quell.check.requests", int64_t{3}));
}

TEST_F(GrpcTraceTest, SubmitPassesItsSpanToTheIntakeAndAuthFailuresAreNotErrors) {
  {
    ::grpc::ClientContext ctx;
    Auth(&ctx, detector_);
    ctx.AddMetadata("traceparent", Traceparent("01"));
    v1::SubmitResponse resp;
    auto writer = traced_detections_->Submit(&ctx, &resp);
    ASSERT_TRUE(writer->Write(Det("t1", "user:t1", 0.95)));
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  {
    ::grpc::ClientContext ctx;  // no key
    ctx.AddMetadata("traceparent", Traceparent("01"));
    v1::CheckRequest req;
    req.add_entities("user:a");
    v1::CheckResponse resp;
    EXPECT_EQ(traced_enforcement_->Check(&ctx, req, &resp).error_code(),
              ::grpc::StatusCode::UNAUTHENTICATED);
  }
  std::vector<obs::SpanData> spans = Spans();
  ASSERT_EQ(spans.size(), 2u);
  const obs::SpanData* submit = nullptr;
  const obs::SpanData* check = nullptr;
  for (const obs::SpanData& s : spans) {
    if (s.name == "quell.v1.Detections/Submit") submit = &s;
    if (s.name == "quell.v1.Enforcement/Check") check = &s;
  }
  ASSERT_NE(submit, nullptr);
  ASSERT_NE(check, nullptr);
  ASSERT_EQ(submit_parents_.size(), 1u);
  EXPECT_EQ(submit_parents_[0].span_id, submit->context.span_id);
  EXPECT_EQ(submit_parents_[0].trace_id, submit->context.trace_id);
  EXPECT_TRUE(HasAttribute(*submit, "quell.detections", int64_t{1}));
  EXPECT_TRUE(HasAttribute(*check, "rpc.grpc.status_code",
                           static_cast<int64_t>(::grpc::StatusCode::UNAUTHENTICATED)));
  EXPECT_EQ(check->status, obs::SpanStatus::kUnset);
}

}  // namespace
}  // namespace quell::grpc_api
