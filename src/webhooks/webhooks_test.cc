#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/ids.h"
#include "core/status.h"
#include "core/strings.h"
#include "gtest/gtest.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/sqlite/sqlite_store.h"
#include "webhooks/dispatcher.h"
#include "webhooks/http_post.h"
#include "webhooks/signature.h"
#include "webhooks/state_store.h"

namespace quell::webhooks {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1767225600);

// The seq of a delivered body ({"seq":N,...}), or nullopt if it does not start so.
std::optional<int64_t> SeqOf(std::string_view body) {
  constexpr std::string_view kHead = "{\"seq\":";
  if (body.substr(0, kHead.size()) != kHead) return std::nullopt;
  int64_t seq = 0;
  const std::string_view digits = body.substr(kHead.size(), body.find(',') - kHead.size());
  if (!absl::SimpleAtoi(AV(digits), &seq)) return std::nullopt;
  return seq;
}

std::string TempDir(std::string_view name) {
  auto dir = std::filesystem::temp_directory_path() /
             absl::StrCat("webhooks_test_", AV(name), "_", getpid(), "_", core::RandomHex(4));
  std::filesystem::create_directories(dir);
  return dir.string();
}

core::Mitigation MakeMitigation(int n, std::string_view entity, std::string_view action,
                                core::MitigationState state = core::MitigationState::kActive) {
  core::Mitigation m;
  m.id = core::NewId("m_", kT0 + absl::Seconds(n));
  m.entity = *core::Entity::Parse(entity);
  m.action = action;
  m.state = state;
  m.created_at = m.updated_at = m.starts_at = kT0 + absl::Seconds(n);
  m.expires_at = m.created_at + absl::Hours(1);
  m.source = "manual";
  m.actor = "k_test";
  return m;
}

// ---- signature ----

TEST(Signature, Rfc4231Case2) {
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(Signature, HeaderAndVerify) {
  const std::string h = SignatureHeader("s3cret", "{\"seq\":1}");
  EXPECT_EQ(h.substr(0, 7), "sha256=");
  EXPECT_EQ(h.size(), 7u + 64u);
  EXPECT_TRUE(VerifySignature("s3cret", "{\"seq\":1}", h));
  EXPECT_FALSE(VerifySignature("other", "{\"seq\":1}", h));
  EXPECT_FALSE(VerifySignature("s3cret", "{\"seq\":2}", h));
  EXPECT_FALSE(VerifySignature("s3cret", "{\"seq\":1}", h.substr(1)));
}

// ---- filters and body ----

TEST(Filters, EmptyMatchesAll) {
  Subscription s;
  EXPECT_TRUE(Matches(s, MakeMitigation(1, "ip:1.2.3.4", "block")));
  EXPECT_TRUE(Matches(s, MakeMitigation(1, "user:alice", "challenge")));
}

TEST(Filters, ActionsAndEntityTypesBothApply) {
  Subscription s;
  s.actions = {"block", "throttle"};
  s.entity_types = {"ip", "cidr"};
  EXPECT_TRUE(Matches(s, MakeMitigation(1, "ip:1.2.3.4", "block")));
  EXPECT_TRUE(Matches(s, MakeMitigation(1, "cidr:10.0.0.0/8", "throttle")));
  EXPECT_FALSE(Matches(s, MakeMitigation(1, "ip:1.2.3.4", "challenge")));
  EXPECT_FALSE(Matches(s, MakeMitigation(1, "user:alice", "block")));
}

TEST(Body, OpFollowsState) {
  auto active = MakeMitigation(1, "ip:1.2.3.4", "block");
  std::string b = DeliveryBody(7, "wh_x", active);
  EXPECT_EQ(b.rfind("{\"seq\":7,\"op\":\"upsert\",\"subscription\":\"wh_x\",\"mitigation\":{", 0),
            0u)
      << b;
  EXPECT_NE(b.find(core::MitigationToJson(active)), std::string::npos);
  auto revoked = MakeMitigation(1, "ip:1.2.3.4", "block", core::MitigationState::kRevoked);
  EXPECT_NE(DeliveryBody(8, "wh_x", revoked).find("\"op\":\"delete\""), std::string::npos);
}

// ---- backoff ----

TEST(Backoff, DoublesThenCaps) {
  DispatcherOptions o;  // 0.5 s doubling to 60 s
  EXPECT_EQ(BackoffDelay(1, o, 1.0), absl::Milliseconds(500));
  EXPECT_EQ(BackoffDelay(2, o, 1.0), absl::Seconds(1));
  EXPECT_EQ(BackoffDelay(3, o, 1.0), absl::Seconds(2));
  EXPECT_EQ(BackoffDelay(8, o, 1.0), absl::Seconds(60));  // 64 s capped
  EXPECT_EQ(BackoffDelay(1000, o, 1.0), absl::Seconds(60));
}

TEST(Backoff, JitterStaysInHalfToFull) {
  DispatcherOptions o;
  EXPECT_EQ(BackoffDelay(3, o, 0.0), absl::Seconds(1));
  EXPECT_EQ(BackoffDelay(3, o, 0.5), absl::Milliseconds(1500));
  EXPECT_EQ(BackoffDelay(3, o, 7.0), absl::Seconds(2));  // clamped
}

// ---- URLs ----

TEST(Url, Parses) {
  auto u = ParseHttpUrl("http://127.0.0.1:8099/hook?x=1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8099);
  EXPECT_EQ(u->path, "/hook?x=1");
  auto d = ParseHttpUrl("http://example.com");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->port, 80);
  EXPECT_EQ(d->path, "/");
  auto v6 = ParseHttpUrl("http://[::1]:9000/h");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9000);
  for (const char* bad :
       {"https://x/", "ftp://x", "http://", "http://:80/", "http://x:0/", "http://x:99999/",
        "http://u@x/", "http://x/a b", "http://x:abc/", "http://x/h#frag",
        // Accepted before, then never deliverable (every change a dead letter): an IPv6
        // host without brackets, a space or other non-host byte in the host, a port with
        // a sign or a space.
        "http://::1/hook", "http://127.0.0.1 x:8080/", "http://x:+80/", "http://x: 80/",
        "http://[::1 ]/", "http://x%41/",
        // Accepted before, then every delivery failed (resolution) or went out as a
        // request line a strict receiver refuses.
        "http://999.0.0.1:8080/x", "http://1.2.3/x", "http://-a-:8080/x", "http://a..b/",
        "http://[::g]/", "http://127.0.0.1/\xc3\xa9", "http://127.0.0.1/%zz", "http://x/a%4"}) {
    EXPECT_FALSE(ParseHttpUrl(bad).ok()) << bad;
  }
  EXPECT_EQ(ParseHttpUrl("http://:8080/x").status().message(), "url needs a host");
  for (const char* good :
       {"http://hooks.example.com./x", "http://my_host:8080/%C3%A9?a=%20", "http://10.0.0.1/"}) {
    EXPECT_TRUE(ParseHttpUrl(good).ok()) << good;
  }
  // A query right after the host is the root path's (the host used to run to the '/').
  auto q = ParseHttpUrl("http://127.0.0.1?x=1");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->host, "127.0.0.1");
  EXPECT_EQ(q->path, "/?x=1");
}

// Answers one request with `reply` (raw bytes) on an IPv4 loopback port.
class RawServer {
 public:
  explicit RawServer(std::string reply) : reply_(std::move(reply)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    listen(fd_, 1);
    thread_ = std::thread([this] {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string got;
      char buf[4096];
      while (got.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        got.append(buf, n);
      }
      send(c, reply_.data(), reply_.size(), MSG_NOSIGNAL);
      close(c);
    });
  }
  ~RawServer() {
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }

 private:
  std::string reply_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

// The status is exactly three digits ("2004" read as 200 moved the cursor past a change
// never accepted), and interim 1xx responses come before the final one ("100 Continue"
// then 200 was a failure, re-sent until dead-lettered).
TEST(Url, TheStatusIsTheFinalResponsesThreeDigits) {
  struct Case {
    std::string reply;
    int want;  // 0: an error
  };
  for (const Case& c : std::vector<Case>{
           {"HTTP/1.1 2004 Weird\r\nContent-Length: 0\r\n\r\n", 0},
           {"HTTP/1.1 200x\r\n\r\n", 0},
           {"HTTP/\r\n\r\n", 0},  // shorter than a status line
           {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200},
           {"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 503 No\r\n\r\n", 503},
           {"HTTP/1.1 204\r\n\r\n", 204},
           // Bare LF line ends (RFC 9112 2.2): read as "connection closed before a response".
           {"HTTP/1.1 204 No Content\n\n", 204},
           {"HTTP/1.1 100 Continue\n\nHTTP/1.1 202 Accepted\nContent-Length: 0\n\n", 202}}) {
    RawServer server(c.reply);
    auto url = ParseHttpUrl(absl::StrCat("http://127.0.0.1:", server.port(), "/h"));
    ASSERT_TRUE(url.ok());
    auto status = HttpPost(*url, {}, "{}", absl::Seconds(5));
    if (c.want == 0) {
      EXPECT_FALSE(status.ok()) << c.reply;
    } else {
      ASSERT_TRUE(status.ok()) << c.reply << status.status();
      EXPECT_EQ(*status, c.want) << c.reply;
    }
  }
}

// An IPv6 literal goes into Host bracketed, as in the URL ("Host: ::1:9000" is not a
// valid header and strict receivers refuse it).
TEST(Url, HostOfAnIpv6LiteralIsBracketed) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    if (fd >= 0) close(fd);
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin6_port);
  listen(fd, 1);
  std::string got;
  std::thread server([&] {
    int c = accept(fd, nullptr, nullptr);
    if (c < 0) return;
    char buf[4096];
    while (got.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = recv(c, buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.append(buf, n);
    }
    const std::string reply = "HTTP/1.1 204 X\r\nContent-Length: 0\r\n\r\n";
    send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
    close(c);
  });
  auto url = ParseHttpUrl(absl::StrCat("http://[::1]:", port, "/h?x=1"));
  ASSERT_TRUE(url.ok()) << url.status();
  auto status = HttpPost(*url, {}, "{}", absl::Seconds(5));
  server.join();
  close(fd);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, 204);
  EXPECT_EQ(got.rfind("POST /h?x=1 HTTP/1.1\r\n", 0), 0u) << got;
  EXPECT_NE(got.find(absl::StrCat("\r\nHost: [::1]:", port, "\r\n")), std::string::npos) << got;
}

// ---- state stores: the same suite against SQLite and PostgreSQL ----

// Fresh, isolated state of one backend, opened as many times as needed (a restart, or
// another node sharing it).
class StateBackend {
 public:
  virtual ~StateBackend() = default;
  virtual absl::StatusOr<std::unique_ptr<StateStore>> Open() = 0;
};

class SqliteStateBackend final : public StateBackend {
 public:
  SqliteStateBackend() : dir_(TempDir("state")) {}
  ~SqliteStateBackend() override { std::filesystem::remove_all(dir_); }
  absl::StatusOr<std::unique_ptr<StateStore>> Open() override {
    return OpenSqliteStateStore(dir_ + "/webhooks.db");
  }

 private:
  std::string dir_;
};

class PostgresStateBackend final : public StateBackend {
 public:
  explicit PostgresStateBackend(std::string url) : url_(std::move(url)) {}
  absl::StatusOr<std::unique_ptr<StateStore>> Open() override {
    return OpenPostgresStateStore({.url = url_});
  }

 private:
  std::string url_;  // a fresh database of the test binary's throwaway cluster
};

// kFailedPrecondition (the test fails) if PostgreSQL 15 is not installed (scripts/setup).
absl::StatusOr<std::unique_ptr<StateBackend>> MakeBackend(const std::string& name) {
  if (name == "sqlite") return std::make_unique<SqliteStateBackend>();
  QUELL_ASSIGN_OR_RETURN(auto* cluster, ledger::pg_internal::TestCluster::Shared());
  QUELL_ASSIGN_OR_RETURN(std::string url, cluster->NewDatabase());
  return std::make_unique<PostgresStateBackend>(std::move(url));
}

std::string BackendName(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

class StateStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto b = MakeBackend(GetParam());
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = *std::move(b);
  }
  std::unique_ptr<StateStore> Open() {
    auto st = backend_->Open();
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? *std::move(st) : nullptr;
  }
  std::unique_ptr<StateBackend> backend_;
};

Subscription MakeSubscription(std::string id, absl::Time created, int64_t cursor) {
  Subscription s;
  s.id = std::move(id);
  s.url = "http://127.0.0.1:1/h";
  s.secret = "whsec_abc";
  s.actions = {"block", "throttle"};
  s.entity_types = {"ip"};
  s.created_at = created;
  s.cursor = cursor;
  return s;
}

TEST_P(StateStoreTest, SurvivesReopen) {
  Subscription s = MakeSubscription("wh_1", kT0, 5);
  {
    auto st = Open();
    ASSERT_NE(st, nullptr);
    ASSERT_TRUE(st->CreateSubscription(s).ok());
    EXPECT_TRUE(absl::IsAlreadyExists(st->CreateSubscription(s)));
    ASSERT_TRUE(st->AdvanceCursor("wh_1", 9).ok());
    ASSERT_TRUE(st->AdvanceCursor("wh_1", 3).ok());  // never backwards
    EXPECT_TRUE(absl::IsNotFound(st->AdvanceCursor("wh_missing", 3)));
    ASSERT_TRUE(st->AddDeadLetter({"wh_1", 12, 8, "HTTP 500", kT0, "{\"seq\":12}"}).ok());
    EXPECT_TRUE(absl::IsNotFound(st->AddDeadLetter({"wh_missing", 1, 1, "x", kT0, "{}"})));
  }
  auto st = Open();
  ASSERT_NE(st, nullptr);
  auto subs = st->ListSubscriptions();
  ASSERT_TRUE(subs.ok());
  ASSERT_EQ(subs->size(), 1u);
  Subscription want = s;
  want.cursor = 12;  // the dead letter advanced it
  EXPECT_EQ((*subs)[0], want);
  auto dl = st->DeadLetters("wh_1", 0, 10);
  ASSERT_TRUE(dl.ok());
  ASSERT_EQ(dl->size(), 1u);
  EXPECT_EQ((*dl)[0], (DeadLetter{"wh_1", 12, 8, "HTTP 500", kT0, "{\"seq\":12}"}));
  EXPECT_TRUE(st->DeadLetters("wh_1", 12, 10)->empty());
  EXPECT_TRUE(st->DeadLetters("wh_missing", 0, 10)->empty());
  ASSERT_TRUE(st->DeleteSubscription("wh_1").ok());
  EXPECT_TRUE(absl::IsNotFound(st->DeleteSubscription("wh_1")));
  EXPECT_TRUE(st->ListSubscriptions()->empty());
  EXPECT_TRUE(st->DeadLetters("wh_1", 0, 10)->empty());
}

TEST_P(StateStoreTest, ListsOldestFirstAndPagesDeadLetters) {
  auto st = Open();
  ASSERT_NE(st, nullptr);
  Subscription empty_filters = MakeSubscription("wh_b", kT0, 0);
  empty_filters.actions.clear();
  empty_filters.entity_types.clear();
  ASSERT_TRUE(st->CreateSubscription(empty_filters).ok());
  ASSERT_TRUE(st->CreateSubscription(MakeSubscription("wh_a", kT0 + absl::Seconds(1), 0)).ok());
  ASSERT_TRUE(st->CreateSubscription(MakeSubscription("wh_c", kT0, 0)).ok());
  auto subs = st->ListSubscriptions();
  ASSERT_TRUE(subs.ok());
  ASSERT_EQ(subs->size(), 3u);
  EXPECT_EQ((*subs)[0], empty_filters);  // empty lists stay empty
  EXPECT_EQ((*subs)[1].id, "wh_c");
  EXPECT_EQ((*subs)[2].id, "wh_a");
  for (int seq = 1; seq <= 5; ++seq) {
    ASSERT_TRUE(st->AddDeadLetter({"wh_a", seq, 2, "HTTP 503", kT0, "{}"}).ok());
  }
  // The same seq again replaces the letter (a re-recorded dead letter).
  ASSERT_TRUE(st->AddDeadLetter({"wh_a", 3, 4, "timeout", kT0, "{\"x\":1}"}).ok());
  auto page = st->DeadLetters("wh_a", 1, 2);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].seq, 2);
  EXPECT_EQ((*page)[1].seq, 3);
  EXPECT_EQ((*page)[1].attempts, 4);
  EXPECT_EQ((*page)[1].last_error, "timeout");
  EXPECT_EQ(st->DeadLetters("wh_a", 3, 100)->size(), 2u);
  EXPECT_TRUE(st->DeadLetters("wh_b", 0, 100)->empty());
}

TEST_P(StateStoreTest, TwoOpenStoresShareOneState) {
  // Two nodes (or a restart) opening the same state at once: both see every write.
  std::unique_ptr<StateStore> a, b;
  std::thread ta([&] { a = Open(); });
  std::thread tb([&] { b = Open(); });
  ta.join();
  tb.join();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->CreateSubscription(MakeSubscription("wh_1", kT0, 0)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(b->CreateSubscription(MakeSubscription("wh_1", kT0, 0))));
  ASSERT_TRUE(b->AdvanceCursor("wh_1", 7).ok());
  ASSERT_TRUE(a->AdvanceCursor("wh_1", 6).ok());
  auto subs = a->ListSubscriptions();
  ASSERT_TRUE(subs.ok());
  ASSERT_EQ(subs->size(), 1u);
  EXPECT_EQ((*subs)[0].cursor, 7);
  ASSERT_TRUE(b->DeleteSubscription("wh_1").ok());
  EXPECT_TRUE(absl::IsNotFound(a->AdvanceCursor("wh_1", 8)));
}

TEST(PostgresStateStore, ReconnectsByItselfAfterTheServerRestarts) {
  // A cluster of its own: it stops it (the shared one may be the whole test run's).
  auto started = ledger::pg_internal::TestCluster::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ledger::pg_internal::TestCluster> own(*started);
  auto* cluster = &own;
  auto url = (*cluster)->NewDatabase();
  ASSERT_TRUE(url.ok()) << url.status();
  auto st = OpenPostgresStateStore({.url = *url, .connect_timeout_s = 2});
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_TRUE((*st)->CreateSubscription(MakeSubscription("wh_1", kT0, 0)).ok());
  ASSERT_TRUE((*cluster)->Stop().ok());
  absl::Status down = (*st)->AdvanceCursor("wh_1", 4);
  EXPECT_TRUE(absl::IsUnavailable(down)) << down;
  EXPECT_TRUE(absl::IsUnavailable((*st)->ListSubscriptions().status()));
  ASSERT_TRUE((*cluster)->Restart().ok());
  ASSERT_TRUE((*st)->AdvanceCursor("wh_1", 4).ok());
  auto subs = (*st)->ListSubscriptions();
  ASSERT_TRUE(subs.ok()) << subs.status();
  ASSERT_EQ(subs->size(), 1u);
  EXPECT_EQ((*subs)[0].cursor, 4);
}

TEST(PostgresStateStore, UnreachableServerIsUnavailable) {
  auto st =
      OpenPostgresStateStore({.url = "postgresql://127.0.0.1:1/none", .connect_timeout_s = 2});
  EXPECT_TRUE(absl::IsUnavailable(st.status())) << st.status();
  EXPECT_TRUE(absl::IsInvalidArgument(OpenPostgresStateStore({}).status()));
}

INSTANTIATE_TEST_SUITE_P(Backends, StateStoreTest, ::testing::Values("sqlite", "postgres"),
                         BackendName);

// ---- delivery, end to end with a loopback receiver ----

// A tiny HTTP receiver: answers `fail_first` requests with 500, then 200; records bodies
// and signature headers of every request. Thread-safe.
class Receiver {
 public:
  explicit Receiver(int fail_first) : fail_first_(fail_first) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    listen(fd_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~Receiver() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  struct Request {
    std::string body, signature;
    int status;
  };
  std::vector<Request> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  void Serve() {
    while (!stop_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string in;
      char buf[4096];
      size_t need = std::string::npos;
      while (need == std::string::npos || in.size() < need) {
        ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        in.append(buf, n);
        size_t end = in.find("\r\n\r\n");
        if (need == std::string::npos && end != std::string::npos) {
          size_t cl = in.find("Content-Length: ");
          size_t len = 0;
          if (cl != std::string::npos)
            (void)absl::SimpleAtoi(
                AV(std::string_view(in).substr(cl + 16, in.find("\r\n", cl) - cl - 16)), &len);
          need = end + 4 + len;
        }
      }
      Request r;
      size_t end = in.find("\r\n\r\n");
      if (end != std::string::npos) r.body = in.substr(end + 4);
      size_t sig = in.find("X-Quell-Signature: ");
      if (sig != std::string::npos)
        r.signature = in.substr(sig + 19, in.find("\r\n", sig) - sig - 19);
      {
        std::lock_guard lock(mu_);
        r.status = static_cast<int>(requests_.size()) < fail_first_ ? 500 : 200;
        requests_.push_back(r);
      }
      std::string reply = absl::StrCat("HTTP/1.1 ", r.status, " X\r\nContent-Length: 0\r\n\r\n");
      send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      close(c);
    }
  }
  int fd_ = -1;
  int port_ = 0;
  int fail_first_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Request> requests_;
  std::thread thread_;
};

class DispatcherTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto b = MakeBackend(GetParam());
    ASSERT_TRUE(b.ok()) << b.status();
    state_ = *std::move(b);
    dir_ = TempDir("dispatch");
    ledger::SqliteOptions o;
    o.path = dir_;
    auto s = ledger::OpenSqliteStore(o);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Put(core::Mitigation m) {
    auto txn = store_->Begin(kT0);
    ASSERT_TRUE(txn.ok());
    m.seq = (*txn)->NextSeq();
    ledger::Change c;
    c.kind = ledger::ChangeKind::kMitigation;
    c.actor = "k_test";
    ASSERT_TRUE((*txn)->Append(std::move(c), &m).ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }

  std::unique_ptr<Dispatcher> Make(DispatcherOptions o) {
    auto st = state_->Open();
    EXPECT_TRUE(st.ok()) << st.status();
    auto d = Dispatcher::Create(*std::move(st), store_.get(), &clock_, o, nullptr);
    EXPECT_TRUE(d.ok()) << d.status();
    return *std::move(d);
  }

  // Polls `pred` for up to 20 s (a bound, not a timing assertion).
  template <typename F>
  bool WaitFor(F pred) {
    for (int i = 0; i < 2000; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }

  std::unique_ptr<StateBackend> state_;
  std::string dir_;
  std::unique_ptr<ledger::Store> store_;
  core::FakeClock clock_{kT0};
};

DispatcherOptions Fast() {
  DispatcherOptions o;
  o.backoff_initial = absl::Milliseconds(5);
  o.backoff_max = absl::Milliseconds(20);
  o.timeout = absl::Seconds(2);
  o.poll = absl::Milliseconds(20);
  return o;
}

TEST_P(DispatcherTest, RetriesThenDeliversInOrderFilteredAndSigned) {
  Receiver rx(/*fail_first=*/3);
  auto d = Make(Fast());
  auto sub =
      d->Subscribe({absl::StrCat("http://127.0.0.1:", rx.port(), "/h"), {"block"}, {"ip"}, 0});
  ASSERT_TRUE(sub.ok()) << sub.status();
  d->Start();
  Put(MakeMitigation(1, "ip:10.0.0.1", "block"));
  Put(MakeMitigation(2, "user:bob", "block"));         // filtered: entity type
  Put(MakeMitigation(3, "ip:10.0.0.2", "challenge"));  // filtered: action
  Put(MakeMitigation(4, "ip:10.0.0.3", "block", core::MitigationState::kRevoked));
  Put(MakeMitigation(5, "ip:10.0.0.4", "block"));
  ASSERT_TRUE(WaitFor([&] {
    int ok = 0;
    for (const auto& r : rx.requests()) ok += r.status == 200;
    return ok >= 3;
  }));
  d->Stop();
  std::vector<int64_t> delivered;
  int failed = 0;
  for (const auto& r : rx.requests()) {
    EXPECT_TRUE(VerifySignature(sub->secret, r.body, r.signature)) << r.body;
    if (r.status != 200) {
      ++failed;
      continue;
    }
    const std::optional<int64_t> seq = SeqOf(r.body);
    ASSERT_TRUE(seq.has_value()) << r.body;
    delivered.push_back(*seq);
  }
  EXPECT_EQ(failed, 3);
  EXPECT_EQ(delivered, (std::vector<int64_t>{1, 4, 5}));
  auto list = d->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].subscription.cursor, 5);
  EXPECT_TRUE(d->DeadLetters(sub->id, 0, 10)->empty());
}

TEST_P(DispatcherTest, DeadLettersAfterMaxAttemptsAndCursorSurvivesRestart) {
  Receiver rx(/*fail_first=*/1000000);
  DispatcherOptions o = Fast();
  o.max_attempts = 3;
  std::string id;
  {
    auto d = Make(o);
    auto sub = d->Subscribe({absl::StrCat("http://127.0.0.1:", rx.port(), "/h"), {}, {}, 0});
    ASSERT_TRUE(sub.ok());
    id = sub->id;
    Put(MakeMitigation(1, "ip:10.0.0.1", "block"));
    Put(MakeMitigation(2, "ip:10.0.0.2", "block"));
    d->Start();
    ASSERT_TRUE(WaitFor([&] { return d->DeadLetters(id, 0, 10)->size() == 2; }));
    d->Stop();
    auto dl = *d->DeadLetters(id, 0, 10);
    EXPECT_EQ(dl[0].seq, 1);
    EXPECT_EQ(dl[1].seq, 2);
    EXPECT_EQ(dl[0].attempts, 3);
    EXPECT_EQ(dl[0].last_error, "HTTP 500");
  }
  EXPECT_EQ(rx.requests().size(), 6u);
  // A new dispatcher over the same state resumes after the dead letters.
  auto d = Make(o);
  auto list = d->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].subscription.cursor, 2);
  EXPECT_EQ(d->DeadLetters(id, 0, 10)->size(), 2u);
  ASSERT_TRUE(d->Unsubscribe(id).ok());
  EXPECT_TRUE(absl::IsNotFound(d->DeadLetters(id, 0, 10).status()));
}

// A receiver that fails every time gets its dead letter after max_attempts in all, however
// often the server restarts in between (a crash loop, or the lease moving to another
// node): the attempts are recorded, not kept in memory only.
TEST_P(DispatcherTest, AttemptsGoOnCountingAcrossARestart) {
  Receiver rx(/*fail_first=*/1000000);
  DispatcherOptions o = Fast();
  o.max_attempts = 4;
  o.backoff_initial = o.backoff_max = absl::Seconds(1);  // Stop comes before a third attempt
  std::string id;
  {
    auto d = Make(o);
    auto sub = d->Subscribe({absl::StrCat("http://127.0.0.1:", rx.port(), "/h"), {}, {}, 0});
    ASSERT_TRUE(sub.ok());
    id = sub->id;
    Put(MakeMitigation(1, "ip:10.0.0.1", "block"));
    d->Start();
    ASSERT_TRUE(WaitFor([&] { return d->List()[0].failures == 2; }));
    d->Stop();
  }
  const size_t before = rx.requests().size();  // 2 (3 if the machine stalled a second)
  ASSERT_GE(before, 2u);
  ASSERT_LT(before, 4u);
  auto d = Make(o);
  ASSERT_EQ(d->List().size(), 1u);
  d->Start();
  ASSERT_TRUE(WaitFor([&] { return d->DeadLetters(id, 0, 10)->size() == 1; }));
  d->Stop();
  EXPECT_EQ(rx.requests().size(), 4u);  // 4 in all (2 + 2), not 2 + 4
  auto dl = *d->DeadLetters(id, 0, 10);
  EXPECT_EQ(dl[0].seq, 1);
  EXPECT_EQ(dl[0].attempts, 4);
  // Stale once the cursor passed the change: nothing is carried over to the next one.
  auto list = d->List();
  EXPECT_EQ(list[0].subscription.cursor, 1);
  EXPECT_EQ(list[0].failures, 0);
}

// webhooks.db newer than the ledger (restored alone from an older backup): the cursor is
// past the head, and the changes that reuse those seqs are never sent. It said nothing;
// the subscription's last_error says so now, until the ledger passes the cursor.
TEST_P(DispatcherTest, ACursorPastTheLedgerSaysSo) {
  Receiver rx(/*fail_first=*/0);
  {
    auto st = state_->Open();
    ASSERT_TRUE(st.ok());
    Subscription s;
    s.id = "wh_restored";
    s.url = absl::StrCat("http://127.0.0.1:", rx.port(), "/h");
    s.secret = "s";
    s.created_at = kT0;
    s.cursor = 3;  // the ledger below has no change yet
    ASSERT_TRUE((*st)->CreateSubscription(s).ok());
  }
  auto d = Make(Fast());
  d->Start();
  auto error = [&] { return d->List()[0].last_error; };
  ASSERT_TRUE(WaitFor([&] { return !error().empty(); }));
  EXPECT_NE(error().find("past the ledger's last change 0"), std::string::npos) << error();
  for (int i = 1; i <= 4; ++i) Put(MakeMitigation(i, absl::StrCat("ip:10.0.0.", i), "block"));
  d->OnCommitted({});
  ASSERT_TRUE(WaitFor([&] { return rx.requests().size() == 1 && error().empty(); }));
  // 1..3 were the cursor's: not sent.
  EXPECT_NE(rx.requests()[0].body.find("\"seq\":4"), std::string::npos) << rx.requests()[0].body;
  d->Stop();
}

TEST_P(DispatcherTest, ConnectionRefusedIsAFailure) {
  int port = 0;
  {
    Receiver rx(0);
    port = rx.port();
  }  // closed again: nothing listens there
  DispatcherOptions o = Fast();
  o.max_attempts = 2;
  auto d = Make(o);
  auto sub = d->Subscribe({absl::StrCat("http://127.0.0.1:", port, "/h"), {}, {}, 0});
  ASSERT_TRUE(sub.ok());
  Put(MakeMitigation(1, "ip:10.0.0.1", "block"));
  d->Start();
  ASSERT_TRUE(WaitFor([&] { return d->DeadLetters(sub->id, 0, 10)->size() == 1; }));
  EXPECT_NE((*d->DeadLetters(sub->id, 0, 10))[0].last_error.find("connect"), std::string::npos);
}

TEST_P(DispatcherTest, RejectsNonHttpUrls) {
  auto d = Make(Fast());
  EXPECT_TRUE(absl::IsInvalidArgument(d->Subscribe({"https://x/h", {}, {}, {}}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(d->Subscribe({"http://x/h", {""}, {}, {}}).status()));
}

// The seq and subscription id of a delivered body ({"seq":N,"op":..,"subscription":"wh_..",..}).
std::pair<int64_t, std::string> SeqAndSubscription(const std::string& body) {
  const int64_t seq = SeqOf(body).value_or(0);
  const std::string key = "\"subscription\":\"";
  size_t at = body.find(key);
  if (at == std::string::npos) return {seq, ""};
  at += key.size();
  return {seq, body.substr(at, body.find('"', at) - at)};
}

// GET /v1/webhooks lists from the store: a subscription created or deleted through
// another node is listed as it is at once, not after that node's next poll (an admin
// behind a load balancer did not see the one just created, and made it twice).
TEST_P(DispatcherTest, ListCurrentShowsAnotherNodesChangesAtOnce) {
  DispatcherOptions slow = Fast();
  slow.poll = absl::Hours(1);  // no refresh of its own during the test
  auto a = Make(slow);
  auto b = Make(slow);
  auto sub = a->Subscribe({"http://127.0.0.1:9/h", {}, {}, 0});
  ASSERT_TRUE(sub.ok()) << sub.status();
  auto listed = b->ListCurrent();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].subscription.id, sub->id);
  ASSERT_TRUE(a->Unsubscribe(sub->id).ok());
  listed = b->ListCurrent();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty());
}

TEST_P(DispatcherTest, NodesSharingTheStateHandOverDeliveryAtTheRecordedCursor) {
  Receiver rx(0);
  auto a = Make(Fast());  // node A: serves the API, does not hold the lease at first
  auto b = Make(Fast());  // node B: the first holder
  const std::string url = absl::StrCat("http://127.0.0.1:", rx.port(), "/h");
  auto sub = a->Subscribe({url, {}, {}, 0});
  ASSERT_TRUE(sub.ok()) << sub.status();
  // B's API shows A's subscription (the shared store, re-read every poll).
  ASSERT_TRUE(WaitFor([&] { return b->List().size() == 1; }));
  EXPECT_EQ(b->List()[0].subscription.id, sub->id);
  EXPECT_TRUE(b->DeadLetters(sub->id, 0, 10).ok());

  auto delivered = [&](const std::string& id) {
    std::vector<int64_t> seqs;
    for (const auto& r : rx.requests()) {
      auto [seq, sub_id] = SeqAndSubscription(r.body);
      if (r.status == 200 && sub_id == id) seqs.push_back(seq);
    }
    return seqs;
  };
  b->Start();
  EXPECT_TRUE(b->running());
  for (int i = 1; i <= 3; ++i) Put(MakeMitigation(i, absl::StrCat("ip:10.0.0.", i), "block"));
  ASSERT_TRUE(WaitFor([&] { return delivered(sub->id).size() >= 3; }));
  b->Stop();  // B loses the lease
  EXPECT_FALSE(b->running());
  for (int i = 4; i <= 6; ++i) Put(MakeMitigation(i, absl::StrCat("ip:10.0.0.", i), "block"));
  a->Start();  // A takes over from the cursor B recorded
  ASSERT_TRUE(WaitFor([&] { return delivered(sub->id).size() >= 6; }));
  a->Stop();
  EXPECT_EQ(delivered(sub->id), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));  // once each
  // The stopped node's view follows the store.
  EXPECT_TRUE(WaitFor([&] { return b->List()[0].subscription.cursor == 6; }));

  // B holds the lease again (Start after Stop). A subscription created through A while B
  // runs is picked up by B's worker; one deleted through A is no longer delivered.
  b->Start();
  ASSERT_TRUE(a->Unsubscribe(sub->id).ok());
  ASSERT_TRUE(WaitFor([&] { return b->List().empty(); }));
  auto sub2 = a->Subscribe({url, {}, {}, 6});
  ASSERT_TRUE(sub2.ok()) << sub2.status();
  Put(MakeMitigation(7, "ip:10.0.0.7", "block"));
  ASSERT_TRUE(WaitFor([&] { return !delivered(sub2->id).empty(); }));
  b->Stop();
  EXPECT_EQ(delivered(sub2->id), (std::vector<int64_t>{7}));
  EXPECT_EQ(delivered(sub->id), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_TRUE(absl::IsNotFound(b->DeadLetters(sub->id, 0, 10).status()));
}

INSTANTIATE_TEST_SUITE_P(Backends, DispatcherTest, ::testing::Values("sqlite", "postgres"),
                         BackendName);

}  // namespace
}  // namespace quell::webhooks
