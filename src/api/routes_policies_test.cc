// POST /v1/policies/test through the real Api and HTTP server, on a SQLite ledger and a
// fake clock: events are evaluated against the rules with the real counters read, as a
// submission would decide them, and nothing is written or counted.
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/api.h"
#include "api/http/http_server.h"
#include "api/index_applier.h"
#include "auth/keys.h"
#include "core/time.h"
#include "gtest/gtest.h"
#include "http_client/http_client.h"
#include "ledger/sqlite/sqlite_store.h"
#include "rapidjson/document.h"
#include "workflow/policies.h"

namespace quell::api {
namespace {

// Brute force: the 5th failed login of an account within 10 minutes throttles it.
// Stuffing: a 3rd distinct account logging in from one address flags the address.
constexpr char kPolicies[] = R"(
actions:
  - {name: throttle, verdict: throttle, severity: low, ttl: 1h}
  - {name: flag, verdict: allow, severity: low, ttl: 1d}
counters:
  - {name: failed_logins, on: login_failed, key: entity, windows: [10m]}
  - {name: accounts_per_ip, on: login, key: attrs.ip, distinct: entity, windows: [1h]}
policies:
  - id: brute-force
    mode: enforce
    on: login_failed
    when: count("failed_logins", entity, "10m") >= 5
    action: throttle
  - id: stuffing
    mode: enforce
    on: login
    when: distinct("accounts_per_ip", event.attrs.ip, "1h") >= 3
    action: flag
    target: attrs.ip
)";

struct Reply {
  int status = 0;
  std::string body;
  rapidjson::Document json;
};

class PoliciesTestRouteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("quell-policies-test-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    auto store = ledger::OpenSqliteStore({.path = dir_.string(), .synchronous_full = false});
    ASSERT_TRUE(store.ok()) << store.status();
    auto ledger = ledger::Ledger::Open(*std::move(store), {}, &clock_);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = *std::move(ledger);
    applier_ = std::make_unique<IndexApplier>(&index_);
    ASSERT_TRUE(applier_->Load(ledger_->store()).ok());
    ledger_->AddListener(applier_.get());
    auto keys = auth::KeyRing::Create(&ledger_->store(), &clock_);
    ASSERT_TRUE(keys.ok()) << keys.status();
    keys_ = *std::move(keys);
    auto key = auth::MakeKey(auth::Role::kAdmin, {}, "test", clock_.Now());
    ASSERT_TRUE(key.ok()) << key.status();
    ASSERT_TRUE(ledger_->store().CreateKey(key->record).ok());
    ASSERT_TRUE(keys_->Refresh().ok());
    key_ = key->token;

    ApiDeps deps;
    deps.ledger = ledger_.get();
    deps.index = &index_;
    deps.keys = keys_.get();
    deps.clock = &clock_;
    deps.catalog = core::ActionCatalog::Default();
    ApiOptions options;
    options.worker_threads = 1;
    options.max_events_batch = 20;
    options.access_log = false;
    options.start_background = false;
    auto api = Api::Create(deps, options);
    ASSERT_TRUE(api.ok()) << api.status();
    api_ = *std::move(api);
    auto published = ledger_->SubmitAndWait(
        workflow::PublishPolicySet(kPolicies, "test", std::make_shared<int64_t>(0)));
    ASSERT_TRUE(published.ok()) << published.status();

    http::ServerOptions server_options;
    server_options.port = 0;
    server_options.threads = 1;
    auto server = http::Server::Start(server_options, api_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    conn_ = std::make_unique<http_client::HttpConnection>(
        http_client::Url{"127.0.0.1", server_->port(), ""});
  }

  void TearDown() override {
    conn_.reset();
    if (server_) server_->Shutdown();
    server_.reset();
    api_.reset();
    ledger_.reset();
    std::filesystem::remove_all(dir_);
  }

  Reply Post(std::string_view path, std::string_view body) {
    Reply out;
    auto r = conn_->Request(
        "POST", path, {{"Authorization", "Bearer " + key_}, {"Content-Type", "application/json"}},
        body);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    out.status = r->status;
    out.body = r->body;
    out.json.Parse(out.body.c_str());
    EXPECT_FALSE(out.json.HasParseError()) << out.body;
    return out;
  }

  // A POST /v1/policies/test of `events` (a JSON array), and its `events` reply.
  Reply Test(const std::string& events) {
    return Post("/v1/policies/test", absl::StrCat("{\"events\": ", events, "}"));
  }

  // A real POST /v1/events of `events`; the number of rule detections it made.
  int Submit(const std::string& events) {
    Reply r = Post("/v1/events", absl::StrCat("{\"events\": ", events, "}"));
    EXPECT_EQ(r.status, 200) << r.body;
    int n = 0;
    if (r.status != 200) return -1;
    for (const auto& item : r.json["results"].GetArray()) {
      if (item.HasMember("detections")) n += static_cast<int>(item["detections"].Size());
    }
    return n;
  }

  // Per event of a test reply: "policy action state entity" of each decision.
  static std::vector<std::vector<std::string>> Decisions(const Reply& r) {
    std::vector<std::vector<std::string>> out;
    if (!r.json.IsObject() || !r.json.HasMember("events")) return out;
    for (const auto& e : r.json["events"].GetArray()) {
      std::vector<std::string> ds;
      for (const auto& d : e["decisions"].GetArray()) {
        ds.push_back(absl::StrCat(d["policy"].GetString(), " ", d["action"].GetString(), " ",
                                  d["state"].GetString(), " ", d["entity"].GetString()));
      }
      out.push_back(std::move(ds));
    }
    return out;
  }

  // The error details of a 400 reply, "field: message".
  static std::vector<std::string> Details(const Reply& r) {
    std::vector<std::string> out;
    if (!r.json.IsObject() || !r.json.HasMember("error")) return out;
    const auto& error = r.json["error"];
    if (!error.HasMember("details")) return out;
    for (const auto& d : error["details"].GetArray()) {
      out.push_back(absl::StrCat(d["field"].GetString(), ": ", d["message"].GetString()));
    }
    return out;
  }

  std::string At(absl::Duration ago = absl::ZeroDuration()) const {
    return core::FormatRfc3339(clock_.Now() - ago);
  }
  std::string FailedLogin(const std::string& user) const {
    return absl::StrCat(R"({"type": "login_failed", "entity": ")", user, R"(", "at": ")", At(),
                        R"("})");
  }
  std::string Login(const std::string& user, const std::string& ip) const {
    return absl::StrCat(R"({"type": "login", "entity": ")", user, R"(", "at": ")", At(),
                        R"(", "attrs": {"ip": ")", ip, R"("}})");
  }
  static std::string Array(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) absl::StrAppend(&out, i ? ", " : "", items[i]);
    return out + "]";
  }

  core::FakeClock clock_;
  std::filesystem::path dir_;
  std::unique_ptr<ledger::Ledger> ledger_;
  index::Index index_;
  std::unique_ptr<IndexApplier> applier_;
  std::unique_ptr<auth::KeyRing> keys_;
  std::string key_;
  std::unique_ptr<Api> api_;
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<http_client::HttpConnection> conn_;
};

TEST_F(PoliciesTestRouteTest, AnEventThatTripsARuleIsDecidedAndNothingIsWrittenOrCounted) {
  const std::string e = FailedLogin("user:a");
  ASSERT_EQ(Submit(Array({e, e, e})), 0);  // 3 failed logins: under the bar
  const int64_t seq = ledger_->last_seq();
  // A 4th, tested: the count it would read is 4 (its own increment applied, not stored).
  Reply r = Test(Array({e}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Decisions(r), (std::vector<std::vector<std::string>>{{}})) << r.body;
  EXPECT_EQ(r.json["results"].Size(), 0u) << r.body;  // the detections' reply, empty
  // Two more, tested in one request: a batch is counted whole before its rules run, so
  // both read 5, as POST /v1/events of the same body would.
  r = Test(Array({e, e}));
  ASSERT_EQ(r.status, 200) << r.body;
  const std::vector<std::string> fired = {"brute-force throttle active user:a"};
  EXPECT_EQ(Decisions(r), (std::vector<std::vector<std::string>>{fired, fired})) << r.body;
  const auto& d = r.json["events"][0]["decisions"][0];
  EXPECT_STREQ(d["ttl"].GetString(), "1h");
  EXPECT_TRUE(d.HasMember("reason")) << r.body;
  EXPECT_EQ(r.json["events"][0]["index"].GetInt(), 0);
  EXPECT_EQ(r.json["events"][1]["index"].GetInt(), 1);
  // Nothing was written: no ledger change, no mitigation, no counter incremented (the
  // tests would have made 6: a real 4th failed login would then fire).
  EXPECT_EQ(ledger_->last_seq(), seq);
  EXPECT_EQ(Submit(Array({e})), 0);  // the real 4th
  EXPECT_EQ(ledger_->last_seq(), seq);
  EXPECT_EQ(Submit(Array({e})), 1);  // the real 5th fires
  EXPECT_GT(ledger_->last_seq(), seq);
}

TEST_F(PoliciesTestRouteTest, ADistinctValueAlreadyCountedAddsNothing) {
  ASSERT_EQ(Submit(Array({Login("user:1", "ip:10.0.0.1"), Login("user:2", "ip:10.0.0.1")})), 0);
  // user:1 again: still 2 accounts. user:3: the 3rd, the address is flagged.
  Reply r = Test(Array({Login("user:1", "ip:10.0.0.1")}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Decisions(r), (std::vector<std::vector<std::string>>{{}})) << r.body;
  r = Test(Array({Login("user:3", "ip:10.0.0.1")}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Decisions(r),
            (std::vector<std::vector<std::string>>{{"stuffing flag active ip:10.0.0.1"}}))
      << r.body;
  // Still 2 for real: user:1 again changes nothing.
  EXPECT_EQ(Submit(Array({Login("user:1", "ip:10.0.0.1")})), 0);
}

TEST_F(PoliciesTestRouteTest, EventsAreRefusedAsTheEventsRouteRefusesThem) {
  Reply r = Test(Array({FailedLogin("user:a"), R"({"type": "login_failed", "entity": "nope"})"}));
  EXPECT_EQ(r.status, 400) << r.body;
  ASSERT_EQ(Details(r).size(), 1u) << r.body;
  EXPECT_EQ(Details(r)[0].rfind("events[1].entity: ", 0), 0u) << r.body;

  r = Test(Array({absl::StrCat(R"({"type": "login_failed", "entity": "user:a", "at": ")",
                               At(absl::Minutes(9)), R"("})"),
                  R"({"type": "logn", "entity": "user:a"})", R"("a string")",
                  R"({"type": "login", "entity": "user:a", "attrs": {"ip": "ip:10.0.0.1",)"
                  R"( "ip": "ip:10.0.0.2"}})",
                  R"({"type": "login", "entity": "user:a", "colour": "red"})"}));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(Details(r), (std::vector<std::string>{
                            "events[0].at: older than the lateness bound (5m)",
                            "events[1].type: no counter or policy of the policy set (version 1) "
                            "is on \"logn\"",
                            "events[2]: must be an object",
                            "events[3].attrs.ip: given twice",
                            "events[4].colour: unknown field",
                        }))
      << r.body;
  // A bad detection and a bad event are both named.
  r = Post("/v1/policies/test",
           absl::StrCat(R"({"detections": [{"id": "d1"}], "events": [)", R"({"type": "login"}]})"));
  EXPECT_EQ(r.status, 400) << r.body;
  bool detection = false, event = false;
  for (const std::string& d : Details(r)) {
    detection |= d.rfind("detections[0].", 0) == 0;
    event |= d.rfind("events[0].entity: ", 0) == 0;
  }
  EXPECT_TRUE(detection && event) << r.body;
}

TEST_F(PoliciesTestRouteTest, SomethingToTestIsRequiredAndTheBatchLimitHolds) {
  for (std::string_view body : {R"({})", R"({"detections": []})", R"({"events": []})",
                                R"({"detections": [], "events": []})"}) {
    Reply r = Post("/v1/policies/test", body);
    EXPECT_EQ(r.status, 400) << body << " " << r.body;
    ASSERT_EQ(Details(r).size(), 1u) << r.body;
    EXPECT_EQ(Details(r)[0].rfind("detections: ", 0), 0u) << r.body;
  }
  Reply r = Post("/v1/policies/test", R"({"events": {"type": "login"}})");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(Details(r), std::vector<std::string>{"events: must be an array of events"});
  // As POST /v1/events: past the batch limit (20 here), 413.
  r = Test(Array(std::vector<std::string>(21, FailedLogin("user:a"))));
  EXPECT_EQ(r.status, 413) << r.body;
  r = Test(Array(std::vector<std::string>(20, FailedLogin("user:a"))));
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(PoliciesTestRouteTest, AGivenSetReadsTheLiveCountersOnlyIfItDeclaresThemAlike) {
  const std::string e = FailedLogin("user:b");
  ASSERT_EQ(Submit(Array({e, e, e, e})), 0);
  auto with_set = [&](std::string_view yaml) {
    std::string body = "{\"policy_set\": \"";
    for (char c : yaml) {
      if (c == '\n') {
        body += "\\n";
      } else if (c == '"') {
        body += "\\\"";
      } else {
        body += c;
      }
    }
    absl::StrAppend(&body, "\", \"events\": ", Array({e}), "}");
    return Post("/v1/policies/test", body);
  };
  // The same counters (another threshold): the 4 real failed logins count.
  std::string same = kPolicies;
  same.replace(same.find(">= 5"), 4, ">= 6");
  Reply r = with_set(same);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Decisions(r), (std::vector<std::vector<std::string>>{{}})) << r.body;  // 5 < 6
  same.replace(same.find(">= 6"), 4, ">= 5");
  r = with_set(same);
  EXPECT_EQ(Decisions(r),
            (std::vector<std::vector<std::string>>{{"brute-force throttle active user:b"}}))
      << r.body;
  // Another window: publishing this set starts the counters afresh, so only the tested
  // event counts (1 < 5).
  std::string other = same;
  other.replace(other.find("windows: [10m]"), 14, "windows: [15m]");
  other.replace(other.find("\"10m\""), 5, "\"15m\"");
  r = with_set(other);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Decisions(r), (std::vector<std::vector<std::string>>{{}})) << r.body;
  other.replace(other.find(">= 5"), 4, ">= 1");
  r = with_set(other);
  EXPECT_EQ(Decisions(r),
            (std::vector<std::vector<std::string>>{{"brute-force throttle active user:b"}}))
      << r.body;
  // And the live counts were not reset: a real 5th fires.
  EXPECT_EQ(Submit(Array({e})), 1);
}

}  // namespace
}  // namespace quell::api
