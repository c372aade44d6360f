// Test-only: the Store backends the parameterised suites run against. Each backend
// hands out fresh, isolated data and can re-open it (a restart, or a second process).
// The PostgreSQL backend uses TestCluster::Shared() (one throwaway cluster per test
// process, or the run's shared server under scripts/test) and a fresh database per
// TestBackend: a test touches only its own database (it may share the server).
//
// Thread-safety: a TestBackend is used by one test thread.
#ifndef QUELL_LEDGER_INTERNAL_TEST_BACKENDS_H_
#define QUELL_LEDGER_INTERNAL_TEST_BACKENDS_H_

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "ledger/postgres/internal/test_cluster.h"
#include "ledger/postgres/postgres_store.h"
#include "ledger/sqlite/sqlite_store.h"
#include "ledger/store.h"

namespace quell::ledger::testing {

class TestBackend {
 public:
  virtual ~TestBackend() = default;
  //! Opens the backend's data; every call sees the same data.
  virtual absl::StatusOr<std::unique_ptr<Store>> Open() = 0;
  //! Runs raw SQL on the data behind the store's back (tampering, schema tricks).
  virtual absl::Status ExecRaw(const std::string& sql) = 0;
  //! Records a schema version newer than the binary knows.
  virtual absl::Status RecordNewerSchema() = 0;
};

class SqliteTestBackend final : public TestBackend {
 public:
  SqliteTestBackend() {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("quell-ledger-test-", getpid(), "-", counter.fetch_add(1));
    std::filesystem::remove_all(dir_);
  }
  ~SqliteTestBackend() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  absl::StatusOr<std::unique_ptr<Store>> Open() override {
    return OpenSqliteStore({.path = dir_.string()});
  }
  absl::Status ExecRaw(const std::string& sql) override {
    sqlite3* db = nullptr;
    std::string file = (dir_ / kSqliteFileName).string();
    int rc = sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
    if (rc == SQLITE_OK) {
      sqlite3_busy_timeout(db, 5000);
      rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    }
    absl::Status st = rc == SQLITE_OK
                          ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat("raw sqlite: ", sqlite3_errmsg(db)));
    sqlite3_close_v2(db);
    return st;
  }
  absl::Status RecordNewerSchema() override {
    return ExecRaw(absl::StrCat("INSERT INTO schema_version (version, applied_at) VALUES (",
                                SqliteSchemaVersion() + 1, ", 0)"));
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

class PostgresTestBackend final : public TestBackend {
 public:
  PostgresTestBackend() {
    auto cluster = pg_internal::TestCluster::Shared();
    if (!cluster.ok()) {
      error_ = cluster.status();  // reported loudly by every Open
      return;
    }
    auto url = (*cluster)->NewDatabase();
    if (url.ok()) {
      url_ = *url;
    } else {
      error_ = url.status();
    }
  }
  absl::StatusOr<std::unique_ptr<Store>> Open() override {
    if (!error_.ok()) return error_;
    return OpenPostgresStore({.url = url_});
  }
  absl::Status ExecRaw(const std::string& sql) override {
    if (!error_.ok()) return error_;
    return pg_internal::TestCluster::Exec(url_, sql);
  }
  absl::Status RecordNewerSchema() override {
    return ExecRaw(absl::StrCat("INSERT INTO schema_version (version, applied_at) VALUES (",
                                PostgresSchemaVersion() + 1, ", 0)"));
  }
  const std::string& url() const { return url_; }

 private:
  absl::Status error_;
  std::string url_;
};

struct BackendFactory {
  std::string name;
  std::function<std::unique_ptr<TestBackend>()> make;
};

inline std::vector<BackendFactory> AllBackends() {
  return {{"sqlite", [] { return std::make_unique<SqliteTestBackend>(); }},
          {"postgres", [] { return std::make_unique<PostgresTestBackend>(); }}};
}

}  // namespace quell::ledger::testing

#endif  // QUELL_LEDGER_INTERNAL_TEST_BACKENDS_H_
