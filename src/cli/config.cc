#include "cli/config.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "obs/log.h"
#include "yaml-cpp/yaml.h"

namespace quell::cli {
namespace {

absl::StatusOr<std::shared_ptr<const core::ActionCatalog>> CatalogFromNode(const YAML::Node& list) {
  if (!list.IsSequence()) return absl::InvalidArgumentError("actions: must be a list");
  std::vector<core::Action> actions;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node& n = list[i];
    std::string where = absl::StrCat("actions[", i, "]");
    if (!n.IsMap() || !n["name"])
      return absl::InvalidArgumentError(absl::StrCat(where, ": needs a name"));
    core::Action a;
    a.name = n["name"].as<std::string>();
    for (auto it = n.begin(); it != n.end(); ++it) {
      std::string key = it->first.as<std::string>();
      if (key != "name" && key != "verdict" && key != "severity" && key != "ttl" &&
          key != "surfaces") {
        return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key ", key));
      }
    }
    if (n["verdict"]) {
      auto v = core::ParseVerdict(n["verdict"].as<std::string>());
      if (!v)
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".verdict: allow, throttle, challenge or deny"));
      a.verdict = *v;
    }
    if (n["severity"]) {
      auto s = core::ParseSeverity(n["severity"].as<std::string>());
      if (!s)
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".severity: low, medium, high or critical"));
      a.severity = *s;
    }
    if (n["ttl"]) {
      auto d = core::ParseDuration(n["ttl"].as<std::string>());
      if (!d.ok())
        return absl::InvalidArgumentError(absl::StrCat(where, ".ttl: ", d.status().message()));
      a.default_ttl = *d;
    }
    if (n["surfaces"]) a.surfaces = n["surfaces"].as<std::vector<std::string>>();
    actions.push_back(std::move(a));
  }
  return core::ActionCatalog::Create(std::move(actions));
}

// FILE:LINE of a node (a key, or a value on its key's line): what an error about it names.
std::string KeyAt(const std::string& file, const YAML::Node& node) {
  return absl::StrCat(file, ":", node.Mark().line + 1);
}

absl::Status CheckSampleRatio(double r, std::string_view where) {
  if (!(r >= 0 && r <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(AV(where), " must be a number in [0, 1]"));
  }
  return absl::OkStatus();
}

// `path`: the file; `at`: FILE:LINE of the section's key (an empty section's null value
// sits at the next key's line), which errors about the section itself name.
absl::Status TracingFromNode(const YAML::Node& v, const std::string& path, const std::string& at,
                             TracingConfig* t) {
  if (!v.IsMap())
    return absl::InvalidArgumentError(absl::StrCat(at, ": tracing must be a mapping"));
  for (auto it = v.begin(); it != v.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    const std::string key_at = KeyAt(path, it->first);
    if (key == "endpoint") {
      t->endpoint = it->second.as<std::string>();
      t->endpoint_from = absl::StrCat(key_at, ": tracing.endpoint");
    } else if (key == "sample_ratio") {
      t->sample_ratio = it->second.as<double>();
      QUELL_RETURN_IF_ERROR(
          CheckSampleRatio(t->sample_ratio, absl::StrCat(key_at, ": tracing.sample_ratio")));
    } else if (key == "enabled") {
      t->enabled = it->second.as<bool>();
    } else if (key == "max_queue_spans") {
      t->max_queue_spans = it->second.as<int>();
      if (t->max_queue_spans < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(key_at, ": tracing.max_queue_spans must be positive"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(key_at, ": unknown key \"tracing.", key, "\""));
    }
  }
  return absl::OkStatus();
}

// One duration or integer setting of a `safeguards:`/`webhooks:` section, its YAML key
// and environment variable, and its bounds.
struct DurationKey {
  const char* key;
  const char* env;
  std::optional<absl::Duration>* out;
  bool allow_zero;
};
struct IntKey {
  const char* key;
  const char* env;
  int64_t min, max;
};

absl::StatusOr<absl::Duration> CheckedDuration(std::string_view text, bool allow_zero,
                                               std::string_view where) {
  auto d = core::ParseDuration(text);
  if (!d.ok())
    return absl::InvalidArgumentError(absl::StrCat(AV(where), ": ", d.status().message()));
  if (*d < absl::ZeroDuration() || (!allow_zero && *d == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(where), allow_zero ? " must not be negative" : " must be positive"));
  }
  return *d;
}

absl::StatusOr<int64_t> CheckedInt(std::string_view text, const IntKey& k, std::string_view where) {
  int64_t n = 0;
  // Digits only: SimpleAtoi also takes "+5" and " 5", which no other setting does.
  const bool digits = !text.empty() && std::all_of(text.begin(), text.end(),
                                                   [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || !absl::SimpleAtoi(AV(text), &n) || n < k.min || n > k.max) {
    return absl::InvalidArgumentError(
        absl::StrCat(AV(where), " must be an integer in [", k.min, ", ", k.max, "]"));
  }
  return n;
}

std::vector<DurationKey> SafeguardDurations(SafeguardsConfig* s) {
  return {{"immunity", "QUELL_SAFEGUARDS_IMMUNITY", &s->immunity, false},
          {"pending_ttl", "QUELL_SAFEGUARDS_PENDING_TTL", &s->pending_ttl, false},
          {"sweep_interval", "QUELL_SAFEGUARDS_SWEEP_INTERVAL", &s->sweep_interval, false},
          {"idempotency_retention", "QUELL_SAFEGUARDS_IDEMPOTENCY_RETENTION",
           &s->idempotency_retention, false}};
}
constexpr IntKey kBulkThreshold{"bulk_threshold", "QUELL_SAFEGUARDS_BULK_THRESHOLD", 0,
                                int64_t{1} << 62};

std::vector<DurationKey> WebhookDurations(WebhooksConfig* w) {
  return {{"backoff_initial", "QUELL_WEBHOOK_BACKOFF_INITIAL", &w->backoff_initial, false},
          {"backoff_max", "QUELL_WEBHOOK_BACKOFF_MAX", &w->backoff_max, false},
          {"timeout", "QUELL_WEBHOOK_TIMEOUT", &w->timeout, false},
          {"poll", "QUELL_WEBHOOK_POLL", &w->poll, false}};
}
constexpr IntKey kMaxAttempts{"max_attempts", "QUELL_WEBHOOK_MAX_ATTEMPTS", 1, 1000};

// Reads section `name` (a mapping of the given duration keys and one integer key).
absl::Status SectionFromNode(const YAML::Node& v, const std::string& path, const std::string& at,
                             std::string_view name, const std::vector<DurationKey>& durations,
                             const IntKey& int_key, const std::function<void(int64_t)>& set_int) {
  if (!v.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": ", AV(name), " must be a mapping"));
  }
  for (auto m = v.begin(); m != v.end(); ++m) {
    const std::string k = m->first.as<std::string>();
    const std::string key_at = KeyAt(path, m->first);
    const std::string where = absl::StrCat(key_at, ": ", AV(name), ".", k);
    if (!m->second.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " must be a single value"));
    }
    const std::string text = m->second.as<std::string>();
    bool known = false;
    for (const DurationKey& d : durations) {
      if (k != d.key) continue;
      QUELL_ASSIGN_OR_RETURN(*d.out, CheckedDuration(text, d.allow_zero, where));
      known = true;
    }
    if (k == int_key.key) {
      QUELL_ASSIGN_OR_RETURN(int64_t n, CheckedInt(text, int_key, where));
      set_int(n);
      known = true;
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat(key_at, ": unknown key \"", AV(name), ".", k, "\""));
    }
  }
  return absl::OkStatus();
}

// The environment's overrides of one section.
absl::Status SectionFromEnv(const std::vector<DurationKey>& durations, const IntKey& int_key,
                            const std::function<void(int64_t)>& set_int) {
  for (const DurationKey& d : durations) {
    const char* v = std::getenv(d.env);
    if (v == nullptr || *v == 0) continue;
    QUELL_ASSIGN_OR_RETURN(*d.out, CheckedDuration(v, d.allow_zero, d.env));
  }
  if (const char* v = std::getenv(int_key.env); v != nullptr && *v != 0) {
    QUELL_ASSIGN_OR_RETURN(int64_t n, CheckedInt(v, int_key, int_key.env));
    set_int(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const core::ActionCatalog>> ParseCatalogYaml(
    const std::string& yaml) {
  try {
    YAML::Node root = YAML::Load(yaml);
    return CatalogFromNode(root["actions"]);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("YAML: ", e.what()));
  }
}

absl::Status ParseRedisUrl(std::string_view url, CountersConfig* c) {
  std::string_view rest = url;
  if (rest.substr(0, 8) == "redis://") rest.remove_prefix(8);
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.empty())
    return absl::InvalidArgumentError(absl::StrCat("bad redis URL \"", AV(url), "\""));
  std::string host(rest);
  int port = 6379;
  size_t colon = rest.rfind(':');
  if (colon != std::string_view::npos) {
    host = std::string(rest.substr(0, colon));
    if (!absl::SimpleAtoi(AV(rest.substr(colon + 1)), &port) || port <= 0 || port > 65535 ||
        host.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad redis URL \"", AV(url), "\": want redis://HOST:PORT"));
    }
  }
  c->redis = true;
  c->redis_host = std::move(host);
  c->redis_port = port;
  return absl::OkStatus();
}

namespace {
absl::Status CountersFromNode(const YAML::Node& v, const std::string& path, const std::string& at,
                              CountersConfig* c) {
  if (!v.IsMap())
    return absl::InvalidArgumentError(absl::StrCat(at, ": counters must be a mapping"));
  std::optional<std::string> backend;
  for (auto m = v.begin(); m != v.end(); ++m) {
    std::string k = m->first.as<std::string>();
    const std::string key_at = KeyAt(path, m->first);
    const YAML::Node x = m->second;  // a copy: m->second is a member of a temporary proxy
    if (k == "backend") {
      backend = x.as<std::string>();
      if (*backend != "memory" && *backend != "redis") {
        return absl::InvalidArgumentError(
            absl::StrCat(key_at, ": counters.backend must be memory or redis"));
      }
    } else if (k == "redis") {
      if (auto s = ParseRedisUrl(x.as<std::string>(), c); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(key_at, ": counters.redis: ", s.message()));
      }
    } else if (k == "on_error") {
      std::string e = x.as<std::string>();
      if (e != "fail_open" && e != "fail_closed") {
        return absl::InvalidArgumentError(
            absl::StrCat(key_at, ": counters.on_error must be fail_open or fail_closed"));
      }
      c->fail_closed = e == "fail_closed";
    } else if (k == "lateness") {
      auto d = core::ParseDuration(x.as<std::string>());
      if (!d.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(key_at, ": counters.lateness: ", d.status().message()));
      c->lateness = *d;
    } else if (k == "max_keys") {
      c->max_keys = x.as<int64_t>();
      if (c->max_keys <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(key_at, ": counters.max_keys must be positive"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(key_at, ": unknown key \"counters.", k, "\""));
    }
  }
  if (backend) c->redis = *backend == "redis";
  return absl::OkStatus();
}
// One top-level key of a configuration file. `path` is the file, `at` FILE:LINE of the
// key, which errors about it name; an error about a key inside its section names that
// key's line. YAML::Exception (a value of the wrong type) propagates.
absl::Status ApplyTopKey(const std::string& key, const YAML::Node& v, const std::string& path,
                         const std::string& at, Config* c) {
  if (key == "listen") {
    c->listen = v.as<std::string>();
  } else if (key == "grpc_listen") {
    c->grpc_listen = v.as<std::string>();
  } else if (key == "data") {
    c->data = v.as<std::string>();
  } else if (key == "postgres") {
    c->postgres = v.as<std::string>();
  } else if (key == "threads") {
    c->threads = v.as<int>();
    if (c->threads < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": threads must be a non-negative integer"));
    }
  } else if (key == "log_level") {
    c->log_level = v.as<std::string>();
    // Checked here, where the line is known (serve said only "log_level: ...").
    if (auto level = obs::ParseLevel(c->log_level); !level.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": log_level: ", level.status().message()));
    }
  } else if (key == "store") {
    if (v.IsNull()) return absl::OkStatus();
    if (!v.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": store must be a mapping"));
    }
    for (auto m = v.begin(); m != v.end(); ++m) {
      const std::string k = m->first.as<std::string>();
      if (k != "synchronous" && k != "entity_cache_mib") {
        return absl::InvalidArgumentError(
            absl::StrCat(KeyAt(path, m->first), ": unknown key \"store.", k, "\""));
      }
    }
    if (v["entity_cache_mib"]) {
      const int64_t n = v["entity_cache_mib"].as<int64_t>();
      if (n < 0 || n > (int64_t{1} << 20)) {
        return absl::InvalidArgumentError(
            absl::StrCat(KeyAt(path, v["entity_cache_mib"]),
                         ": store.entity_cache_mib must be a number of MiB in [0, 1048576]"));
      }
      c->entity_cache_mib = static_cast<size_t>(n);
    }
    if (v["synchronous"]) {
      std::string s = v["synchronous"].as<std::string>();
      if (s != "full" && s != "normal") {
        return absl::InvalidArgumentError(absl::StrCat(
            KeyAt(path, v["synchronous"]), ": store.synchronous must be full or normal"));
      }
      c->synchronous_full = s == "full";
    }
  } else if (key == "http") {
    if (!v.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": http must be a mapping"));
    }
    for (auto m = v.begin(); m != v.end(); ++m) {
      const std::string k = m->first.as<std::string>();
      if (k != "max_body_bytes" && k != "access_log" && k != "read_timeout" &&
          k != "idle_timeout" && k != "shutdown_grace") {
        return absl::InvalidArgumentError(
            absl::StrCat(KeyAt(path, m->first), ": unknown key \"http.", k, "\""));
      }
    }
    if (v["max_body_bytes"]) c->max_body_bytes = v["max_body_bytes"].as<size_t>();
    if (v["access_log"]) c->access_log = v["access_log"].as<bool>();
    for (auto [name, field] :
         {std::pair{"read_timeout", &c->read_timeout}, std::pair{"idle_timeout", &c->idle_timeout},
          std::pair{"shutdown_grace", &c->shutdown_grace}}) {
      if (!v[name]) continue;
      auto d = core::ParseDuration(v[name].as<std::string>());
      if (!d.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(KeyAt(path, v[name]), ": http.", name, ": ", d.status().message()));
      *field = *d;
    }
  } else if (key == "detections") {
    if (!v.IsMap() && !v.IsNull()) {  // empty, like `store:`
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": detections must be a mapping (detections: {retention: 30d})"));
    }
    for (auto m = v.begin(); m != v.end(); ++m) {
      if (m->first.as<std::string>() != "retention") {
        return absl::InvalidArgumentError(absl::StrCat(KeyAt(path, m->first),
                                                       ": unknown key \"detections.",
                                                       m->first.as<std::string>(), "\""));
      }
      auto d = core::ParseDuration(m->second.as<std::string>());
      if (!d.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(KeyAt(path, m->first), ": detections.retention: ", d.status().message()));
      c->detection_retention = *d;
    }
  } else if (key == "counters") {
    QUELL_RETURN_IF_ERROR(CountersFromNode(v, path, at, &c->counters));
  } else if (key == "tracing") {
    QUELL_RETURN_IF_ERROR(TracingFromNode(v, path, at, &c->tracing));
  } else if (key == "safeguards") {
    QUELL_RETURN_IF_ERROR(SectionFromNode(v, path, at, "safeguards",
                                          SafeguardDurations(&c->safeguards), kBulkThreshold,
                                          [&](int64_t n) { c->safeguards.bulk_threshold = n; }));
  } else if (key == "webhooks") {
    QUELL_RETURN_IF_ERROR(
        SectionFromNode(v, path, at, "webhooks", WebhookDurations(&c->webhooks), kMaxAttempts,
                        [&](int64_t n) { c->webhooks.max_attempts = static_cast<int>(n); }));
  } else if (key == "node") {
    c->node_name = v.as<std::string>();
  } else if (key == "metrics") {
    if (!v.IsMap() && !v.IsNull()) {  // empty, like `store:`
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": metrics must be a mapping (metrics: {enabled: false})"));
    }
    for (auto m = v.begin(); m != v.end(); ++m) {
      if (m->first.as<std::string>() != "enabled") {
        return absl::InvalidArgumentError(absl::StrCat(
            KeyAt(path, m->first), ": unknown key \"metrics.", m->first.as<std::string>(), "\""));
      }
      c->metrics_enabled = m->second.as<bool>();
    }
  } else if (key == "policies") {
    c->policies_file = v.as<std::string>();
    if (!c->policies_file.empty() && c->policies_file[0] != '/') {
      size_t slash = path.rfind('/');
      if (slash != std::string::npos)
        c->policies_file = path.substr(0, slash + 1) + c->policies_file;
    }
  } else if (key == "actions") {
    auto catalog = CatalogFromNode(v);
    if (!catalog.ok()) {
      return absl::Status(catalog.status().code(),
                          absl::StrCat(at, ": ", catalog.status().message()));
    }
    c->catalog = *std::move(catalog);
  } else {
    // A key name is echoed to say which; anything else is not repeated: --config naming
    // another file (a password file, a key) printed its first line.
    const bool name_like =
        !key.empty() && key.size() <= 64 &&
        key.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") ==
            std::string::npos;
    return absl::InvalidArgumentError(
        name_like ? absl::StrCat(at, ": unknown key \"", key, "\"")
                  : absl::StrCat(at,
                                 ": a key that no Quell configuration has (not repeated here):"
                                 " is this a Quell configuration file?"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config c) {
  QUELL_ASSIGN_OR_RETURN(std::string text, core::ReadFile(path));
  try {
    YAML::Node root = YAML::Load(text);
    if (root.IsNull()) return c;  // empty, or comments only: every key is optional
    if (!root.IsMap())
      return absl::InvalidArgumentError(absl::StrCat(path, ": must be a YAML mapping"));
    std::set<std::string> seen;
    for (auto it = root.begin(); it != root.end(); ++it) {
      std::string key = it->first.as<std::string>();
      // Errors about this key name its line: FILE:LINE.
      const std::string at = absl::StrCat(path, ":", it->first.Mark().line + 1);
      if (!seen.insert(key).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": ", key, " is given twice (which one was meant?)"));
      }
      const YAML::Node v = it->second;  // a copy: it->second is a member of a temporary proxy
      absl::Status st = [&]() -> absl::Status {
        try {
          return ApplyTopKey(key, v, path, at, &c);
        } catch (const YAML::Exception& e) {  // a value of the wrong type: name the key
          // yaml-cpp says "bad conversion": say what that means here.
          const std::string why = e.msg == "bad conversion"
                                      ? "a value of the wrong type (see examples/quell.yaml)"
                                      : e.msg;
          return absl::InvalidArgumentError(absl::StrCat(path, ":", e.mark.line + 1, ":",
                                                         e.mark.column + 1, ": ", key, ": ", why));
        }
      }();
      if (!st.ok()) return st;
    }
    return c;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::Status ApplyEnvironment(Config* c) {
  auto env = [](const char* name) -> const char* { return std::getenv(name); };
  if (const char* v = env("QUELL_LISTEN")) c->listen = v;
  if (const char* v = env("QUELL_DATA")) c->data = v;
  if (const char* v = env("QUELL_LOG_LEVEL")) {
    c->log_level = v;
    if (auto level = obs::ParseLevel(c->log_level); !level.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("QUELL_LOG_LEVEL: ", level.status().message()));
    }
  }
  if (const char* v = env("QUELL_NODE_NAME")) c->node_name = v;
  if (const char* v = env("QUELL_TRACING_ENDPOINT")) {
    c->tracing.endpoint = v;
    c->tracing.endpoint_from = "QUELL_TRACING_ENDPOINT";
  }
  if (const char* v = env("QUELL_TRACING_SAMPLE_RATIO")) {
    if (!absl::SimpleAtod(v, &c->tracing.sample_ratio)) {
      return absl::InvalidArgumentError("QUELL_TRACING_SAMPLE_RATIO must be a number in [0, 1]");
    }
    QUELL_RETURN_IF_ERROR(CheckSampleRatio(c->tracing.sample_ratio, "QUELL_TRACING_SAMPLE_RATIO"));
  }
  if (const char* v = env("QUELL_THREADS")) {
    if (!absl::SimpleAtoi(v, &c->threads) || c->threads < 0) {
      return absl::InvalidArgumentError("QUELL_THREADS must be a non-negative integer");
    }
  }
  if (const char* v = env("QUELL_SYNCHRONOUS")) {
    std::string s = v;
    if (s != "full" && s != "normal")
      return absl::InvalidArgumentError("QUELL_SYNCHRONOUS must be full or normal");
    c->synchronous_full = s == "full";
  }
  QUELL_RETURN_IF_ERROR(SectionFromEnv(SafeguardDurations(&c->safeguards), kBulkThreshold,
                                       [&](int64_t n) { c->safeguards.bulk_threshold = n; }));
  QUELL_RETURN_IF_ERROR(
      SectionFromEnv(WebhookDurations(&c->webhooks), kMaxAttempts,
                     [&](int64_t n) { c->webhooks.max_attempts = static_cast<int>(n); }));
  return absl::OkStatus();
}

workflow::SafeguardOptions ToSafeguardOptions(const SafeguardsConfig& s) {
  workflow::SafeguardOptions o;
  if (s.immunity) o.immunity = *s.immunity;
  if (s.pending_ttl) o.pending_ttl = *s.pending_ttl;
  if (s.bulk_threshold) o.bulk_threshold = *s.bulk_threshold;
  if (s.sweep_interval) o.sweep_interval = *s.sweep_interval;
  if (s.idempotency_retention) o.idempotency_retention = *s.idempotency_retention;
  return o;
}

}  // namespace quell::cli
