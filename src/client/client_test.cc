// Client against a fake HTTP server (canned snapshot and feed), and the feed parsers.
#include "client/client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
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
  // An escape, a revoked state, trailing bytes: not the fast shape; the JSON path decides
  // (and decodes the escape). A zone offset is read by either path, to the same time.
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:b\\u0030"), &fast));
  auto escaped = ParseSnapshotLine(line("user:b\\u0030"));
  ASSERT_TRUE(escaped.ok()) << escaped.status();
  EXPECT_EQ(escaped->entity.str(), "user:b0");
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:a", "revoked"), &fast));
  EXPECT_FALSE(ParseSnapshotLine(line("user:a", "revoked")).ok());
  ASSERT_TRUE(
      internal::ParseEnforcementLine(line("user:a", "active", "2100-01-01T01:00:00+01:00"), &fast));
  auto zoned = ParseSnapshotLine(line("user:a", "active", "2100-01-01T01:00:00+01:00"));
  ASSERT_TRUE(zoned.ok()) << zoned.status();
  EXPECT_EQ(zoned->expires_us,
            core::ToMicros(absl::FromCivil(absl::CivilSecond(2100, 1, 1), absl::UTCTimeZone())));
  EXPECT_EQ(fast.expires_us, zoned->expires_us);
  EXPECT_FALSE(internal::ParseEnforcementLine(line("user:a") + " ", &fast));
  EXPECT_FALSE(internal::ParseEnforcementLine(line("nocolon"), &fast));
  EXPECT_FALSE(ParseSnapshotLine(line("nocolon")).ok());
}

// The scanner reads 16 bytes at a time: an escape or a control character anywhere in a
// long value, on either side of a 16-byte boundary, still sends the line to the JSON path.
TEST(FeedTest, FastPathSeesEscapesAndControlsAtEveryPosition) {
  auto line = [](const std::string& entity) {
    return absl::StrCat(
        R"({"id":")", Id(5), R"(","entity":")", entity,
        R"(","action":"block","state":"active","expires_at":"2100-01-01T00:00:00Z"})");
  };
  internal::FeedItem item;
  for (size_t at = 0; at < 40; ++at) {
    std::string id(40, 'x');
    ASSERT_TRUE(internal::ParseEnforcementLine(line("user:" + id), &item)) << at;
    EXPECT_EQ(item.entity.str(), "user:" + id);
    std::string escaped = id;
    escaped.replace(at, 1, "\\u0079");  // y
    EXPECT_FALSE(internal::ParseEnforcementLine(line("user:" + escaped), &item)) << at;
    auto slow = ParseSnapshotLine(line("user:" + escaped));
    ASSERT_TRUE(slow.ok()) << at << " " << slow.status();
    std::string want = id;
    want[at] = 'y';
    EXPECT_EQ(slow->entity.str(), "user:" + want);
    std::string control = id;
    control[at] = '\x01';
    EXPECT_FALSE(internal::ParseEnforcementLine(line("user:" + control), &item)) << at;
    EXPECT_FALSE(ParseSnapshotLine(line("user:" + control)).ok()) << at;
    std::string quote = id;
    quote[at] = '"';  // ends the string early: not the shape
    EXPECT_FALSE(internal::ParseEnforcementLine(line("user:" + quote), &item)) << at;
  }
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
  // Replies go out in pieces of this many bytes with `piece_delay` between them (0: at once).
  void SlowReplies(size_t piece_bytes, std::chrono::microseconds piece_delay) {
    piece_bytes_ = piece_bytes;
    piece_delay_ = piece_delay;
  }

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
      const size_t piece = piece_bytes_ > 0 ? piece_bytes_.load() : reply.size();
      for (size_t at = 0; at < reply.size(); at += piece) {
        if (at > 0) std::this_thread::sleep_for(piece_delay_.load());
        ::send(c, reply.data() + at, std::min(piece, reply.size() - at), MSG_NOSIGNAL);
      }
    }
    ::close(c);
  }
  Handler handler_;
  std::atomic<size_t> piece_bytes_{0};
  std::atomic<std::chrono::microseconds> piece_delay_{std::chrono::microseconds(0)};
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

// A snapshot of thousands of lines (entities of every kind, several actions, lines the
// fast path declines) goes through the bulk load; the feed then deletes, updates and adds,
// starting right after the snapshot's seq. The mirror ends as a model of the same changes.
TEST(ClientTest, BulkLoadsALargeSnapshotThenFollowsTheFeed) {
  constexpr int kLines = 6000;
  constexpr int64_t kSnapshotSeq = 9000;
  const std::vector<std::string> actions = {"block", "challenge", "exclude_royalties"};
  std::map<std::string, std::string> model;  // id -> "entity action expires_us"
  const std::string expires = "2100-01-01T00:00:00Z";
  const int64_t expires_us = core::ToMicros(*core::ParseRfc3339(expires));
  auto entity_of = [](int i) -> std::string {
    switch (i % 5) {
      case 0:
        return absl::StrCat("ip:10.", (i / 256) % 256, ".", i % 256, ".1");
      case 1:
        return absl::StrCat("cidr:10.", i % 200, ".", i % 7, ".0/24");
      case 2:
        return absl::StrCat("ip:2001:db8::", absl::Hex(i));
      default:
        return absl::StrCat("user:u", i % 4000);  // some users hold several
    }
  };
  std::string snapshot = absl::StrCat("{\"seq\":", kSnapshotSeq, "}\n");
  for (int i = 0; i < kLines; ++i) {
    const std::string entity = entity_of(i);
    const std::string& action = actions[i % actions.size()];
    // Every 50th line in the full view's shape (extra fields): the JSON path.
    if (i % 50 == 0) {
      absl::StrAppend(&snapshot, M(Id(i), entity, action, "active", expires), "\n");
    } else {
      absl::StrAppend(&snapshot, R"({"id":")", Id(i), R"(","entity":")", entity, R"(","action":")",
                      action, R"(","state":"active","expires_at":")", expires, "\"}\n");
    }
    model[Id(i)] = absl::StrCat(core::Entity::Parse(entity)->str(), " ", action, " ", expires_us);
  }
  // The feed: delete every 7th, re-action every 11th, add 100 new.
  std::string changes = "{\"changes\":[";
  int64_t seq = kSnapshotSeq;
  auto change = [&](int i, const std::string& op, const std::string& action) {
    if (seq > kSnapshotSeq) changes += ",";
    ++seq;
    absl::StrAppend(&changes, R"({"seq":)", seq, R"(,"op":")", op, R"(","mitigation":)",
                    M(Id(i), entity_of(i), action, op == "upsert" ? "active" : "revoked", expires),
                    "}");
    if (op == "upsert") {
      model[Id(i)] =
          absl::StrCat(core::Entity::Parse(entity_of(i))->str(), " ", action, " ", expires_us);
    } else {
      model.erase(Id(i));
    }
  };
  for (int i = 0; i < kLines; i += 7) change(i, "delete", "block");
  for (int i = 1; i < kLines; i += 11) change(i, "upsert", "throttle");
  for (int i = kLines; i < kLines + 100; ++i) change(i, "upsert", "block");
  absl::StrAppend(&changes, "],\"next\":", seq, "}");
  const int64_t last_seq = seq;

  std::mutex mu;
  std::vector<std::string> seen;
  bool served_changes = false;
  FakeServer server([&](const std::string& line) -> std::string {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(line);
    if (line.rfind("GET /v1/snapshot", 0) == 0) return Reply(200, snapshot);
    if (line.rfind(absl::StrCat("GET /v1/changes?after=", kSnapshotSeq, "&"), 0) == 0 &&
        !served_changes) {
      served_changes = true;
      return Reply(200, changes);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Reply(200, absl::StrCat(R"({"changes":[],"next":)", last_seq, "}"));
  });
  auto client = Client::Start(
      {.url = absl::StrCat("http://127.0.0.1:", server.port()), .key = "k_test.secret"});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->WaitForSeq(last_seq, absl::Seconds(20)).ok());
  std::vector<std::string> want;
  for (const auto& [id, rest] : model) want.push_back(absl::StrCat(id, " ", rest));
  EXPECT_EQ((*client)->DumpForTest(), want);
  EXPECT_EQ((*client)->stats().size, static_cast<int64_t>(model.size()));
  EXPECT_EQ((*client)->stats().snapshots_loaded, 1);
  EXPECT_EQ((*client)->stats().stale_changes, 0);
  // Verdicts from the mirror: a blocked user, a removed one, an address under a network.
  EXPECT_EQ(*(*client)->Check("user:u3"), core::Verdict::kDeny);  // line 3: block
  EXPECT_EQ(*(*client)->Check(entity_of(kLines + 3)), core::Verdict::kDeny);
  EXPECT_EQ(*(*client)->Check("ip:10.0.0.1"), core::Verdict::kAllow);     // line 0, deleted
  auto covered = (*client)->Lookup(*core::Entity::Parse("ip:10.6.6.9"));  // cidr:10.6.6.0/24
  ASSERT_FALSE(covered.empty());
  EXPECT_EQ(covered[0].entity, "cidr:10.6.6.0/24");
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen[1].rfind(absl::StrCat("GET /v1/changes?after=", kSnapshotSeq, "&"), 0), 0u)
      << seen[1];
}

// Checks run on other threads while a snapshot streams in slowly and is applied: they
// answer (allow until the mitigation is loaded, its verdict after), never anything else.
TEST(ClientTest, ChecksAreAnsweredDuringALoad) {
  constexpr int kLines = 3000;
  std::string snapshot = "{\"seq\":5}\n";
  for (int i = 0; i < kLines; ++i) {
    absl::StrAppend(
        &snapshot, R"({"id":")", Id(i), R"(","entity":"user:c)", i,
        R"(","action":"challenge","state":"active","expires_at":"2100-01-01T00:00:00Z"})", "\n");
  }
  FakeServer server([&](const std::string& line) -> std::string {
    if (line.rfind("GET /v1/snapshot", 0) == 0) return Chunked(snapshot);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Reply(200, R"({"changes":[],"next":5})");
  });
  server.SlowReplies(4096, std::chrono::microseconds(300));
  auto client =
      Client::Start({.url = absl::StrCat("http://127.0.0.1:", server.port()), .key = "k"});
  ASSERT_TRUE(client.ok());
  std::atomic<bool> stop{false};
  std::atomic<int64_t> wrong{0}, checks{0}, challenged{0};
  std::vector<std::thread> checkers;
  for (int t = 0; t < 2; ++t) {
    checkers.emplace_back([&, t] {
      std::vector<core::Entity> entities;
      for (int i = t; i < kLines; i += 97) {
        entities.push_back(*core::Entity::Parse(absl::StrCat("user:c", i)));
      }
      const core::Entity other = *core::Entity::Parse("user:other");
      while (!stop.load()) {
        for (const core::Entity& e : entities) {
          const core::Verdict v = (*client)->Check(e);
          if (v != core::Verdict::kAllow && v != core::Verdict::kChallenge) wrong.fetch_add(1);
          if (v == core::Verdict::kChallenge) challenged.fetch_add(1);
          if ((*client)->Check(other) != core::Verdict::kAllow) wrong.fetch_add(1);
          checks.fetch_add(1);
        }
      }
    });
  }
  const absl::Status synced = (*client)->WaitUntilSynced(absl::Seconds(30));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop.store(true);
  for (auto& t : checkers) t.join();
  ASSERT_TRUE(synced.ok()) << synced;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(checks.load(), 0);
  EXPECT_GT(challenged.load(), 0);
  for (int i = 0; i < kLines; i += 13) {
    EXPECT_EQ(*(*client)->Check(absl::StrCat("user:c", i)), core::Verdict::kChallenge) << i;
  }
  EXPECT_EQ((*client)->stats().size, kLines);
}

// A load that fails half-applied (an entity over the index's 65535 mitigations) is
// retried; the retry removes what the new snapshot lacks.
TEST(ClientTest, ARetriedLoadRemovesWhatTheNewSnapshotLacks) {
  auto big_id = [](int i) {
    std::string n = absl::StrCat(i);
    return "m_01HZZZZZZZZZZZZZZZ" + std::string(8 - n.size(), '0') + n;
  };
  std::string bad = "{\"seq\":2}\n";
  for (int i = 0; i < 65536; ++i) {
    absl::StrAppend(&bad, R"({"id":")", big_id(i), R"(","entity":"user:hot","action":"block",)",
                    R"("state":"active","expires_at":"2100-01-01T00:00:00Z"})", "\n");
  }
  const std::string good =
      absl::StrCat("{\"seq\":3}\n", M(big_id(1), "user:hot", "block", "active"), "\n",
                   M(Id(7), "user:y", "challenge", "active"), "\n");
  std::atomic<int> snapshots{0};
  FakeServer server([&](const std::string& line) -> std::string {
    if (line.rfind("GET /v1/snapshot", 0) == 0) {
      return Reply(200, snapshots.fetch_add(1) == 0 ? bad : good);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Reply(200, R"({"changes":[],"next":3})");
  });
  auto client = Client::Start({.url = absl::StrCat("http://127.0.0.1:", server.port()),
                               .key = "k",
                               .min_backoff = absl::Milliseconds(5),
                               .max_backoff = absl::Milliseconds(20)});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitUntilSynced(absl::Seconds(30)).ok());
  EXPECT_EQ(snapshots.load(), 2);
  EXPECT_EQ((*client)->stats().reconnects, 1);
  EXPECT_EQ((*client)->DumpForTest(),
            (std::vector<std::string>{absl::StrCat(big_id(1), " user:hot block 4102444800000000"),
                                      absl::StrCat(Id(7), " user:y challenge 4102444800000000")}));
  EXPECT_EQ((*client)->stats().size, 2);
  EXPECT_EQ(*(*client)->Check("user:hot"), core::Verdict::kDeny);
}

// The server's ledger is behind the mirror (restored from an older backup): the feed
// answers 409 cursor_ahead, and the mirror reloads the snapshot instead of waiting for the
// seqs it already has, which would skip every change up to them. What the older ledger
// lacks goes.
TEST(ClientTest, ACursorAheadOfTheServerReloadsTheSnapshot) {
  std::mutex mu;
  std::vector<std::string> seen;
  int snapshots = 0;
  FakeServer server([&](const std::string& line) -> std::string {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(line);
    if (line.rfind("GET /v1/snapshot", 0) == 0) {
      if (snapshots++ == 0) {
        return Reply(200, absl::StrCat("{\"seq\":9}\n", M(Id(1), "user:a", "block", "active"), "\n",
                                       M(Id(2), "user:b", "block", "active"), "\n"));
      }
      return Reply(200, absl::StrCat("{\"seq\":2}\n", M(Id(2), "user:b", "block", "active"), "\n"));
    }
    if (snapshots == 1) {
      return Reply(409, R"({"error":{"code":"cursor_ahead","message":"after=9 is past"}})");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Reply(200, R"({"changes":[],"next":2})");
  });
  auto client = Client::Start(
      {.url = absl::StrCat("http://127.0.0.1:", server.port()), .key = "k_test.secret"});
  ASSERT_TRUE(client.ok()) << client.status();
  // Bounded wait for the second load (not a timing assertion: the test fails only if it
  // never comes).
  for (int i = 0; i < 500 && (*client)->stats().snapshots_loaded < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ((*client)->stats().snapshots_loaded, 2);
  ASSERT_TRUE((*client)->WaitUntilSynced(absl::Seconds(10)).ok());
  EXPECT_EQ((*client)->DumpForTest(),
            std::vector<std::string>{absl::StrCat(Id(2), " user:b block 4102444800000000")});
  EXPECT_EQ(*(*client)->Check("user:a"), core::Verdict::kAllow);
  // The server's head is now 2, not the 9 the older ledger had: no lag (it stayed 7).
  EXPECT_EQ((*client)->staleness().server_seq, 2);
  EXPECT_EQ((*client)->staleness().lag, 0);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen[1].rfind("GET /v1/changes?after=9&", 0), 0u) << seen[1];
  EXPECT_EQ(seen[2].rfind("GET /v1/snapshot", 0), 0u) << seen[2];
}

TEST(ClientTest, RejectsBadOptions) {
  EXPECT_FALSE(Client::Start({.url = "ftp://x:1", .key = "k"}).ok());
  EXPECT_FALSE(Client::Start({.url = "http://x:1", .key = ""}).ok());
  EXPECT_FALSE(Client::Start({.url = "http://x:1", .key = "k", .page = 0}).ok());
}

}  // namespace
}  // namespace quell::client
