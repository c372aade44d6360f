#include "client/internal/feed.h"

#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "rapidjson/document.h"

namespace quell::client::internal {
namespace {

absl::Status Bad(std::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed feed: ", AV(what)));
}

std::string_view Str(const rapidjson::Value& v) { return {v.GetString(), v.GetStringLength()}; }

// An RFC 3339 time as microseconds since the epoch. core::ParseRfc3339 reads the form
// the server writes without absl::ParseTime (a million-line snapshot notices).
bool UtcMicros(std::string_view t, int64_t* out) {
  absl::StatusOr<absl::Time> parsed = core::ParseRfc3339(t);
  if (!parsed.ok()) return false;
  *out = core::ToMicros(*parsed);
  return true;
}

const rapidjson::Value* Member(const rapidjson::Value& obj, const char* name) {
  auto it = obj.FindMember(name);
  return it == obj.MemberEnd() ? nullptr : &it->value;
}

absl::StatusOr<FeedItem> ReadMitigation(const rapidjson::Value& m) {
  if (!m.IsObject()) return Bad("mitigation is not an object");
  const rapidjson::Value* id = Member(m, "id");
  const rapidjson::Value* entity = Member(m, "entity");
  const rapidjson::Value* action = Member(m, "action");
  const rapidjson::Value* state = Member(m, "state");
  const rapidjson::Value* expires = Member(m, "expires_at");
  if (id == nullptr || !id->IsString() || entity == nullptr || !entity->IsString() ||
      action == nullptr || !action->IsString() || state == nullptr || !state->IsString() ||
      expires == nullptr || !expires->IsString()) {
    return Bad("mitigation without id, entity, action, state or expires_at");
  }
  FeedItem item;
  item.id = std::string(Str(*id));
  auto e = core::Entity::Parse(Str(*entity));
  if (!e.ok()) return Bad(absl::StrCat("entity: ", e.status().message()));
  item.entity = *std::move(e);
  item.action = std::string(Str(*action));
  item.active = Str(*state) == "active";
  if (!UtcMicros(Str(*expires), &item.expires_us)) return Bad("expires_at");
  return item;
}

}  // namespace

absl::StatusOr<int64_t> ParseSnapshotHeader(std::string_view line) {
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  if (doc.HasParseError() || !doc.IsObject()) return Bad("snapshot header");
  const rapidjson::Value* seq = Member(doc, "seq");
  if (seq == nullptr || !seq->IsInt64() || seq->GetInt64() < 0) return Bad("snapshot seq");
  return seq->GetInt64();
}

namespace {

// Consumes `literal` at the front of `s`.
bool Eat(std::string_view* s, std::string_view literal) {
  if (s->substr(0, literal.size()) != literal) return false;
  s->remove_prefix(literal.size());
  return true;
}

// Consumes a JSON string's content up to its closing quote (which it also consumes),
// accepting only what needs no unescaping: no backslash, no control character.
bool EatPlainString(std::string_view* s, std::string_view* value) {
  size_t i = 0;
#if defined(__SSE2__)
  // 16 bytes at a time up to the first one that is a quote, a backslash or a control
  // character; the loop below decides on that one.
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i control_max = _mm_set1_epi8(0x1f);
  for (; i + 16 <= s->size(); i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s->data() + i));
    const __m128i special =
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                     _mm_cmpeq_epi8(_mm_min_epu8(v, control_max), v));
    const int mask = _mm_movemask_epi8(special);
    if (mask != 0) {
      i += static_cast<size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
      break;
    }
  }
#endif
  for (; i < s->size(); ++i) {
    const unsigned char c = static_cast<unsigned char>((*s)[i]);
    if (c == '"') {
      *value = s->substr(0, i);
      s->remove_prefix(i + 1);
      return true;
    }
    if (c == '\\' || c < 0x20) return false;
  }
  return false;
}

}  // namespace

bool ParseEnforcementView(std::string_view line, EnforcementView* out) {
  std::string_view expires;
  return Eat(&line, "{\"id\":\"") && EatPlainString(&line, &out->id) &&
         Eat(&line, ",\"entity\":\"") && EatPlainString(&line, &out->entity) &&
         Eat(&line, ",\"action\":\"") && EatPlainString(&line, &out->action) &&
         Eat(&line, ",\"state\":\"active\",\"expires_at\":\"") && EatPlainString(&line, &expires) &&
         line == "}" && UtcMicros(expires, &out->expires_us);
}

bool ParseEnforcementLine(std::string_view line, FeedItem* out) {
  EnforcementView v;
  if (!ParseEnforcementView(line, &v)) return false;
  auto e = core::Entity::Parse(v.entity);
  if (!e.ok()) return false;
  out->seq = 0;
  out->id.assign(v.id);
  out->entity = *std::move(e);
  out->action.assign(v.action);
  out->active = true;
  out->expires_us = v.expires_us;
  return true;
}

absl::StatusOr<FeedItem> ParseSnapshotLineJson(std::string_view line) {
  rapidjson::Document doc;
  doc.Parse(line.data(), line.size());
  if (doc.HasParseError()) return Bad("snapshot line");
  QUELL_ASSIGN_OR_RETURN(FeedItem item, ReadMitigation(doc));
  if (!item.active) return Bad("snapshot holds an inactive mitigation");
  return item;
}

absl::StatusOr<FeedItem> ParseSnapshotLine(std::string_view line) {
  FeedItem item;
  if (ParseEnforcementLine(line, &item)) return item;
  return ParseSnapshotLineJson(line);
}

absl::StatusOr<ChangesPage> ParseChangesPage(std::string_view body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) return Bad("changes page");
  const rapidjson::Value* changes = Member(doc, "changes");
  const rapidjson::Value* next = Member(doc, "next");
  if (changes == nullptr || !changes->IsArray() || next == nullptr || !next->IsInt64()) {
    return Bad("changes page without changes or next");
  }
  ChangesPage page;
  page.next = next->GetInt64();
  page.items.reserve(changes->Size());
  for (const rapidjson::Value& c : changes->GetArray()) {
    if (!c.IsObject()) return Bad("change is not an object");
    const rapidjson::Value* seq = Member(c, "seq");
    const rapidjson::Value* op = Member(c, "op");
    const rapidjson::Value* m = Member(c, "mitigation");
    if (seq == nullptr || !seq->IsInt64() || op == nullptr || !op->IsString() || m == nullptr) {
      return Bad("change without seq, op or mitigation");
    }
    QUELL_ASSIGN_OR_RETURN(FeedItem item, ReadMitigation(*m));
    item.seq = seq->GetInt64();
    std::string_view o = Str(*op);
    if (o != "upsert" && o != "delete") return Bad("op");
    // The op decides (the server derives it from the state, as we would).
    item.active = o == "upsert";
    page.items.push_back(std::move(item));
  }
  return page;
}

}  // namespace quell::client::internal
