// Drives quell::http::Server over real sockets on port 0 with a tiny blocking
// POSIX client. No timing assertions: timeouts are options, outcomes are checked.
#include "api/http/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::http {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

struct ClientResponse {
  bool ok = false;  // a complete response was read
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-cased names
  std::string body;
  bool chunked = false;
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking HTTP/1.1 client on one TCP connection. Reads have a generous
// socket timeout only so that a broken server fails the test instead of hanging it.
class Client {
 public:
  explicit Client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{30, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one response (status line, headers, body by Content-Length, chunked
  // encoding, or until EOF).
  ClientResponse Read(bool head = false) {
    ClientResponse r;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return r;
    }
    const std::string head_text = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    std::vector<std::string> lines = absl::StrSplit(head_text, "\r\n");
    std::vector<std::string> status_parts = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
    if (status_parts.size() < 2 || !absl::SimpleAtoi(status_parts[1], &r.status)) return r;
    for (size_t i = 1; i < lines.size(); ++i) {
      const size_t colon = lines[i].find(':');
      if (colon == std::string::npos) return r;
      r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    }
    if (r.status < 200 || head || r.status == 204 || r.status == 304) {
      r.ok = true;
      return r;
    }
    if (r.Header("transfer-encoding") == "chunked") {
      r.chunked = true;
      for (;;) {
        size_t eol;
        while ((eol = buf_.find("\r\n")) == std::string::npos) {
          if (!Fill()) return r;
        }
        size_t size = 0;
        if (!absl::SimpleHexAtoi(buf_.substr(0, eol), &size)) return r;
        buf_.erase(0, eol + 2);
        while (buf_.size() < size + 2) {
          if (!Fill()) return r;
        }
        r.body.append(buf_, 0, size);
        buf_.erase(0, size + 2);
        if (size == 0) break;
      }
    } else if (!r.Header("content-length").empty()) {
      size_t length = 0;
      if (!absl::SimpleAtoi(r.Header("content-length"), &length)) return r;
      while (buf_.size() < length) {
        if (!Fill()) return r;
      }
      r.body = buf_.substr(0, length);
      buf_.erase(0, length);
    } else {
      while (Fill()) {
      }
      r.body = std::move(buf_);
      buf_.clear();
    }
    r.ok = true;
    return r;
  }

  // True if the server closed the connection (EOF or reset) with no more data.
  bool ReadsEof() {
    if (!buf_.empty()) return false;
    char c;
    const ssize_t n = recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  bool Fill() {
    char tmp[16384];
    const ssize_t n = recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

// Answers inline with a text description of the request.
class EchoHandler : public Handler {
 public:
  void Handle(Request request, Responder respond) override {
    calls_.fetch_add(1);
    Response response;
    response.content_type = "text/plain";
    std::string& b = response.body;
    absl::StrAppend(&b, "method=", request.method, "\npath=", request.path, "\n");
    for (const auto& [k, v] : request.query) absl::StrAppend(&b, "q:", k, "=", v, "\n");
    absl::StrAppend(&b, "x-test=", std::string(request.Header("x-test")), "\n");
    absl::StrAppend(&b, "remote=", request.remote_address, "\n");
    absl::StrAppend(&b, "body=", request.body);
    response.headers.emplace_back("X-Echo", "1");
    response.headers.emplace_back("Bad\r\nHeader", "x");  // must be dropped
    std::move(respond)(std::move(response));
  }
  int calls() const { return calls_.load(); }

  // The refusals the server reported, as "status method request_id remote".
  void OnRefused(const Refusal& r) override {
    std::lock_guard lock(mu_);
    refusals_.push_back(absl::StrCat(r.status, " ", AV(r.method), " ", AV(r.request_id), " ",
                                     AV(r.remote_address), r.message.empty() ? "" : " +message"));
  }
  std::vector<std::string> refusals() {
    std::lock_guard lock(mu_);
    return refusals_;
  }

 private:
  std::atomic<int> calls_{0};
  std::mutex mu_;
  std::vector<std::string> refusals_;
};

ServerOptions TestOptions() {
  ServerOptions options;
  options.port = 0;
  options.threads = 2;
  return options;
}

std::string Get(const std::string& target, const std::string& extra = "") {
  return absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: t\r\n", extra, "\r\n");
}

TEST(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.connected());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client.Send(Get(absl::StrCat("/r", i), absl::StrCat("X-Test: ", i, "\r\n"))));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.Header("connection"), "keep-alive");
    EXPECT_EQ(r.Header("content-type"), "text/plain");
    EXPECT_EQ(r.Header("x-echo"), "1");
    EXPECT_EQ(r.Header("bad"), "");
    EXPECT_EQ(r.Header("content-length"), absl::StrCat(r.body.size()));
    EXPECT_THAT(r.body, HasSubstr(absl::StrCat("path=/r", i, "\n")));
    EXPECT_THAT(r.body, HasSubstr(absl::StrCat("x-test=", i, "\n")));
    EXPECT_THAT(r.body, HasSubstr("remote=127.0.0.1\n"));
  }
  EXPECT_EQ(handler.calls(), 5);
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  std::string batch;
  for (int i = 0; i < 10; ++i) absl::StrAppend(&batch, Get(absl::StrCat("/p", i)));
  absl::StrAppend(&batch, "POST /last HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
  ASSERT_TRUE(client.Send(batch));
  for (int i = 0; i < 10; ++i) {
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_THAT(r.body, HasSubstr(absl::StrCat("path=/p", i, "\n")));
  }
  ClientResponse last = client.Read();
  ASSERT_TRUE(last.ok);
  EXPECT_THAT(last.body, HasSubstr("method=POST\npath=/last\n"));
  EXPECT_THAT(last.body, HasSubstr("body=abc"));
}

TEST(HttpServerTest, DecodesPathAndQuery) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(
      Get("/v1/entities/cidr%3A10.0.0.0%2F8?entity=user%3A1&entity=ip%3A1.2.3.4&s=a+b%2Bc&flag")));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_THAT(r.body, HasSubstr("path=/v1/entities/cidr:10.0.0.0/8\n"
                                "q:entity=user:1\nq:entity=ip:1.2.3.4\nq:s=a b+c\nq:flag=\n"));
}

TEST(HttpServerTest, ReadsContentLengthAndChunkedBodies) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello"));
  ASSERT_TRUE(client.Send(" world"));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_THAT(r.body, HasSubstr("body=hello world"));
  ASSERT_TRUE(
      client.Send("POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nchunk\r\n3\r\ned!\r\n0\r\n\r\n"));
  r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_THAT(r.body, HasSubstr("body=chunked!"));
}

TEST(HttpServerTest, ExpectContinueGetsContinueThenResponse) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(
      "POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
  ClientResponse interim = client.Read();
  ASSERT_TRUE(interim.ok);
  EXPECT_EQ(interim.status, 100);
  ASSERT_TRUE(client.Send("data"));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.body, HasSubstr("body=data"));
}

TEST(HttpServerTest, HeadHasLengthButNoBodyAndHttp10Closes) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"));
  ClientResponse head = client.Read(/*head=*/true);
  ASSERT_TRUE(head.ok);
  EXPECT_EQ(head.status, 200);
  EXPECT_NE(head.Header("content-length"), "0");
  ASSERT_TRUE(client.Send("GET /after HTTP/1.0\r\n\r\n"));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_THAT(r.body, HasSubstr("path=/after\n"));  // the HEAD sent no body bytes
  EXPECT_EQ(r.Header("connection"), "close");
  EXPECT_TRUE(client.ReadsEof());
}

TEST(HttpServerTest, OversizedBodyGets413) {
  EchoHandler handler;
  ServerOptions options = TestOptions();
  options.max_body_bytes = 1000;
  auto server = Server::Start(options, &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  {
    Client client((*server)->port());
    ASSERT_TRUE(client.Send(
        "POST /big HTTP/1.1\r\nHost: t\r\nX-Request-Id: big-1\r\nContent-Length: 1001\r\n\r\n"));
    client.Send(std::string(1001, 'x'));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, 413);
    // Every reply carries a request id, this one too (the client's: its headers were read).
    EXPECT_EQ(r.Header("x-request-id"), "big-1");
    EXPECT_EQ(r.Header("content-type"), "application/json");
    EXPECT_EQ(r.Header("connection"), "close");
    EXPECT_THAT(r.body, HasSubstr(R"({"error":{"code":"too_large","message":")"));
    EXPECT_TRUE(client.ReadsEof());
  }
  {  // chunked bodies count too
    Client client((*server)->port());
    ASSERT_TRUE(client.Send("POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"));
    for (int i = 0; i < 3; ++i) client.Send(absl::StrCat("190\r\n", std::string(400, 'y'), "\r\n"));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, 413);
  }
  EXPECT_EQ(handler.calls(), 0);
  // Both reported to the application (its access log and metrics), with the reply's id.
  const std::vector<std::string> refusals = handler.refusals();
  ASSERT_EQ(refusals.size(), 2u);
  EXPECT_EQ(refusals[0], "413 POST big-1 127.0.0.1 +message");
  EXPECT_THAT(refusals[1], StartsWith("413 POST "));
}

TEST(HttpServerTest, HugeHeaderGets431) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(
      absl::StrCat("GET / HTTP/1.1\r\nHost: t\r\nX-Big: ", std::string(20000, 'h'), "\r\n\r\n")));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(r.Header("x-request-id").size(), 16u);  // a new one: the headers were not read
  EXPECT_THAT(r.body, HasSubstr(R"("code":"too_large")"));
  EXPECT_TRUE(client.ReadsEof());
  EXPECT_EQ(handler.calls(), 0);
  EXPECT_THAT(handler.refusals(),
              ElementsAre(AllOf(StartsWith("431 "), HasSubstr(r.Header("x-request-id")))));
}

TEST(HttpServerTest, GarbageGets400AndClose) {
  static constexpr char kTlsHello[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n";
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  for (std::string garbage :
       {std::string("NOT HTTP AT ALL\r\n\r\n"), std::string("GET / HTTP/9.9\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nContent-Length: zz\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"),
        // Request smuggling attempts.
        std::string("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        std::string("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "0\r\n\r\n"),
        // A coding other than chunked last: no framing the server can tell, so the body
        // would be read as the next request (RFC 9112 6.3: 400 and close).
        std::string("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
                    "GET /smuggled HTTP/1.1\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                    "GET /smuggled HTTP/1.1\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n"
                    "GET /smuggled HTTP/1.1\r\n\r\n"),
        std::string(kTlsHello, sizeof(kTlsHello) - 1)}) {
    Client client((*server)->port());
    ASSERT_TRUE(client.Send(garbage));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok) << garbage;
    EXPECT_EQ(r.status, 400) << garbage;
    EXPECT_THAT(r.body, HasSubstr(R"("code":"invalid_argument")"));
    EXPECT_TRUE(client.ReadsEof());
  }
  // The server still serves well-formed requests.
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(Get("/ok")));
  EXPECT_EQ(client.Read().status, 200);
  EXPECT_EQ(handler.calls(), 1);
}

TEST(HttpServerTest, SlowlorisGetsTimedOut) {
  EchoHandler handler;
  ServerOptions options = TestOptions();
  options.read_timeout = absl::Milliseconds(200);
  auto server = Server::Start(options, &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send("GET /slow HTTP/1.1\r\nHost: t\r\n"));  // never finished
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 408);
  EXPECT_EQ(r.Header("connection"), "close");
  EXPECT_TRUE(client.ReadsEof());
  EXPECT_EQ(handler.calls(), 0);
}

TEST(HttpServerTest, IdleKeepAliveConnectionIsClosed) {
  EchoHandler handler;
  ServerOptions options = TestOptions();
  options.idle_timeout = absl::Milliseconds(200);
  auto server = Server::Start(options, &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(Get("/once")));
  ASSERT_EQ(client.Read().status, 200);
  EXPECT_TRUE(client.ReadsEof());  // no response, just closed
}

// Queues requests; a worker thread answers them.
class AsyncHandler : public Handler {
 public:
  ~AsyncHandler() override { Stop(); }
  void Handle(Request request, Responder respond) override {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(std::move(request), std::move(respond));
    ++received_;
    cv_.notify_all();
  }
  void WaitReceived(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return received_ >= n; });
  }
  // Starts the worker; `answer` runs on it for each request.
  void StartWorker(std::function<void(Request, Responder)> answer) {
    worker_ = std::thread([this, answer = std::move(answer)] {
      for (;;) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        auto item = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        answer(std::move(item.first), std::move(item.second));
      }
    });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (worker_.joinable()) worker_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Request, Responder>> queue_;
  bool stop_ = false;
  int received_ = 0;
  std::thread worker_;
};

TEST(HttpServerTest, RespondsFromAnotherThread) {
  AsyncHandler handler;
  handler.StartWorker([](Request request, Responder respond) {
    Response response;
    response.status = request.path == "/missing" ? 404 : 201;
    response.body = absl::StrCat(R"({"path":")", request.path, R"("})");
    std::move(respond)(std::move(response));
    std::move(respond)(Response());  // a second call is a no-op
  });
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  for (const char* path : {"/one", "/missing", "/two"}) {
    ASSERT_TRUE(client.Send(Get(path)));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.status, std::string(path) == "/missing" ? 404 : 201);
    EXPECT_EQ(r.body, absl::StrCat(R"({"path":")", path, R"("})"));
  }
  (*server)->Shutdown();
  handler.Stop();
}

// A burst answered at once from one foreign thread (as the ledger's finisher thread answers
// a group commit): every connection gets its own response, none lost or crossed.
TEST(HttpServerTest, BurstOfResponsesFromAnotherThreadReachesEachClient) {
  AsyncHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  constexpr int kClients = 24;
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<Client>((*server)->port()));
    ASSERT_TRUE(clients.back()->Send(Get(absl::StrCat("/c", i))));
  }
  handler.WaitReceived(kClients);
  handler.StartWorker([](Request request, Responder respond) {
    Response response;
    response.status = 200;
    response.body = request.path;
    std::move(respond)(std::move(response));
  });
  for (int i = 0; i < kClients; ++i) {
    ClientResponse r = clients[i]->Read();
    ASSERT_TRUE(r.ok) << i;
    EXPECT_EQ(r.body, absl::StrCat("/c", i));
  }
  (*server)->Shutdown();
  handler.Stop();
}

TEST(HttpServerTest, DroppedResponderAnswers500) {
  AsyncHandler handler;
  handler.StartWorker([](Request, Responder) {});  // drops it
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(Get("/dropped")));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 500);
  EXPECT_THAT(r.body, HasSubstr(R"("code":"internal")"));
  ASSERT_TRUE(client.Send(Get("/again")));  // the connection is still usable
  EXPECT_EQ(client.Read().status, 500);
  (*server)->Shutdown();
  handler.Stop();
}

class StreamHandler : public Handler {
 public:
  void Handle(Request request, Responder respond) override {
    Response response;
    response.content_type = "application/x-ndjson";
    auto next = std::make_shared<int>(0);
    const int parts = request.path == "/many" ? 5000 : 5;
    response.stream = [next, parts](std::string* chunk) {
      absl::StrAppend(chunk, R"({"part":)", *next, "}\n");
      return ++*next < parts;
    };
    std::move(respond)(std::move(response));
  }
};

std::string ExpectedStream(int parts) {
  std::string out;
  for (int i = 0; i < parts; ++i) absl::StrAppend(&out, R"({"part":)", i, "}\n");
  return out;
}

TEST(HttpServerTest, StreamsChunkedResponses) {
  StreamHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  for (const char* path : {"/few", "/many", "/few"}) {
    ASSERT_TRUE(client.Send(Get(path)));
    ClientResponse r = client.Read();
    ASSERT_TRUE(r.ok);
    EXPECT_TRUE(r.chunked);
    EXPECT_EQ(r.Header("content-length"), "");
    EXPECT_EQ(r.Header("content-type"), "application/x-ndjson");
    EXPECT_EQ(r.body, ExpectedStream(std::string(path) == "/many" ? 5000 : 5));
  }
  // HTTP/1.0 gets the raw body, ended by the close.
  ASSERT_TRUE(client.Send("GET /few HTTP/1.0\r\n\r\n"));
  ClientResponse r = client.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_FALSE(r.chunked);
  EXPECT_EQ(r.body, ExpectedStream(5));
}

// Answers each request from a detached delay thread after `delay`.
class SlowHandler : public Handler {
 public:
  void Handle(Request request, Responder respond) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++started_;
      cv_.notify_all();
    }
    threads_.emplace_back([respond = std::move(respond)]() mutable {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      Response response;
      response.body = R"({"slow":true})";
      std::move(respond)(std::move(response));
    });
  }
  void WaitStarted(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return started_ >= n; });
  }
  void Join() {
    for (auto& t : threads_) t.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int started_ = 0;
  std::vector<std::thread> threads_;  // touched by IO threads only under test control
};

TEST(HttpServerTest, GracefulShutdownFinishesInFlightAndRefusesNew) {
  SlowHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  Client idle(port);  // an idle keep-alive connection
  ASSERT_TRUE(idle.connected());
  Client busy(port);
  ASSERT_TRUE(busy.Send(Get("/slow")));
  handler.WaitStarted(1);
  (*server)->Shutdown();  // returns after the in-flight request is answered
  ClientResponse r = busy.Read();
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"slow":true})");
  EXPECT_EQ(r.Header("connection"), "close");
  EXPECT_TRUE(busy.ReadsEof());
  EXPECT_TRUE(idle.ReadsEof());
  Client late(port);
  EXPECT_FALSE(late.connected());
  (*server)->Shutdown();  // idempotent
  handler.Join();
}

TEST(HttpServerTest, ShutdownWithStuckHandlerGivesUpAfterGrace) {
  AsyncHandler handler;  // no worker: nobody answers until after shutdown
  ServerOptions options = TestOptions();
  options.shutdown_grace = absl::Milliseconds(100);
  auto server = Server::Start(options, &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  Client client((*server)->port());
  ASSERT_TRUE(client.Send(Get("/stuck")));
  handler.WaitReceived(1);
  (*server)->Shutdown();
  EXPECT_TRUE(client.ReadsEof());
  server->reset();  // destroys the server while a Responder is still held
  handler.StartWorker([](Request, Responder respond) { std::move(respond)(Response()); });
  handler.Stop();  // answers after the server is gone: harmless
}

TEST(HttpServerTest, ManyConcurrentKeepAliveClients) {
  EchoHandler handler;
  auto server = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Client client(port);
      for (int i = 0; i < 200; ++i) {
        if (!client.Send(Get(absl::StrCat("/c", t, "/", i)))) return;
        ClientResponse r = client.Read();
        if (r.ok && r.status == 200 &&
            r.body.find(absl::StrCat("path=/c", t, "/", i, "\n")) != std::string::npos) {
          good.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 8 * 200);
}

TEST(HttpServerTest, PortInUseIsUnavailable) {
  EchoHandler handler;
  auto first = Server::Start(TestOptions(), &handler);
  ASSERT_TRUE(first.ok()) << first.status();
  ServerOptions options = TestOptions();
  options.port = (*first)->port();
  auto second = Server::Start(options, &handler);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST(HttpServerTest, RejectsBadOptions) {
  EchoHandler handler;
  ServerOptions options = TestOptions();
  options.port = 70000;
  EXPECT_EQ(Server::Start(options, &handler).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Server::Start(TestOptions(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = TestOptions();
  options.host = "no such host.invalid";
  EXPECT_EQ(Server::Start(options, &handler).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quell::http
