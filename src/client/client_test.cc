// Client against a fake HTTP server (canned snapshot and feed), and the feed parsers.
#include "client/client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/feed.h"
#include "client/internal/http_conn.h"
#include "core/time.h"
#include "gtest/gtest.h"

namespace quell::client {
namespace {

using internal::ParseChangesPage;
using internal::ParseSnapshotHeader;
using internal::ParseSnapshotLine;

std::string M(std::string id, std::string entity, std::string action, std::string state,
              std::string expires = "2100-01-01T00:00:00Z") {
  return absl::StrCat(R"({"id":")", id, R"(","entity":")", entity, R"(","action":")", action,
                      R"(","state":")", state, R"(","expires_at":")", expires,
                      R"(","reason":"r","seq":1})");
}

// Ids must be valid mitigation ids ("m_" + 26 Crockford base32).
std::string Id(int i) {
  std::string n = absl::StrCat(i);
  return "m_01HZZZZZZZZZZZZZZZZZZZ" + std::string(4 - n.size(), '0') + n;
}

TEST(FeedTest, ParsesSnapshotLinesAndPages) {
  EXPECT_EQ(*ParseSnapshotHeader(R"({"seq":42})"), 42);
  EXPECT_FALSE(ParseSnapshotHeader(R"({"seq":"x"})").ok());
  auto item = ParseSnapshotLine(M(Id(1), "ip:10.0.0.1", "block", "active"));
  ASSERT_TRUE(item.ok()) << item.status();
  EXPECT_EQ(item->entity.str(), "ip:10.0.0.1");
  EXPECT_TRUE(item->active);
  EXPECT_FALSE(ParseSnapshotLine(M(Id(1), "user:a", "block", "revoked")).ok());
  EXPECT_FALSE(ParseSnapshotLine(R"({"id":"m_x"})").ok());
  EXPECT_FALSE(ParseSnapshotLine(M(Id(1), "nocolon", "block", "active")).ok());

  auto page = ParseChangesPage(absl::StrCat(
      R"({"changes":[{"seq":5,"op":"upsert","mitigation":)", M(Id(2), "user:u", "block", "active"),
      R"(},{"seq":7,"op":"delete","mitigation":)", M(Id(2), "user:u", "block", "revoked"),
      R"(}],"next":9})"));
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].seq, 5);
  EXPECT_TRUE(page->items[0].active);
  EXPECT_FALSE(page->items[1].active);
  EXPECT_EQ(page->next, 9);
  EXPECT_FALSE(
      ParseChangesPage(R"({"changes":[{"seq":1,"op":"zap","mitigation":{}}],"next":1})").ok());
}

// The enforcement view's lines (GET /v1/snapshot?view=enforcement) take a fast path that
// must agree with the JSON path; anything it does not recognise goes to the JSON path.
TEST(FeedTest, EnforcementLinesTakeTheFastPathAndAgreeWithJson) {
  auto line = [](std::string entity, std::string state = "active",
                 std::string expires = "2100-01-01T00:00:00.25Z") {
    return absl::StrCat(R"({"id":")", Id(3), R"(","entity":")", entity, R"(","action":"block",)",
                        R"("state":")", state, R"(","expires_at":")", expires, R"("})");
  };
  internal::FeedItem fast;
  ASSERT_TRUE(internal::ParseEnforcementLine(line("cidr:10.0.0.0/8"), &fast));
  auto slow = internal::ParseSnapshotLineJson(line("cidr:10.0.0.0/8"));
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ(fast.id, slow->id);
  EXPECT_EQ(fast.entity.str(), "cidr:10.0.0.0/8");
  EXPECT_EQ(fast.entity.str(), slow->entity.str());
  EXPECT_EQ(fast.action, "block");
  EXPECT_TRUE(fast.active);
  EXPECT_EQ(fast.expires_us, slow->expires_us);
  EXPECT_EQ(fast.expires_us % 1000000, 250000);
  // An escape, a revoked state, a zone offset, trailing bytes: not the fast shape; the
  // JSON path decides (and decodes the escape).
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:b\\u0030"), &fast));
  auto escaped = ParseSnapshotLine(line("user:b\\u0030"));
  ASSERT_TRUE(escaped.ok()) << escaped.status();
  EXPECT_EQ(escaped->entity.str(), "user:b0");
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:a", "revoked"), &fast));
  EXPECT_FALSE(ParseSnapshotLine(line("user:a", "revoked")).ok());
  EXPECT_FALSE(
      internal::ParseEnforcementLine(line("user:a", "active", "2100-01-01T01:00:00+01:00"), &fast));
  auto zoned = ParseSnapshotLine(line("user:a", "active", "2100-01-01T01:00:00+01:00"));
  ASSERT_TRUE(zoned.ok()) << zoned.status();
  EXPECT_EQ(zoned->expires_us,
            core::ToMicros(absl::FromCivil(absl::CivilSecond(2100, 1, 1), absl::UTCTimeZone())));
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:a") + " ", &fast));
  EXPECT_FALSE(internal::ParseEnforcementLine(line("nocolon"), &fast));
  EXPECT_FALSE(ParseSnapshotLine(line("nocolon")).ok());
}

TEST(FeedTest, ReadsTimesAsCoreDoes) {
  for (const char* t : {"2100-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2024-02-29T23:59:59.5Z",
                        "2026-11-28T12:00:00.123456Z", "2026-11-28T12:00:00.123456789Z",
                        "1969-12-31T23:59:59.000001Z", "2026-11-28T12:00:00+02:00"}) {
    auto item = ParseSnapshotLine(M(Id(1), "user:a", "block", "active", t));
    ASSERT_TRUE(item.ok()) << t << " " << item.status();
    EXPECT_EQ(item->expires_us, core::ToMicros(*core::ParseRfc3339(t))) << t;
  }
  EXPECT_FALSE(
      ParseSnapshotLine(M(Id(1), "user:a", "block", "active", "2026-13-01T00:00:00Z")).ok());
}

TEST(FeedTest, ParsesUrls) {
  auto e = internal::ParseHttpUrl("http://127.0.0.1:8080/");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "127.0.0.1");
  EXPECT_EQ(e->port, 8080);
  EXPECT_EQ(internal::ParseHttpUrl("http://[::1]:9")->host, "::1");
  EXPECT_FALSE(internal::ParseHttpUrl("https://a:1").ok());
  EXPECT_FALSE(internal::ParseHttpUrl("http://a").ok());
}

// A tiny HTTP/1.1 server: each request goes to `handler`, which returns the raw reply
// ("" closes the connection without answering).
class FakeServer {
 public:
  using Handler = std::function<std::string(const std::string& request_line)>;
  explicit FakeServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] { Accept(); });
  }
  ~FakeServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : conns_) t.join();
  }
  int port() const { return port_; }

 private:
  void Accept() {
    while (!stop_) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::lock_guard<std::mutex> lock(mu_);
      conns_.emplace_back([this, c] { Serve(c); });
    }
  }
  void Serve(int c) {
    std::string buf;
    char tmp[4096];
    while (!stop_) {
      size_t end;
      while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
        ssize_t n = ::recv(c, tmp, sizeof(tmp), 0);
        if (n <= 0) {
          ::close(c);
          return;
        }
        buf.append(tmp, n);
      }
      std::string line = buf.substr(0, buf.find("\r\n"));
      buf.erase(0, end + 4);
      std::string reply = handler_(line);
      if (reply.empty()) break;
      ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
    }
    ::close(c);
  }
  Handler handler_;
  int fd_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::thread> conns_;
};

std::string Reply(int code, const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", code, " X\r\nContent-Length: ", body.size(), "\r\n\r\n", body);
}
std::string Chunked(const std::string& body) {
  std::string out = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  // Odd chunk sizes so lines straddle chunks.
  for (size_t i = 0; i < body.size(); i += 7) {
    std::string piece = body.substr(i, 7);
    absl::StrAppend(&out, absl::Hex(piece.size()), "\r\n", piece, "\r\n");
  }
  return out + "0\r\n\r\n";
}

TEST(ClientTest, LoadsTheSnapshotFollowsTheFeedAndChecks) {
  std::mutex mu;
  std::vector<std::string> pages;  // served in order to /v1/changes; then empty pages
  int64_t last_next = 3;
  pages.push_back(absl::StrCat(
      R"({"changes":[{"seq":4,"op":"upsert","mitigation":)",
      M(Id(3), "user:c", "exclude_royalties", "active"),
      R"(},{"seq":5,"op":"delete","mitigation":)", M(Id(1), "user:a", "block", "revoked"),
      R"(},{"seq":5,"op":"delete","mitigation":)", M(Id(1), "user:a", "block", "revoked"),
      R"(},{"seq":6,"op":"delete","mitigation":)",
      M(Id(2), "cidr:10.0.0.0/8", "challenge", "revoked"), R"(}],"next":6})"));
  std::vector<std::string> seen;
  FakeServer server([&](const std::string& line) -> std::string {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(line);
    if (line.rfind("GET /v1/snapshot", 0) == 0) {
      return Chunked(absl::StrCat("{\"seq\":3}\n", M(Id(1), "user:a", "block", "active"), "\n",
                                  M(Id(2), "cidr:10.0.0.0/8", "challenge", "active"), "\n"));
    }
    if (line.rfind("GET /v1/changes", 0) == 0) {
      if (pages.empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        return Reply(200, absl::StrCat(R"({"changes":[],"next":)", last_next, "}"));
      }
      std::string p = pages.front();
      pages.erase(pages.begin());
      last_next = 6;
      return Reply(200, p);
    }
    return Reply(404, "{}");
  });
  auto client = Client::Start(
      {.url = absl::StrCat("http://127.0.0.1:", server.port()), .key = "k_test.secret"});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->WaitUntilSynced(absl::Seconds(10)).ok());
  ASSERT_TRUE((*client)->WaitForSeq(6, absl::Seconds(10)).ok());
  auto e = [](const char* s) { return *core::Entity::Parse(s); };
  EXPECT_EQ((*client)->Check(e("user:a")), core::Verdict::kAllow);  // deleted at 5
  EXPECT_EQ((*client)->Check(e("ip:10.1.2.3")), core::Verdict::kAllow);
  // exclude_royalties is an allow-verdict action of the payout surface.
  ASSERT_EQ((*client)->Lookup(e("user:c"), "payout").size(), 1u);
  EXPECT_EQ((*client)->Lookup(e("user:c"), "login").size(), 0u);
  EXPECT_EQ((*client)->DumpForTest(), std::vector<std::string>{absl::StrCat(
                                          Id(3), " user:c exclude_royalties 4102444800000000")});
  auto stats = (*client)->stats();
  EXPECT_EQ(stats.snapshots_loaded, 1);
  EXPECT_EQ(stats.changes_applied, 3);
  EXPECT_EQ(stats.stale_changes, 1);  // the repeated seq 5
  auto st = (*client)->staleness();
  EXPECT_TRUE(st.synced);
  EXPECT_GE(st.seq, 6);
  EXPECT_EQ(st.lag, 0);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen[1].rfind("GET /v1/changes?after=3&", 0), 0u) << seen[1];
}

TEST(ClientTest, ChecksCidrAndReconnectsAfterErrors) {
  std::atomic<int> snapshot_calls{0};
  FakeServer server([&](const std::string& line) -> std::string {
    if (line.rfind("GET /v1/snapshot", 0) == 0) {
      int n = snapshot_calls.fetch_add(1);
      if (n == 0) return "";  // connection dropped
      if (n == 1) return Reply(503, R"({"error":{"code":"unavailable"}})");
      return Reply(
          200, absl::StrCat("{\"seq\":1}\n", M(Id(7), "cidr:10.0.0.0/8", "block", "active"), "\n"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Reply(200, R"({"changes":[],"next":1})");
  });
  auto client = Client::Start({.url = absl::StrCat("http://127.0.0.1:", server.port()),
                               .key = "k",
                               .min_backoff = absl::Milliseconds(5),
                               .max_backoff = absl::Milliseconds(20)});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitUntilSynced(absl::Seconds(10)).ok());
  EXPECT_EQ(*(*client)->Check("ip:10.9.8.7"), core::Verdict::kDeny);
  EXPECT_EQ(*(*client)->Check("ip:11.0.0.1"), core::Verdict::kAllow);
  auto m = (*client)->Lookup(*core::Entity::Parse("ip:10.9.8.7"));
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].entity, "cidr:10.0.0.0/8");
  EXPECT_FALSE((*client)->Check("bad entity").ok());
  EXPECT_EQ((*client)->stats().reconnects, 2);
  EXPECT_EQ(snapshot_calls.load(), 3);
}

TEST(ClientTest, RejectsBadOptions) {
  EXPECT_FALSE(Client::Start({.url = "ftp://x:1", .key = "k"}).ok());
  EXPECT_FALSE(Client::Start({.url = "http://x:1", .key = ""}).ok());
  EXPECT_FALSE(Client::Start({.url = "http://x:1", .key = "k", .page = 0}).ok());
}

}  // namespace
}  // namespace quell::client
