#include "cli/config.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "cli/flags.h"
#include "gtest/gtest.h"

namespace quell::cli {
namespace {

// A file of its own per call: ctest runs these tests as separate processes, in parallel,
// in the same temporary directory.
// Removed when the test process exits.
std::string WriteTemp(const std::string& text) {
  struct Written {
    std::vector<std::string> paths;
    ~Written() {
      for (const std::string& p : paths) unlink(p.c_str());
    }
  };
  static Written written;
  std::string path = testing::TempDir() + "/quell_config_test." + std::to_string(getpid()) + "." +
                     std::to_string(written.paths.size()) + ".yaml";
  std::ofstream(path) << text;
  written.paths.push_back(path);
  return path;
}

TEST(ConfigTest, FileOverridesDefaults) {
  auto c = LoadConfigFile(WriteTemp(R"(
listen: 127.0.0.1:9999
data: /tmp/q
store: {synchronous: normal, entity_cache_mib: 64}
http: {read_timeout: 5s, max_body_bytes: 1024}
actions:
  - {name: block, verdict: deny, severity: high, ttl: 7d}
  - {name: review, verdict: allow, ttl: 1d, surfaces: [payout]}
)"),
                          Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:9999");
  EXPECT_FALSE(c->synchronous_full);
  EXPECT_EQ(c->entity_cache_mib, 64u);
  EXPECT_EQ(c->read_timeout, absl::Seconds(5));
  EXPECT_EQ(c->max_body_bytes, 1024u);
  ASSERT_EQ(c->catalog->size(), 2u);
  EXPECT_EQ(c->catalog->Find("block")->verdict, core::Verdict::kDeny);
}

// An error names the file and the key's line (and column for a value of the wrong type),
// the actions' too: an operator goes straight to it.
TEST(ConfigTest, ErrorsNameTheFileAndLine) {
  const std::string unknown_path = WriteTemp("listen: 127.0.0.1:9999\nlistn: x\n");
  auto unknown = LoadConfigFile(unknown_path, Config{});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(), unknown_path + ":2: unknown key \"listn\"");
  // Another kind of file given as --config: its content is not printed (a password file's
  // first line was).
  const std::string shadow_path =
      WriteTemp("root:$y$j9T$Secret/Hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n");
  auto shadow = LoadConfigFile(shadow_path, Config{});
  ASSERT_FALSE(shadow.ok());
  EXPECT_EQ(std::string(shadow.status().message()).find("Secret"), std::string::npos)
      << shadow.status();
  EXPECT_NE(std::string(shadow.status().message()).find("is this a Quell configuration file?"),
            std::string::npos)
      << shadow.status();
  const std::string type_path = WriteTemp("data: ./v\nthreads: many\n");
  auto type = LoadConfigFile(type_path, Config{});
  ASSERT_FALSE(type.ok());
  EXPECT_EQ(type.status().message(),
            type_path + ":2:10: threads: a value of the wrong type (see examples/quell.yaml)");
  const std::string actions_path = WriteTemp("\nactions:\n  - {name: block, verdit: deny}\n");
  auto actions = LoadConfigFile(actions_path, Config{});
  ASSERT_FALSE(actions.ok());
  EXPECT_EQ(actions.status().message(), actions_path + ":2: actions[0]: unknown key verdit");
  // postgres: is a top-level key (the ledger's database).
  auto pg = LoadConfigFile(WriteTemp("postgres: 'postgresql://q@db/quell'\n"), Config{});
  ASSERT_TRUE(pg.ok()) << pg.status();
  EXPECT_EQ(pg->postgres, "postgresql://q@db/quell");
  // Inside a section, the key's own line, not the section's.
  for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
           {"listen: x\nhttp:\n  access_log: true\n  bogus: 1\n", ":4: unknown key \"http.bogus\""},
           {"safeguards:\n  pendng_ttl: 1d\n", ":2: unknown key \"safeguards.pendng_ttl\""},
           {"webhooks:\n  timeout: 5s\n  poll: 0s\n", ":3: webhooks.poll: "},
           {"store:\n  entity_cache_mib: 1\n  synchronous: sometimes\n", ":3: store.synchronous"},
           {"counters:\n  backend: memory\n  max_keys: 0\n", ":3: counters.max_keys"},
           {"tracing:\n  sample_ratio: 0.5\n  endpiont: x\n",
            ":3: unknown key \"tracing.endpiont\""},
           {"detections:\n\n  retention: forever\n", ":3: detections.retention: "},
           {"http:\n  read_timeout: 5s\n  idle_timeout: soon\n", ":3: http.idle_timeout: "},
           // Found at the file's line, not once serve reads it (no line, and the whole help).
           {"listen: x\nlog_level: verbose\n", ":2: log_level: unknown log level \"verbose\""},
           // An empty section: its own line, not the next key's.
           {"listen: x\nsafeguards:\n#  x: 2\n\nwebhooks:\n  timeout: 5s\n",
            ":2: safeguards must be a mapping"}}) {
    const std::string path = WriteTemp(text);
    auto bad = LoadConfigFile(path, Config{});
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_TRUE(absl::StartsWith(bad.status().message(), path + want)) << bad.status().message();
  }
}

TEST(ConfigTest, ErrorsNameTheKey) {
  auto unknown = LoadConfigFile(WriteTemp("listne: x\n"), Config{});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("listne"), absl::string_view::npos);
  auto bad_ttl = LoadConfigFile(WriteTemp("actions: [{name: a, ttl: forever}]\n"), Config{});
  ASSERT_FALSE(bad_ttl.ok());
  EXPECT_NE(bad_ttl.status().message().find("actions[0].ttl"), absl::string_view::npos);
  EXPECT_FALSE(LoadConfigFile(WriteTemp("store: {synchronous: sometimes}\n"), Config{}).ok());
  auto store_typo = LoadConfigFile(WriteTemp("store: {synchronus: normal}\n"), Config{});
  ASSERT_FALSE(store_typo.ok());
  EXPECT_NE(store_typo.status().message().find("store.synchronus"), absl::string_view::npos);
  EXPECT_FALSE(LoadConfigFile(WriteTemp("store: {entity_cache_mib: -1}\n"), Config{}).ok());
  EXPECT_TRUE(LoadConfigFile(WriteTemp("store:\n"), Config{}).ok());
  auto http_typo = LoadConfigFile(WriteTemp("http: {acess_log: false}\n"), Config{});
  ASSERT_FALSE(http_typo.ok());
  EXPECT_NE(http_typo.status().message().find("http.acess_log"), absl::string_view::npos);
  EXPECT_TRUE(
      LoadConfigFile(WriteTemp("http: {access_log: false, read_timeout: 5s}\n"), Config{}).ok());
  EXPECT_FALSE(LoadConfigFile(WriteTemp("[1, 2"), Config{}).ok());
  EXPECT_FALSE(LoadConfigFile("/nonexistent/quell.yaml", Config{}).ok());
  // A plain value where a section is a mapping was read as an empty section: metrics
  // stayed on under `metrics: false`.
  const Config defaults;
  for (const char* text : {"metrics: false\n", "detections: 1d\n"}) {
    auto plain = LoadConfigFile(WriteTemp(text), defaults);
    ASSERT_FALSE(plain.ok()) << text;
    EXPECT_NE(plain.status().message().find("must be a mapping"), absl::string_view::npos)
        << plain.status();
  }
  EXPECT_TRUE(LoadConfigFile(WriteTemp("metrics:\ndetections:\n"), defaults).ok());
  // Every key is optional: a file of comments only is the defaults.
  auto comments = LoadConfigFile(WriteTemp("# nothing to change yet\n"), defaults);
  ASSERT_TRUE(comments.ok()) << comments.status();
  EXPECT_EQ(comments->listen, defaults.listen);
  // A key given twice is a mistake to point at, not one to resolve silently.
  auto twice = LoadConfigFile(WriteTemp("log_level: debug\nlog_level: warn\n"), defaults);
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("log_level is given twice"), absl::string_view::npos)
      << twice.status();
  auto threads = LoadConfigFile(WriteTemp("threads: -3\n"), defaults);
  ASSERT_FALSE(threads.ok());
  EXPECT_NE(threads.status().message().find("threads must be"), absl::string_view::npos);
  // A directory is an error, not an exception out of yaml-cpp's file reading (which
  // aborted every command given `--config DIR`).
  auto dir = LoadConfigFile(testing::TempDir(), defaults);
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("is a directory"), absl::string_view::npos) << dir.status();
}

TEST(ConfigTest, EnvironmentApplies) {
  setenv("QUELL_LISTEN", "0.0.0.0:1", 1);
  setenv("QUELL_SYNCHRONOUS", "normal", 1);
  Config c;
  ASSERT_TRUE(ApplyEnvironment(&c).ok());
  EXPECT_EQ(c.listen, "0.0.0.0:1");
  EXPECT_FALSE(c.synchronous_full);
  setenv("QUELL_THREADS", "many", 1);
  EXPECT_FALSE(ApplyEnvironment(&c).ok());
  unsetenv("QUELL_THREADS");
  setenv("QUELL_LOG_LEVEL", "bogus", 1);  // named, as the other variables are
  auto level = ApplyEnvironment(&c);
  EXPECT_TRUE(absl::StartsWith(level.message(), "QUELL_LOG_LEVEL: unknown log level")) << level;
  unsetenv("QUELL_LOG_LEVEL");
  unsetenv("QUELL_LISTEN");
  unsetenv("QUELL_SYNCHRONOUS");
  unsetenv("QUELL_THREADS");
}

TEST(ConfigTest, SafeguardsAndWebhooksSections) {
  auto c = LoadConfigFile(WriteTemp(R"(
safeguards:
  immunity: 90m
  pending_ttl: 2d
  bulk_threshold: 500
  sweep_interval: 5s
  idempotency_retention: 48h
webhooks:
  max_attempts: 3
  backoff_initial: 100ms
  backoff_max: 2s
  timeout: 1s
  poll: 250ms
)"),
                          Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->safeguards.immunity, absl::Minutes(90));
  EXPECT_EQ(c->safeguards.pending_ttl, absl::Hours(48));
  EXPECT_EQ(c->safeguards.bulk_threshold, 500);
  EXPECT_EQ(c->safeguards.sweep_interval, absl::Seconds(5));
  EXPECT_EQ(c->safeguards.idempotency_retention, absl::Hours(48));
  EXPECT_EQ(c->webhooks.max_attempts, 3);
  EXPECT_EQ(c->webhooks.backoff_initial, absl::Milliseconds(100));
  EXPECT_EQ(c->webhooks.backoff_max, absl::Seconds(2));
  EXPECT_EQ(c->webhooks.timeout, absl::Seconds(1));
  EXPECT_EQ(c->webhooks.poll, absl::Milliseconds(250));

  // Keys left out stay unset (the modules' defaults apply).
  auto partial = LoadConfigFile(WriteTemp("safeguards: {bulk_threshold: 10}\n"), Config{});
  ASSERT_TRUE(partial.ok()) << partial.status();
  EXPECT_FALSE(partial->safeguards.pending_ttl.has_value());
  EXPECT_FALSE(partial->webhooks.max_attempts.has_value());
}

TEST(ConfigTest, SafeguardsAndWebhooksErrorsNameTheKey) {
  struct Bad {
    const char* yaml;
    const char* names;
  };
  for (const Bad& b : {
           Bad{"safeguards: {bulk_treshold: 5}\n", "safeguards.bulk_treshold"},
           Bad{"safeguards: {bulk_threshold: -1}\n", "safeguards.bulk_threshold"},
           Bad{"safeguards: {bulk_threshold: many}\n", "safeguards.bulk_threshold"},
           Bad{"safeguards: {pending_ttl: 0s}\n", "safeguards.pending_ttl"},
           Bad{"safeguards: {immunity: forever}\n", "safeguards.immunity"},
           Bad{"safeguards: {sweep_interval: [1s]}\n", "safeguards.sweep_interval"},
           Bad{"safeguards: 5\n", "safeguards"},
           Bad{"webhooks: {max_attempts: 0}\n", "webhooks.max_attempts"},
           Bad{"webhooks: {max_attempts: 1001}\n", "webhooks.max_attempts"},
           Bad{"webhooks: {timeout: -1s}\n", "webhooks.timeout"},
           Bad{"webhooks: {retries: 3}\n", "webhooks.retries"},
       }) {
    auto c = LoadConfigFile(WriteTemp(b.yaml), Config{});
    ASSERT_FALSE(c.ok()) << b.yaml;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << b.yaml;
    EXPECT_NE(c.status().message().find(b.names), absl::string_view::npos)
        << b.yaml << " -> " << c.status();
  }
}

TEST(ConfigTest, SafeguardsAndWebhooksEnvironmentOverridesFile) {
  auto c = LoadConfigFile(
      WriteTemp("safeguards: {bulk_threshold: 10, pending_ttl: 1h}\nwebhooks: {poll: 5s}\n"),
      Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  setenv("QUELL_SAFEGUARDS_BULK_THRESHOLD", "20", 1);
  setenv("QUELL_WEBHOOK_POLL", "100ms", 1);
  ASSERT_TRUE(ApplyEnvironment(&*c).ok());
  EXPECT_EQ(c->safeguards.bulk_threshold, 20);
  EXPECT_EQ(c->safeguards.pending_ttl, absl::Hours(1));  // not in the environment: kept
  EXPECT_EQ(c->webhooks.poll, absl::Milliseconds(100));
  setenv("QUELL_SAFEGUARDS_BULK_THRESHOLD", "lots", 1);
  auto st = ApplyEnvironment(&*c);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("QUELL_SAFEGUARDS_BULK_THRESHOLD"), absl::string_view::npos);
  unsetenv("QUELL_SAFEGUARDS_BULK_THRESHOLD");
  // Out of range, and spellings absl::SimpleAtoi takes that no other integer setting does.
  for (const char* bad : {"0", "+5", " 5", "5 ", "0x5"}) {
    setenv("QUELL_WEBHOOK_MAX_ATTEMPTS", bad, 1);
    st = ApplyEnvironment(&*c);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.message().find("QUELL_WEBHOOK_MAX_ATTEMPTS"), absl::string_view::npos);
  }
  setenv("QUELL_WEBHOOK_MAX_ATTEMPTS", "5", 1);
  ASSERT_TRUE(ApplyEnvironment(&*c).ok());
  EXPECT_EQ(c->webhooks.max_attempts, 5);
  unsetenv("QUELL_WEBHOOK_MAX_ATTEMPTS");
  unsetenv("QUELL_WEBHOOK_POLL");
}

TEST(ConfigTest, TracingAndMetrics) {
  Config defaults;
  EXPECT_FALSE(defaults.tracing.on());
  EXPECT_TRUE(defaults.metrics_enabled);
  auto c = LoadConfigFile(WriteTemp(R"(
tracing: {endpoint: "http://127.0.0.1:4318/v1/traces", sample_ratio: 0.1, max_queue_spans: 64}
metrics: {enabled: false}
)"),
                          Config{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->tracing.on());
  EXPECT_EQ(c->tracing.endpoint, "http://127.0.0.1:4318/v1/traces");
  EXPECT_DOUBLE_EQ(c->tracing.sample_ratio, 0.1);
  EXPECT_EQ(c->tracing.max_queue_spans, 64);
  EXPECT_FALSE(c->metrics_enabled);
  auto off =
      LoadConfigFile(WriteTemp("tracing: {endpoint: http://h/, enabled: false}\n"), Config{});
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->tracing.on());
  auto bad = LoadConfigFile(WriteTemp("tracing: {sample_ratio: 2}\n"), Config{});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tracing.sample_ratio"), absl::string_view::npos);
  auto typo = LoadConfigFile(WriteTemp("tracing: {endpiont: x}\n"), Config{});
  ASSERT_FALSE(typo.ok());
  EXPECT_NE(typo.status().message().find("tracing.endpiont"), absl::string_view::npos);
  // Where the endpoint was set is kept, for serve's error about it (checked there, once
  // the environment and flags have had their say).
  const std::string https_path = WriteTemp("tracing:\n  endpoint: https://h/v1/traces\n");
  auto https = LoadConfigFile(https_path, Config{});
  ASSERT_TRUE(https.ok()) << https.status();
  EXPECT_EQ(https->tracing.endpoint_from, https_path + ":2: tracing.endpoint");

  setenv("QUELL_TRACING_ENDPOINT", "http://127.0.0.1:1/v1/traces", 1);
  setenv("QUELL_TRACING_SAMPLE_RATIO", "0.5", 1);
  Config e;
  ASSERT_TRUE(ApplyEnvironment(&e).ok());
  EXPECT_EQ(e.tracing.endpoint, "http://127.0.0.1:1/v1/traces");
  EXPECT_DOUBLE_EQ(e.tracing.sample_ratio, 0.5);
  setenv("QUELL_TRACING_SAMPLE_RATIO", "-1", 1);
  EXPECT_FALSE(ApplyEnvironment(&e).ok());
  EXPECT_EQ(e.tracing.endpoint_from, "QUELL_TRACING_ENDPOINT");
  unsetenv("QUELL_TRACING_ENDPOINT");
  unsetenv("QUELL_TRACING_SAMPLE_RATIO");
}

TEST(FlagsTest, ParsesFormsAndRejectsUnknown) {
  auto f =
      Flags::Parse({"keys", "create", "--role", "detector", "--source=a", "--source", "b", "--dev"},
                   {"role", "source"}, {"dev"}, {"source"});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->positional(), (std::vector<std::string>{"keys", "create"}));
  EXPECT_EQ(*f->Get("role"), "detector");
  EXPECT_EQ(f->All("source"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(f->Has("dev"));
  EXPECT_FALSE(Flags::Parse({"--nope"}, {}, {}).ok());
  EXPECT_FALSE(Flags::Parse({"--role"}, {"role"}, {}).ok());
  EXPECT_FALSE(Flags::Parse({"--dev=1"}, {}, {"dev"}).ok());
  // A value flag twice: which one was meant? (The last one used to win silently.)
  auto twice = Flags::Parse({"--role", "admin", "--role=viewer"}, {"role"}, {});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("--role is given twice"), absl::string_view::npos);
}

}  // namespace
}  // namespace quell::cli
