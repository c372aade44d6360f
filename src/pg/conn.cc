#include "pg/conn.h"

#include <algorithm>
#include <cstdlib>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace quell::pg {

Param P(std::string_view s) { return {std::string(s), false}; }
Param P(int64_t n) { return {absl::StrCat(n), false}; }
Param P(double d) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", d);
  return {buf, false};
}
Param PTime(absl::Time t) { return P(static_cast<int64_t>(absl::ToUnixMicros(t))); }
Param PNull() { return {"", true}; }

namespace {

// One element of an array literal: quoted, with '"' and '\\' escaped.
void AppendArrayElement(std::string_view v, std::string& out) {
  out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

}  // namespace

std::string ArrayLiteral(const std::vector<const Param*>& items) {
  size_t size = 2;
  for (const Param* p : items) size += p->value.size() + 4;
  std::string out;
  out.reserve(size);
  out += '{';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    if (items[i]->null) {
      out += "NULL";
    } else {
      AppendArrayElement(items[i]->value, out);
    }
  }
  out += '}';
  return out;
}

std::string ArrayLiteral(const std::vector<std::string_view>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    AppendArrayElement(items[i], out);
  }
  out += '}';
  return out;
}

int64_t Result::Int(int row, int col) const {
  int64_t v = 0;
  (void)absl::SimpleAtoi(AV(Text(row, col)), &v);
  return v;
}

double Result::Double(int row, int col) const {
  return std::strtod(PQgetvalue(r_.get(), row, col), nullptr);
}

int64_t Result::Affected() const {
  int64_t v = 0;
  (void)absl::SimpleAtoi(PQcmdTuples(r_.get()), &v);
  return v;
}

absl::Status ErrorStatus(PGconn* conn, const PGresult* r, std::string_view what) {
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  std::string sqlstate = state ? state : "";
  std::string msg = r ? PQresultErrorMessage(r) : "";
  if (msg.empty() && conn) msg = PQerrorMessage(conn);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  std::string text =
      absl::StrCat("postgres ", AV(what), ": ", msg,
                   sqlstate.empty() ? "" : absl::StrCat(" (SQLSTATE ", sqlstate, ")"));
  if (conn && PQstatus(conn) != CONNECTION_OK) return absl::UnavailableError(text);
  if (sqlstate == "23505") return absl::AlreadyExistsError(text);
  if (sqlstate == "57014") return absl::DeadlineExceededError(text);
  if (sqlstate == "55P03" || sqlstate.rfind("08", 0) == 0 || sqlstate == "57P01" ||
      sqlstate == "57P03") {
    return absl::UnavailableError(text);
  }
  if (sqlstate == "40001" || sqlstate == "40P01") return absl::AbortedError(text);
  // Class 53, insufficient resources (disk_full, out_of_memory, too_many_connections):
  // the server's, and passing; retry later, as with a full disk under SQLite.
  if (sqlstate.rfind("53", 0) == 0) return absl::UnavailableError(text);
  if (sqlstate.rfind("22", 0) == 0) return absl::InvalidArgumentError(text);
  if (sqlstate.empty()) return absl::UnavailableError(text);  // no server answer
  return absl::InternalError(text);
}

absl::StatusOr<std::unique_ptr<Conn>> Conn::Open(const ConnOptions& o) {
  std::string timeout = absl::StrCat(o.connect_timeout_s);
  std::string options =
      absl::StrCat("-c statement_timeout=", o.statement_timeout_ms,
                   " -c lock_timeout=", o.lock_timeout_ms, " -c client_min_messages=warning");
  const char* keys[] = {"dbname", "connect_timeout", "options", "application_name", nullptr};
  const char* values[] = {o.url.c_str(), timeout.c_str(), options.c_str(),
                          o.application_name.c_str(), nullptr};
  // expand_dbname=1: `dbname` may be a full connection string or URI.
  PGconn* c = PQconnectdbParams(keys, values, 1);
  if (c == nullptr) return absl::ResourceExhaustedError("postgres: out of memory");
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c);
    PQfinish(c);
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    return absl::UnavailableError(absl::StrCat("postgres connect: ", msg));
  }
  return std::unique_ptr<Conn>(new Conn(c));
}

Conn::~Conn() { PQfinish(conn_); }

absl::Status Reconnect(std::unique_ptr<Conn>& conn, const ConnOptions& o) {
  if (conn != nullptr && conn->ok()) return absl::OkStatus();
  conn.reset();  // closed before the new one opens: never two sessions for one owner
  absl::StatusOr<std::unique_ptr<Conn>> opened = Conn::Open(o);
  if (!opened.ok()) return opened.status();
  conn = *std::move(opened);
  return absl::OkStatus();
}

bool Conn::InTransaction() const {
  PGTransactionStatusType s = PQtransactionStatus(conn_);
  return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

absl::Status Conn::Check(PGresult* r, std::string_view what) {
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_SINGLE_TUPLE) {
    return absl::OkStatus();
  }
  return ErrorStatus(conn_, r, what);
}

absl::Status Conn::Exec(std::string_view sql) {
  if (!deferred_.empty()) {
    absl::Status flushed = Flush();
    if (!flushed.ok()) return flushed;
  }
  std::string s(sql);
  PGresult* r = PQexec(conn_, s.c_str());
  absl::Status st = Check(r, sql.substr(0, 60));
  PQclear(r);
  return st;
}

absl::Status Conn::Defer(const std::string& sql, std::vector<Param> params) {
  deferred_.push_back({sql, std::move(params)});
  if (deferred_.size() > kMaxDeferred) return Flush();
  return absl::OkStatus();
}

absl::Status Conn::DeferRow(const RowTemplate& t, std::vector<Param> params) {
  deferred_.push_back({t.single, std::move(params), &t});
  if (deferred_.size() > kMaxDeferred) return Flush();
  return absl::OkStatus();
}

std::vector<Conn::Statement> Conn::MergeRows(std::vector<Statement> stmts) {
  std::vector<Statement> out;
  out.reserve(stmts.size());
  size_t i = 0;
  while (i < stmts.size()) {
    if (stmts[i].row == nullptr) {
      out.push_back(std::move(stmts[i++]));
      continue;
    }
    size_t end = i;
    while (end < stmts.size() && stmts[end].row != nullptr) ++end;
    // The run [i, end): one batch per template, in order of first appearance.
    std::vector<const RowTemplate*> templates;
    for (size_t k = i; k < end; ++k) {
      if (std::find(templates.begin(), templates.end(), stmts[k].row) == templates.end()) {
        templates.push_back(stmts[k].row);
      }
    }
    for (const RowTemplate* t : templates) {
      std::vector<size_t> batch;
      absl::flat_hash_set<std::string_view> keys;
      auto emit = [&] {
        if (batch.size() == 1) {
          out.push_back({t->single, std::move(stmts[batch[0]].params), nullptr});
        } else if (!batch.empty()) {
          const size_t columns = stmts[batch[0]].params.size();
          Statement merged{t->multi, {}, nullptr};
          merged.params.reserve(columns);
          std::vector<const Param*> column(batch.size());
          for (size_t c = 0; c < columns; ++c) {
            for (size_t r = 0; r < batch.size(); ++r) column[r] = &stmts[batch[r]].params[c];
            merged.params.push_back({ArrayLiteral(column), false});
          }
          out.push_back(std::move(merged));
        }
        batch.clear();
        keys.clear();
      };
      for (size_t k = i; k < end; ++k) {
        if (stmts[k].row != t) continue;
        if (t->key >= 0) {
          std::string_view key = stmts[k].params[t->key].value;
          if (!keys.insert(key).second) {
            emit();
            keys.insert(key);
          }
        }
        batch.push_back(k);
      }
      emit();
    }
    i = end;
  }
  return out;
}

absl::Status Conn::Flush() {
  if (deferred_.empty()) return absl::OkStatus();
  return RunPipeline({}).status();
}

absl::StatusOr<std::vector<Result>> Conn::QueryAll(std::vector<Statement> stmts) {
  return RunPipeline(std::move(stmts));
}

absl::StatusOr<std::vector<Result>> Conn::RunPipeline(std::vector<Statement> tail) {
  std::vector<Statement> stmts = MergeRows(std::move(deferred_));
  deferred_.clear();
  ++sends_;
  const size_t first_tail = stmts.size();
  for (Statement& s : tail) stmts.push_back(std::move(s));
  if (PQenterPipelineMode(conn_) != 1) return ErrorStatus(conn_, nullptr, "pipeline mode");
  // What each result in the stream answers: a Parse (prepare) or the i-th statement.
  struct Expect {
    bool prepare;
    size_t stmt;
  };
  std::vector<Expect> expect;
  std::vector<std::string> added;  // statements first prepared in this pipeline
  absl::Status first;
  for (size_t i = 0; i < stmts.size() && first.ok(); ++i) {
    const Statement& s = stmts[i];
    auto it = prepared_.find(s.sql);
    if (it == prepared_.end()) {
      std::string name = absl::StrCat("q", ++next_name_);
      if (PQsendPrepare(conn_, name.c_str(), s.sql.c_str(), 0, nullptr) != 1) {
        first = ErrorStatus(conn_, nullptr, absl::StrCat("prepare ", s.sql.substr(0, 60)));
        break;
      }
      expect.push_back({true, i});
      added.push_back(s.sql);
      it = prepared_.emplace(s.sql, std::move(name)).first;
    }
    std::vector<const char*> values;
    values.reserve(s.params.size());
    for (const Param& p : s.params) values.push_back(p.null ? nullptr : p.value.c_str());
    if (PQsendQueryPrepared(conn_, it->second.c_str(), static_cast<int>(values.size()),
                            values.data(), nullptr, nullptr, 0) != 1) {
      first = ErrorStatus(conn_, nullptr, s.sql.substr(0, 60));
      break;
    }
    expect.push_back({false, i});
  }
  if (first.ok() && PQpipelineSync(conn_) != 1) first = ErrorStatus(conn_, nullptr, "sync");
  if (!first.ok()) {
    // Nothing is known about what the server got: this connection is done.
    broken_ = true;
    return first;
  }
  std::vector<Result> out;
  out.reserve(stmts.size() - first_tail);
  bool failed_prepare = false;
  for (const Expect& e : expect) {
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) {
      broken_ = true;
      return ErrorStatus(conn_, nullptr, "pipeline result");
    }
    ExecStatusType st = PQresultStatus(r);
    const std::string& sql = stmts[e.stmt].sql;
    if (st == PGRES_PIPELINE_ABORTED) {
      if (first.ok()) first = absl::AbortedError("postgres: pipeline aborted");
      if (e.prepare) failed_prepare = true;
      PQclear(r);
    } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (first.ok()) {
        first = ErrorStatus(conn_, r, absl::StrCat(e.prepare ? "prepare " : "", sql.substr(0, 60)));
      }
      if (e.prepare) failed_prepare = true;
      PQclear(r);
    } else if (!e.prepare && e.stmt >= first_tail) {
      out.emplace_back(r);
    } else {
      PQclear(r);
    }
    if (PGresult* end = PQgetResult(conn_)) {  // each statement's results end with nullptr
      PQclear(end);
      broken_ = true;
      return absl::InternalError("postgres: unexpected extra result in a pipeline");
    }
  }
  PGresult* sync = PQgetResult(conn_);
  const bool synced = sync != nullptr && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
  PQclear(sync);
  if (!synced || PQexitPipelineMode(conn_) != 1) {
    broken_ = true;
    return first.ok() ? ErrorStatus(conn_, nullptr, "pipeline sync") : first;
  }
  if (failed_prepare) {
    // Which of this pipeline's Parses the server kept is unknown: prepare them again
    // under new names when next used.
    for (const std::string& sql : added) prepared_.erase(sql);
  }
  if (!first.ok()) return first;
  return out;
}

absl::StatusOr<Result> Conn::Query(const std::string& sql, const std::vector<Param>& params) {
  if (!deferred_.empty()) {
    std::vector<Statement> last;
    last.push_back({sql, params});
    absl::StatusOr<std::vector<Result>> r = RunPipeline(std::move(last));
    if (!r.ok()) return r.status();
    if (r->size() != 1) return absl::InternalError("postgres: pipeline lost a result");
    return std::move(r->front());
  }
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) {
    std::string name = absl::StrCat("q", ++next_name_);
    PGresult* r = PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr);
    absl::Status st = Check(r, absl::StrCat("prepare ", sql.substr(0, 60)));
    PQclear(r);
    if (!st.ok()) return st;
    it = prepared_.emplace(sql, std::move(name)).first;
  }
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const Param& p : params) values.push_back(p.null ? nullptr : p.value.c_str());
  PGresult* r = PQexecPrepared(conn_, it->second.c_str(), static_cast<int>(values.size()),
                               values.data(), nullptr, nullptr, 0);
  absl::Status st = Check(r, sql.substr(0, 60));
  if (!st.ok()) {
    PQclear(r);
    return st;
  }
  return Result(r);
}

absl::Status Conn::Stream(const std::string& sql, const std::vector<Param>& params,
                          const std::function<absl::Status(const Result&)>& row) {
  // A scan streams as fast as its consumer goes (a backtest over a month of
  // detections): statement_timeout must not cut it off. SET LOCAL ends with the
  // surrounding read transaction.
  if (!deferred_.empty()) {
    absl::Status flushed = Flush();
    if (!flushed.ok()) return flushed;
  }
  if (InTransaction()) {
    absl::Status st = Exec("SET LOCAL statement_timeout = 0");
    if (!st.ok()) return st;
  }
  std::vector<const char*> values;
  for (const Param& p : params) values.push_back(p.null ? nullptr : p.value.c_str());
  if (!PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                         values.data(), nullptr, nullptr, 0)) {
    return ErrorStatus(conn_, nullptr, sql.substr(0, 60));
  }
  PQsetSingleRowMode(conn_);
  absl::Status first;
  while (PGresult* r = PQgetResult(conn_)) {
    Result res(r);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_SINGLE_TUPLE) {
      if (first.ok()) first = row(res);
    } else if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && first.ok()) {
      first = ErrorStatus(conn_, r, sql.substr(0, 60));
    }
  }
  if (first.ok() && !ok()) first = ErrorStatus(conn_, nullptr, sql.substr(0, 60));
  return first;
}

}  // namespace quell::pg
