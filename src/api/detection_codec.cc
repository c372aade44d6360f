#include "api/detection_codec.h"

#include "absl/strings/str_cat.h"
#include "api/json_reader.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "core/time.h"
#include "core/utf8.h"
#include "ledger/store.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::api {
namespace {

bool ValidDetectionType(std::string_view t) {
  if (t.empty() || t.size() > 64 || t[0] < 'a' || t[0] > 'z') return false;
  for (char c : t) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

// 1 to `max` bytes, no control character.
bool ValidName(std::string_view s, size_t max = 128) {
  return !s.empty() && s.size() <= max && !core::HasControlCharacter(s);
}

}  // namespace

bool ValidBatchId(std::string_view batch) {
  return !batch.empty() && batch.size() <= 64 && ValidName(batch) &&
         !core::FindInvalidUtf8(batch).has_value();
}

absl::StatusOr<engine::Detection> ReadDetection(const rapidjson::Value& value,
                                                const std::string& path, absl::Time now,
                                                const DetectionLimits& limits,
                                                std::vector<FieldError>* errors) {
  size_t before = errors->size();
  ObjectReader r(value, path, errors);
  engine::Detection d;
  auto id = r.String("id", true, 256);
  auto source = r.String("source", true, 128);
  auto type = r.String("type", true, 64);
  auto entity = r.String("entity", true, 300);
  auto score = r.Number("score", true);
  auto observed = r.String("observed_at", true, 64);
  const rapidjson::Value* evidence = r.Raw("evidence", false);
  auto related = r.Strings("related", false, limits.max_related);
  auto batch = r.String("batch", false, 64);  // the import batch (quell import)
  r.RejectUnknown();

  if (id) {
    if (!ValidName(*id, 256)) {  // the 129-256 byte ids were refused, the message said 256
      r.Fail("id", "must be 1-256 bytes without control characters");
    } else {
      d.id = *id;
    }
  }
  if (source) {
    if (!ValidName(*source)) {
      r.Fail("source", "must be 1-128 bytes without control characters");
    } else if (source->starts_with(core::kRuleSourcePrefix)) {
      // The real-time rules' own (POST /v1/events makes them "rule:<policy>"): a
      // backtest leaves those out, and a detector's must not be mistaken for them.
      r.Fail("source", "rule:… is reserved for the detections real-time rules make");
    } else {
      d.source = *source;
    }
  }
  if (type) {
    if (!ValidDetectionType(*type)) {
      r.Fail("type", "must match [a-z][a-z0-9_]{0,63}");
    } else {
      d.type = *type;
    }
  }
  if (entity) {
    auto e = core::Entity::Parse(*entity);
    if (e.ok()) {
      d.entity = *std::move(e);
    } else {
      r.Fail("entity", std::string(SV(e.status().message())));
    }
  }
  if (score) {
    if (*score < 0 || *score > 1) {
      r.Fail("score", "must be between 0 and 1");
    } else {
      d.score = *score;
    }
  }
  if (observed) {
    auto t = core::ParseRfc3339(*observed);
    if (!t.ok()) {
      r.Fail("observed_at", std::string(SV(t.status().message())));
    } else if (*t > now + limits.max_future_skew) {
      r.Fail("observed_at", absl::StrCat("is in the future (more than ",
                                         core::DurationString(limits.max_future_skew),
                                         " ahead of the server clock)"));
    } else {
      d.observed_at = *t;
    }
  }
  if (evidence != nullptr) {
    if (!evidence->IsObject()) {
      r.Fail("evidence", "must be a JSON object");
    } else {
      rapidjson::StringBuffer buf;
      rapidjson::Writer<rapidjson::StringBuffer> w(buf);
      evidence->Accept(w);
      if (buf.GetSize() > limits.max_evidence_bytes) {
        r.Fail("evidence", absl::StrCat("must be at most ", limits.max_evidence_bytes, " bytes"));
      } else if (std::string twice = RepeatedKey(*evidence); !twice.empty()) {
        r.Fail(absl::StrCat("evidence.", twice), "given twice");
      } else {
        d.evidence_json.assign(buf.GetString(), buf.GetSize());
      }
    }
  }
  if (related) {
    for (size_t i = 0; i < related->size(); ++i) {
      auto e = core::Entity::Parse((*related)[i]);
      if (e.ok()) {
        d.related.push_back(*std::move(e));
      } else {
        r.Fail(absl::StrCat("related[", i, "]"), std::string(SV(e.status().message())));
      }
    }
  }
  if (batch) {
    if (!ValidBatchId(*batch)) {
      r.Fail("batch", std::string(kBatchIdRule));
    } else {
      d.batch = *batch;
    }
  }
  if (errors->size() > before) {
    return absl::InvalidArgumentError((*errors)[before].message);
  }
  return d;
}

std::string DetectionToJson(const engine::Detection& d, size_t* head_bytes) {
  // The head is the store's (ledger::AppendDetectionJsonHead), so that a backend can
  // keep only the rest of the text.
  std::string out;
  ledger::AppendDetectionJsonHead(d.id, d.source, d.type, d.entity.str(), d.score, d.observed_at,
                                  &out);
  if (head_bytes != nullptr) *head_bytes = out.size();
  absl::StrAppend(&out, ",\"evidence\":", d.evidence_json, ",\"related\":[");
  for (size_t i = 0; i < d.related.size(); ++i) {
    if (i) out += ',';
    core::AppendJsonString(d.related[i].str(), &out);
  }
  out += "]";
  if (!d.batch.empty()) {
    out += ",\"batch\":";
    core::AppendJsonString(d.batch, &out);
  }
  out += "}";
  return out;
}

absl::StatusOr<engine::Detection> DetectionFromJson(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError("stored detection: malformed JSON");
  }
  std::vector<FieldError> errors;
  // Stored detections were valid when accepted; their time may be far in the past now.
  DetectionLimits limits;
  limits.max_future_skew = absl::InfiniteDuration();
  return ReadDetection(doc, "", absl::InfiniteFuture(), limits, &errors);
}

}  // namespace quell::api
