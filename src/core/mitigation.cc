#include "core/mitigation.h"

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/time.h"
#include "rapidjson/document.h"

namespace quell::core {
namespace {

constexpr std::string_view kStateNames[] = {"pending_approval", "scheduled", "active",
                                            "expired",          "revoked",   "shadow",
                                            "rejected",         "suppressed"};

}  // namespace

std::string_view StateName(MitigationState s) { return kStateNames[static_cast<int>(s)]; }

std::optional<MitigationState> ParseState(std::string_view name) {
  for (size_t i = 0; i < std::size(kStateNames); ++i) {
    if (kStateNames[i] == name) return static_cast<MitigationState>(i);
  }
  return std::nullopt;
}

bool IsLive(MitigationState s) {
  return s == MitigationState::kPendingApproval || s == MitigationState::kScheduled ||
         s == MitigationState::kActive;
}

namespace {

// True for the bytes a JSON string cannot hold as they are.
constexpr bool NeedsEscape(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

}  // namespace

void AppendJsonString(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  // Copies each run of plain bytes in one append: ids, entities and names have no byte to
  // escape, so this is usually one append per string (serialisation is on the commit
  // thread and the snapshot's hot path).
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (!NeedsEscape(c)) continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void AppendMitigationJson(const Mitigation& m, std::string* out) {
  auto field = [out](std::string_view name, std::string_view value) {
    out->push_back('"');
    out->append(name);
    out->append("\":");
    AppendJsonString(value, out);
    out->push_back(',');
  };
  out->push_back('{');
  field("id", m.id);
  field("entity", m.entity.str());
  field("action", m.action);
  field("state", StateName(m.state));
  field("created_at", FormatRfc3339(m.created_at));
  field("updated_at", FormatRfc3339(m.updated_at));
  field("starts_at", FormatRfc3339(m.starts_at));
  field("expires_at", FormatRfc3339(m.expires_at));
  field("reason", m.reason);
  field("source", m.source);
  field("policy", m.policy);
  absl::StrAppend(out, "\"policy_version\":", m.policy_version, ",");
  field("actor", m.actor);
  field("batch", m.batch);
  out->append("\"detections\":[");
  for (size_t i = 0; i < m.detections.size(); ++i) {
    if (i) out->push_back(',');
    AppendJsonString(m.detections[i], out);
  }
  out->append("],");
  field("state_reason", m.state_reason);
  absl::StrAppend(out, "\"seq\":", m.seq, "}");
}

std::string MitigationToJson(const Mitigation& m) {
  std::string out;
  out.reserve(512);
  AppendMitigationJson(m, &out);
  return out;
}

absl::StatusOr<Mitigation> MitigationFromJson(std::string_view json) {
  // A stored record is a few hundred bytes: its DOM fits in these buffers, and the parse
  // allocates nothing of its own (a default Document mallocs a 64 KiB chunk per parse).
  char value_buffer[4096];
  char parse_buffer[1024];
  rapidjson::MemoryPoolAllocator<> value_alloc(value_buffer, sizeof(value_buffer));
  rapidjson::MemoryPoolAllocator<> parse_alloc(parse_buffer, sizeof(parse_buffer));
  rapidjson::GenericDocument<rapidjson::UTF8<>, rapidjson::MemoryPoolAllocator<>,
                             rapidjson::MemoryPoolAllocator<>>
      doc(&value_alloc, sizeof(parse_buffer), &parse_alloc);
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError("mitigation: malformed JSON");
  }
  Mitigation m;
  auto view = [&](const char* name, std::string_view* out) -> absl::Status {
    auto it = doc.FindMember(name);
    if (it == doc.MemberEnd() || !it->value.IsString()) {
      return absl::InvalidArgumentError(absl::StrCat("mitigation: missing string ", name));
    }
    *out = std::string_view(it->value.GetString(), it->value.GetStringLength());
    return absl::OkStatus();
  };
  auto str = [&](const char* name, std::string* out) -> absl::Status {
    std::string_view v;
    if (auto st = view(name, &v); !st.ok()) return st;
    out->assign(v);
    return absl::OkStatus();
  };
  auto time = [&](const char* name, absl::Time* out) -> absl::Status {
    std::string_view v;
    if (auto st = view(name, &v); !st.ok()) return st;
    auto t = ParseRfc3339(v);
    if (!t.ok()) return t.status();
    *out = *t;
    return absl::OkStatus();
  };
  std::string_view entity, state;
  for (auto st :
       {str("id", &m.id), view("entity", &entity), str("action", &m.action), view("state", &state),
        time("created_at", &m.created_at), time("updated_at", &m.updated_at),
        time("starts_at", &m.starts_at), time("expires_at", &m.expires_at),
        str("reason", &m.reason), str("source", &m.source), str("policy", &m.policy),
        str("actor", &m.actor), str("batch", &m.batch), str("state_reason", &m.state_reason)}) {
    if (!st.ok()) return st;
  }
  auto e = Entity::Parse(entity);
  if (!e.ok()) return e.status();
  m.entity = *std::move(e);
  auto s = ParseState(state);
  if (!s) return absl::InvalidArgumentError("mitigation: unknown state");
  m.state = *s;
  auto pv = doc.FindMember("policy_version");
  auto seq = doc.FindMember("seq");
  auto det = doc.FindMember("detections");
  if (pv == doc.MemberEnd() || !pv->value.IsInt64() || seq == doc.MemberEnd() ||
      !seq->value.IsInt64() || det == doc.MemberEnd() || !det->value.IsArray()) {
    return absl::InvalidArgumentError("mitigation: missing policy_version, seq or detections");
  }
  m.policy_version = pv->value.GetInt64();
  m.seq = seq->value.GetInt64();
  m.detections.reserve(det->value.Size());
  for (const auto& d : det->value.GetArray()) {
    if (!d.IsString()) return absl::InvalidArgumentError("mitigation: detections must be strings");
    m.detections.emplace_back(d.GetString(), d.GetStringLength());
  }
  return m;
}

}  // namespace quell::core
