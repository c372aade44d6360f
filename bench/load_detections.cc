// Fills a data directory with N stored detections (ledger::StoredDetection) for the backtest
// benchmark, written straight through the Store in large transactions (Txn::PutDetection),
// without the HTTP path or the ledger's group commit: a loader, not a measurement.
//
//   load_detections --data DIR --policies FILE [--count 1000000] [--batch 50000]
//                   [--from RFC3339] [--span-hours 24] [--entities 300000] [--seed 1]
//
// The detections mimic a music-streaming day: mostly artificial_streaming from two bot
// models, then stream farms (related devices and an IP, evidence.asn), account takeover,
// payment fraud, trial abuse, chart manipulation, playlist stuffing and fake accounts, with
// uniform scores, over --entities users (so entities repeat: escalation and active() get
// exercised). observed_at rises evenly over [from, from + span). Each stored reply holds
// the decisions FILE makes for it (evaluated with an empty environment, no escalation), so
// that a backtest of FILE against this data compares like with like.
//
// Prints the count, the window to backtest ("--from X --to Y") and the rate. Exits
// non-zero on any store error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "engine/engine.h"
#include "ledger/sqlite/sqlite_store.h"
#include "policy/policy_set.h"

namespace quell::bench {
namespace {

struct Args {
  std::string data;
  std::string policies;
  int64_t count = 1000000;
  int64_t batch = 50000;
  absl::Time from = absl::FromUnixSeconds(1767225600);  // 2026-01-01
  int64_t span_hours = 24;
  int64_t entities = 300000;
  uint64_t seed = 1;
};

int Usage(const char* why) {
  std::fprintf(
      stderr,
      "load_detections: %s\n"
      "usage: load_detections --data DIR --policies FILE [--count N] [--batch N]\n"
      "                       [--from RFC3339] [--span-hours H] [--entities N] [--seed S]\n",
      why);
  return 2;
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view k = argv[i];
    std::string v = argv[i + 1];
    bool ok = true;
    if (k == "--data")
      a->data = v;
    else if (k == "--policies")
      a->policies = v;
    else if (k == "--count")
      ok = absl::SimpleAtoi(v, &a->count) && a->count > 0;
    else if (k == "--batch")
      ok = absl::SimpleAtoi(v, &a->batch) && a->batch > 0;
    else if (k == "--span-hours")
      ok = absl::SimpleAtoi(v, &a->span_hours) && a->span_hours > 0;
    else if (k == "--entities")
      ok = absl::SimpleAtoi(v, &a->entities) && a->entities > 0;
    else if (k == "--seed")
      ok = absl::SimpleAtoi(v, &a->seed);
    else if (k == "--from") {
      auto t = core::ParseRfc3339(v);
      ok = t.ok();
      if (ok) a->from = *t;
    } else {
      return false;
    }
    if (!ok) return false;
  }
  return (argc % 2) == 1 && !a->data.empty() && !a->policies.empty();
}

struct Kind {
  const char* type;
  const char* source;
  int weight;  // out of 100
};
constexpr Kind kKinds[] = {
    {"artificial_streaming", "bot-model-v3", 35},
    {"artificial_streaming", "bot-model-v4", 15},
    {"stream_farm", "farm-model", 10},
    {"account_takeover", "ato-model", 10},
    {"payment_fraud", "payments-model", 10},
    {"trial_abuse", "trial-model", 5},
    {"chart_manipulation", "charts-model", 5},
    {"playlist_stuffing", "charts-model", 5},
    {"fake_account", "signup-model", 5},
};

class Generator {
 public:
  explicit Generator(const Args& a) : args_(a), rng_(a.seed) {}

  engine::Detection Next(int64_t i) {
    engine::Detection d;
    int pick = static_cast<int>(rng_() % 100);
    const Kind* kind = &kKinds[0];
    for (const Kind& k : kKinds) {
      if (pick < k.weight) {
        kind = &k;
        break;
      }
      pick -= k.weight;
    }
    d.id = absl::StrCat("d", i);
    d.source = kind->source;
    d.type = kind->type;
    const uint64_t u = rng_() % static_cast<uint64_t>(args_.entities);
    std::string entity = std::string_view(d.type) == "payment_fraud" && (rng_() & 1)
                             ? absl::StrCat("payment:card-", u)
                             : absl::StrCat("user:u", u);
    d.entity = *core::Entity::Parse(entity);
    d.score = static_cast<double>(rng_() % 10000) / 10000.0;
    d.observed_at = args_.from + absl::Hours(args_.span_hours) *
                                     (static_cast<double>(i) / static_cast<double>(args_.count));
    d.evidence_json = "{}";
    if (d.type == "stream_farm") {
      static constexpr int kAsns[] = {14061, 16509, 3320, 7922};
      d.evidence_json = absl::StrCat("{\"asn\":", kAsns[rng_() % 4], "}");
      for (int k = 0; k < 3; ++k) {
        d.related.push_back(*core::Entity::Parse(absl::StrCat("device:f", u, "-", k)));
      }
      d.related.push_back(
          *core::Entity::Parse(absl::StrCat("ip:10.", u % 250, ".", i % 250, ".7")));
    } else if (d.type == "account_takeover") {
      d.evidence_json = (rng_() & 1) ? "{\"new_device\":true}" : "{\"new_device\":false}";
    } else if (d.type == "trial_abuse" || d.type == "chart_manipulation") {
      d.related.push_back(*core::Entity::Parse(absl::StrCat("user:u", (u + 1) % args_.entities)));
    }
    return d;
  }

 private:
  const Args& args_;
  std::mt19937_64 rng_;
};

// The normalised JSON the API stores (api::DetectionToJson's shape).
std::string ToJson(const engine::Detection& d) {
  std::string out = "{\"id\":";
  core::AppendJsonString(d.id, &out);
  out += ",\"source\":";
  core::AppendJsonString(d.source, &out);
  out += ",\"type\":";
  core::AppendJsonString(d.type, &out);
  out += ",\"entity\":";
  core::AppendJsonString(d.entity.str(), &out);
  absl::StrAppend(&out, ",\"score\":", d.score, ",\"observed_at\":\"",
                  core::FormatRfc3339(d.observed_at), "\",\"evidence\":", d.evidence_json,
                  ",\"related\":[");
  for (size_t i = 0; i < d.related.size(); ++i) {
    if (i) out += ',';
    core::AppendJsonString(d.related[i].str(), &out);
  }
  out += "]}";
  return out;
}

std::string Reply(const engine::Detection& d, const engine::Evaluation& ev, int64_t i) {
  std::string out = "{\"id\":";
  core::AppendJsonString(d.id, &out);
  out += ",\"source\":";
  core::AppendJsonString(d.source, &out);
  out += ",\"status\":\"accepted\",\"decisions\":[";
  for (size_t k = 0; k < ev.proposals.size(); ++k) {
    const engine::Proposal& p = ev.proposals[k];
    if (k) out += ',';
    absl::StrAppend(&out, "{\"mitigation_id\":\"m", i, "-", k, "\",\"entity\":");
    core::AppendJsonString(p.entity.str(), &out);
    out += ",\"action\":";
    core::AppendJsonString(p.action, &out);
    absl::StrAppend(&out, ",\"state\":\"",
                    p.shadow                         ? "shadow"
                    : p.delay > absl::ZeroDuration() ? "scheduled"
                                                     : "active",
                    "\",\"policy\":");
    core::AppendJsonString(p.policy, &out);
    out += ",\"reason\":";
    core::AppendJsonString(p.reason, &out);
    out += "}";
  }
  out += "]}";
  return out;
}

int Main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) return Usage("bad arguments");
  std::ifstream in(args.policies);
  std::stringstream text;
  text << in.rdbuf();
  auto set = policy::LoadPolicySet(text.str(), 1);
  if (!set.ok()) {
    std::fprintf(stderr, "load_detections: %s\n", std::string(set.status().message()).c_str());
    return 1;
  }
  auto store = ledger::OpenSqliteStore({.path = args.data, .synchronous_full = false});
  if (!store.ok()) {
    std::fprintf(stderr, "load_detections: %s\n", store.status().ToString().c_str());
    return 1;
  }
  Generator gen(args);
  policy::EmptyEnvironment env;
  const absl::Time received = absl::Now();
  const auto start = std::chrono::steady_clock::now();
  int64_t with_decisions = 0;
  for (int64_t done = 0; done < args.count;) {
    auto txn = (*store)->Begin(received);
    if (!txn.ok()) {
      std::fprintf(stderr, "load_detections: %s\n", txn.status().ToString().c_str());
      return 1;
    }
    const int64_t end = std::min(args.count, done + args.batch);
    for (; done < end; ++done) {
      engine::Detection d = gen.Next(done);
      engine::Evaluation ev = engine::Evaluate(**set, d, env, d.observed_at);
      with_decisions += !ev.proposals.empty();
      ledger::StoredDetection sd;
      sd.source = d.source;
      sd.id = d.id;
      sd.type = d.type;
      sd.entity = d.entity.str();
      sd.score = d.score;
      sd.observed_at = d.observed_at;
      sd.received_at = received;
      sd.json = ToJson(d);
      sd.reply = Reply(d, ev, done);
      if (auto st = (*txn)->PutDetection(sd); !st.ok()) {
        std::fprintf(stderr, "load_detections: %s\n", st.ToString().c_str());
        return 1;
      }
    }
    if (auto st = (*txn)->Commit(); !st.ok()) {
      std::fprintf(stderr, "load_detections: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("loaded %lld detections (%lld with decisions) in %.1f s (%.0f/s)\n",
              static_cast<long long>(args.count), static_cast<long long>(with_decisions), secs,
              static_cast<double>(args.count) / secs);
  std::printf("window: --from %s --to %s\n", core::FormatRfc3339(args.from).c_str(),
              core::FormatRfc3339(args.from + absl::Hours(args.span_hours)).c_str());
  return 0;
}

}  // namespace
}  // namespace quell::bench

int main(int argc, char** argv) { return quell::bench::Main(argc, argv); }
