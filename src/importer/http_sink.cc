// HttpSink: batches to POST /v1/detections, one keep-alive connection per worker thread,
// so `connections` batches are in flight. Overload (429/503) and connection errors —
// a server restarting mid-import — are retried with backoff for `retry_for`: batches
// are idempotent per (source, id), so a batch that was applied but not answered is
// simply reported as duplicates the second time.
#include <condition_variable>
#include <deque>
#include <iterator>
#include <mutex>
#include <span>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/strings.h"
#include "core/threads.h"
#include "http_client/http_client.h"
#include "importer/reader.h"
#include "importer/sink.h"
#include "rapidjson/document.h"

namespace quell::importer {
namespace {

using http_client::HttpConnection;
using http_client::HttpResponse;

struct Job {
  std::vector<std::string> rows;
  std::function<void(BatchResult)> done;
};

// The item's field errors as a direct import words them ("score: must be ...; entity:
// ..."), or its message when it has none.
std::string ErrorMessage(const rapidjson::Value& item) {
  auto e = item.FindMember("error");
  if (e == item.MemberEnd() || !e->value.IsObject()) return "rejected by the server";
  std::string out;
  // Each distinct one once: a request refused for its rows' source names it per row.
  absl::flat_hash_set<std::string> seen;
  if (auto ds = e->value.FindMember("details"); ds != e->value.MemberEnd() && ds->value.IsArray()) {
    for (const rapidjson::Value& d : ds->value.GetArray()) {
      if (!d.IsObject()) continue;
      auto f = d.FindMember("field");
      auto m = d.FindMember("message");
      if (f == d.MemberEnd() || m == d.MemberEnd() || !f->value.IsString() ||
          !m->value.IsString()) {
        continue;
      }
      std::string one = absl::StrCat(f->value.GetString(), ": ", m->value.GetString());
      if (!seen.insert(one).second) continue;
      absl::StrAppend(&out, out.empty() ? "" : "; ", one);
    }
  }
  if (!out.empty()) return out;
  auto m = e->value.FindMember("message");
  if (m != e->value.MemberEnd() && m->value.IsString()) return m->value.GetString();
  return "rejected by the server";
}

// {"results": [...]} -> one ItemResult per detection.
absl::StatusOr<std::vector<ItemResult>> ParseResults(const std::string& body, size_t expected,
                                                     std::span<const std::string> rows) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject())
    return absl::DataLossError("malformed reply from the server");
  auto results = doc.FindMember("results");
  if (results == doc.MemberEnd() || !results->value.IsArray() ||
      results->value.Size() != expected) {
    return absl::DataLossError("the server's reply does not carry one result per detection");
  }
  std::vector<ItemResult> items(expected);
  for (rapidjson::SizeType i = 0; i < results->value.Size(); ++i) {
    const rapidjson::Value& r = results->value[i];
    ItemResult& it = items[i];
    std::string status;
    if (auto s = r.FindMember("status"); s != r.MemberEnd() && s->value.IsString())
      status = s->value.GetString();
    if (status == "duplicate") {
      it.status = ItemResult::Status::kDuplicate;
    } else if (status == "accepted") {
      it.status = ItemResult::Status::kAccepted;
      auto ds = r.FindMember("decisions");
      if (ds != r.MemberEnd() && ds->value.IsArray()) {
        for (const rapidjson::Value& d : ds->value.GetArray()) {
          auto st = d.FindMember("state");
          if (st != d.MemberEnd() && st->value.IsString())
            it.states.emplace_back(st->value.GetString());
        }
      }
    } else {
      it.status = ItemResult::Status::kRejected;
      it.error = ErrorMessage(r);
      it.row = rows[i].substr(0, kMaxRejectText);
    }
  }
  return items;
}

// Overload or a server (re)starting: worth asking again after a pause.
bool Retryable(int status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

// The "index" of the first detail of an error reply that has one, if it is below `rows`;
// else -1.
int64_t RefusedRow(const std::string& body, size_t rows) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) return -1;
  auto e = doc.FindMember("error");
  if (e == doc.MemberEnd() || !e->value.IsObject()) return -1;
  auto ds = e->value.FindMember("details");
  if (ds == e->value.MemberEnd() || !ds->value.IsArray()) return -1;
  for (const rapidjson::Value& d : ds->value.GetArray()) {
    if (!d.IsObject()) continue;
    auto i = d.FindMember("index");
    if (i != d.MemberEnd() && i->value.IsUint64() && i->value.GetUint64() < rows) {
      return static_cast<int64_t>(i->value.GetUint64());
    }
  }
  return -1;
}

std::string ReplyError(const HttpResponse& r) {
  rapidjson::Document doc;
  doc.Parse(r.body.data(), r.body.size());
  if (!doc.HasParseError() && doc.IsObject()) {
    std::string m = ErrorMessage(doc);
    if (m != "rejected by the server") return absl::StrCat("HTTP ", r.status, ": ", m);
  }
  return absl::StrCat("HTTP ", r.status, ": ", r.body.substr(0, 200));
}

class HttpSink final : public Sink {
 public:
  HttpSink(const HttpSinkOptions& options, http_client::Url url)
      : options_(options),
        url_(std::move(url)),
        target_(options.batch.empty() ? std::string("/v1/detections")
                                      : absl::StrCat("/v1/detections?batch=",
                                                     http_client::PercentEncode(options.batch))) {}

  ~HttpSink() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  absl::Status Start() {
    // One request up front, so that a wrong address, a wrong key or a server that does
    // not take NDJSON bodies fails before any row is read. Two empty objects: a server
    // that reads the body as NDJSON rejects both items (400, one result each) and writes
    // nothing; one that reads it as a single JSON document (before NDJSON bodies and
    // ?batch=) fails to parse it, so it could never import a batch without its id.
    // An overloaded or starting server is asked again, as a batch would be.
    HttpConnection probe(url_, options_.stop);
    auto r = PostRetrying(probe, "{}\n{}\n", "a request", /*retry_unreachable=*/false);
    if (!r.ok()) return r.status();
    if (r->status == 401 || r->status == 403) {
      return absl::PermissionDeniedError(
          absl::StrCat("the server refused the key: ", ReplyError(*r)));
    }
    const std::string probe_rows[] = {"{}", "{}"};
    if (r->status != 400 || !ParseResults(r->body, 2, probe_rows).ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the server at ", options_.url,
          " does not take NDJSON detection batches (a quell older than this client?): ",
          ReplyError(*r), "; upgrade it, or import with the quell version it runs"));
    }
    for (int i = 0; i < std::max(1, options_.connections); ++i) {
      workers_.emplace_back([this, i] {
        core::NameThisThread("import-send-", i);
        Work();
      });
    }
    return absl::OkStatus();
  }

  bool TakesJson() const override { return true; }

  void Send(Rows rows, std::function<void(BatchResult)> done) override {
    if (!rows.detections.empty()) {  // TakesJson(): the importer encodes decoded rows
      BatchResult r;
      r.status = absl::InternalError("the server sink takes JSON rows, not decoded ones");
      return done(std::move(r));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(Job{std::move(rows.json), std::move(done)});
    }
    cv_.notify_one();
  }

  std::string Describe() const override { return absl::StrCat("server ", options_.url); }

 private:
  std::vector<std::pair<std::string, std::string>> AuthHeaders() const {
    return {{"Authorization", absl::StrCat("Bearer ", options_.key)},
            {"Content-Type", "application/x-ndjson"}};
  }

  void Work() {
    HttpConnection conn(url_, options_.stop);
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job.done(Post(conn, job.rows));
    }
  }

  // The rows as an NDJSON body: the server reads each line as one detection. A server
  // that takes smaller bodies (http.max_body_bytes; 413) gets the rows in halves, in
  // order, on this connection; a single row over its limit is rejected and the import
  // goes on. A half that fails after the first was stored fails the batch: on --resume
  // the stored rows come back duplicate.
  BatchResult Post(HttpConnection& conn, std::span<const std::string> rows) {
    size_t bytes = 0;
    for (const std::string& row : rows) bytes += row.size() + 1;
    std::string body;
    body.reserve(bytes);
    for (const std::string& row : rows) {
      body += row;
      body += '\n';
    }
    BatchResult result;
    auto r = PostRetrying(conn, body, "a batch", /*retry_unreachable=*/true);
    if (!r.ok()) {
      result.status = r.status();
    } else if (r->status == 200 ||
               (r->status == 400 && r->body.find("\"results\"") != std::string::npos)) {
      auto items = ParseResults(r->body, rows.size(), rows);
      if (!items.ok()) {
        result.status = items.status();
      } else {
        result.items = *std::move(items);
      }
    } else if (r->status == 413 && rows.size() > 1) {
      result = Post(conn, rows.first(rows.size() / 2));
      if (!result.status.ok()) return result;
      BatchResult second = Post(conn, rows.subspan(rows.size() / 2));
      if (!second.status.ok()) {
        if (second.refused_row >= 0) second.refused_row += static_cast<int64_t>(rows.size() / 2);
        return second;
      }
      std::move(second.items.begin(), second.items.end(), std::back_inserter(result.items));
    } else if (r->status == 413) {
      ItemResult& item = result.items.emplace_back();
      item.status = ItemResult::Status::kRejected;
      item.error = absl::StrCat("the server does not take a row this long: ", ReplyError(*r));
      item.row = rows[0].substr(0, kMaxRejectText);
    } else {
      result.status = absl::FailedPreconditionError(
          absl::StrCat("the server refused a batch: ", ReplyError(*r)));
      // A 403 names the row whose source the key may not submit (its index).
      if (r->status == 403) result.refused_row = RefusedRow(r->body, rows.size());
    }
    return result;
  }

  // POSTs the NDJSON `body` to target_ until the reply is not one worth asking again
  // (429, 502-504, or with `retry_unreachable` a connection error), backing off, for at
  // most --retry-for: then kUnavailable, saying the server did not take `what`.
  absl::StatusOr<HttpResponse> PostRetrying(HttpConnection& conn, std::string_view body,
                                            std::string_view what, bool retry_unreachable) {
    const absl::Time give_up = absl::Now() + options_.retry_for;
    // A server that took the request and never answers holds it 5 minutes (a durable
    // commit of a big batch on a busy server takes a while), or --retry-for if longer; once
    // the stop flag is set, the connection gives it HttpConnection::kCancelGrace more.
    const absl::Duration timeout = std::max(options_.retry_for, HttpConnection::kDefaultTimeout);
    for (absl::Duration backoff = absl::Milliseconds(100);;
         backoff = std::min(backoff * 2, absl::Seconds(2))) {
      auto r = conn.Request("POST", target_, AuthHeaders(), body, timeout);
      absl::Status retryable;
      if (!r.ok()) {
        if (!retry_unreachable) return r.status();
        retryable = r.status();
      } else if (Retryable(r->status)) {
        retryable = absl::UnavailableError(ReplyError(*r));
      } else {
        return r;
      }
      if (options_.stop != nullptr && options_.stop->load()) {
        return absl::CancelledError(absl::StrCat("interrupted while retrying ", AV(what)));
      }
      if (absl::Now() + backoff > give_up) {
        return absl::UnavailableError(absl::StrCat("the server did not take ", AV(what), " within ",
                                                   absl::FormatDuration(options_.retry_for),
                                                   " (--retry-for): ", retryable.message()));
      }
      absl::SleepFor(backoff);
    }
  }

  HttpSinkOptions options_;
  http_client::Url url_;
  std::string target_;  // POST /v1/detections[?batch=]
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sink>> OpenHttpSink(const HttpSinkOptions& options) {
  auto url = http_client::ParseUrl(options.url);
  if (!url.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--server: ", url.status().message()));
  }
  auto sink = std::make_unique<HttpSink>(options, *url);
  if (auto s = sink->Start(); !s.ok()) return s;
  return std::unique_ptr<Sink>(std::move(sink));
}

}  // namespace quell::importer
