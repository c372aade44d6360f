#include "cli/check_cmd.h"

#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "http_client/http_client.h"
#include "rapidjson/document.h"

namespace quell::cli {
namespace {

// A person is waiting: a server that accepted and never answers is given up after this.
constexpr absl::Duration kTimeout = absl::Seconds(30);

constexpr char kCheckUsage[] = R"(usage: quell check ENTITY... [flags]

The verdict on the entities (deny > challenge > throttle > allow), as product services get
it, and the mitigations that make it: asks a running server (POST /v1/check).

  --server URL     the server (default $QUELL_SERVER, else http://127.0.0.1:8080)
  --key KEY        an enforcer, reviewer, viewer or admin key (default $QUELL_KEY)
  --surface NAME   only actions that apply to this surface (payout, login...)
  --json           the server's answer as it is, on one line

Exit status: 0 the verdict was printed (whatever it is), 1 no verdict (the server did
not answer within 30 s, or refused the key), 2 bad usage (an entity the server reads as
malformed included).
)";

int CheckUsage(const std::string& message) {
  if (!message.empty()) std::cerr << "quell check: " << message << "\n\n";
  std::cerr << kCheckUsage;
  return kUsage;
}

int Failure(std::string_view message) {
  std::cerr << "quell check: " << message << "\n";
  return kFailure;
}

std::string Str(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString()
             ? std::string(it->value.GetString(), it->value.GetStringLength())
             : std::string();
}

}  // namespace

int CheckCommand(const std::vector<std::string>& args) {
  auto flags = Flags::Parse(args, {"server", "key", "surface"}, {"json", "help"});
  if (!flags.ok()) return CheckUsage(std::string(SV(flags.status().message())));
  if (flags->Has("help")) {
    std::cout << kCheckUsage;
    return kOk;
  }
  const std::vector<std::string>& entities = flags->positional();
  if (entities.empty()) return CheckUsage("name at least one entity (type:id)");
  std::string server = "http://127.0.0.1:8080";
  if (const char* env = std::getenv("QUELL_SERVER")) server = env;
  if (auto v = flags->Get("server")) server = *v;
  std::string key;
  if (const char* env = std::getenv("QUELL_KEY")) key = env;
  if (auto v = flags->Get("key")) key = *v;
  if (key.empty()) return CheckUsage("--key KEY (or QUELL_KEY) is needed");
  auto url = http_client::ParseUrl(server);
  if (!url.ok()) return CheckUsage(absl::StrCat("--server: ", url.status().message()));

  std::string body = "{\"entities\":[";
  for (size_t i = 0; i < entities.size(); ++i) {
    if (i) body += ',';
    core::AppendJsonString(entities[i], &body);
  }
  body += "]";
  if (auto s = flags->Get("surface")) {
    body += ",\"surface\":";
    core::AppendJsonString(*s, &body);
  }
  body += "}";
  http_client::HttpConnection conn(*url);
  auto reply = conn.Request(
      "POST", "/v1/check",
      {{"Authorization", absl::StrCat("Bearer ", key)}, {"Content-Type", "application/json"}}, body,
      kTimeout);
  if (!reply.ok()) return Failure(absl::StrCat(server, ": ", reply.status().message()));
  rapidjson::Document doc;
  doc.Parse(reply->body.data(), reply->body.size());
  if (reply->status != 200) {
    std::string message = reply->body;
    if (!doc.HasParseError() && doc.IsObject() && doc.HasMember("error") &&
        doc["error"].IsObject()) {
      message = Str(doc["error"], "message");
    }
    if (reply->status == 400) {  // the server read the request as malformed: the input
      std::cerr << "quell check: " << message << "\n";
      return kUsage;
    }
    return Failure(absl::StrCat("HTTP ", reply->status, ": ", message));
  }
  if (flags->Has("json")) {
    std::cout << reply->body << "\n";
    return kOk;
  }
  if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("mitigations") ||
      !doc["mitigations"].IsArray()) {
    return Failure("the server's answer is not a check result");
  }
  std::cout << "verdict: " << Str(doc, "verdict") << "\n";
  for (const rapidjson::Value& m : doc["mitigations"].GetArray()) {
    if (!m.IsObject()) continue;
    // entity (the asked one, or the covering network), action (verdict), until, id.
    std::cout << "  " << Str(m, "entity") << "  " << Str(m, "action") << " (" << Str(m, "verdict")
              << ") until " << Str(m, "expires_at") << "  " << Str(m, "id");
    std::cout << "\n";
    // Why, if the key may read mitigations (an enforcer key may not: the verdict stands).
    auto detail = conn.Request("GET", absl::StrCat("/v1/mitigations/", Str(m, "id")),
                               {{"Authorization", absl::StrCat("Bearer ", key)}}, "", kTimeout);
    rapidjson::Document d;
    if (detail.ok() && detail->status == 200 &&
        !d.Parse(detail->body.data(), detail->body.size()).HasParseError() && d.IsObject()) {
      std::string policy = Str(d, "policy"), why = Str(d, "state_reason");
      if (why.empty()) why = Str(d, "reason");
      std::cout << "    " << (policy.empty() ? "manual" : "policy " + policy) << ", by "
                << Str(d, "actor") << ": " << why << "\n";
    }
  }
  if (doc["mitigations"].Empty()) std::cout << "  (no active mitigation)\n";
  return kOk;
}

}  // namespace quell::cli
