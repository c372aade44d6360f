#include "importer/row_decoder.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/json_text.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/utf8.h"
#include "rapidjson/error/en.h"

namespace quell::importer {
namespace {

constexpr std::string_view kRequired[] = {"id", "source", "type", "entity", "score", "observed_at"};
constexpr std::string_view kOptional[] = {"evidence", "related"};

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::string_view FormatName(Format f) {
  switch (f) {
    case Format::kNdjson:
      return "ndjson";
    case Format::kCsv:
      return "csv";
    case Format::kAvro:
      return "avro";
  }
  return "ndjson";
}

absl::StatusOr<Format> ParseFormat(std::string_view name) {
  if (name == "ndjson" || name == "jsonl" || name == "json") return Format::kNdjson;
  if (name == "csv") return Format::kCsv;
  if (name == "avro") return Format::kAvro;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown format \"", AV(name), "\" (ndjson, csv or avro)"));
}

std::optional<Format> FormatFromName(std::string_view path) {
  for (std::string_view z : {".gz", ".zst", ".zstd"}) {
    if (EndsWith(path, z)) {
      path.remove_suffix(z.size());
      break;
    }
  }
  if (EndsWith(path, ".ndjson") || EndsWith(path, ".jsonl") || EndsWith(path, ".json")) {
    return Format::kNdjson;
  }
  if (EndsWith(path, ".csv")) return Format::kCsv;
  if (EndsWith(path, ".avro")) return Format::kAvro;
  return std::nullopt;
}

Format FormatFromContent(std::string_view head) {
  if (head.size() >= 4 && head.substr(0, 4) == std::string_view("Obj\x01", 4)) return Format::kAvro;
  if (head.size() >= 3 && head.substr(0, 3) == "\xEF\xBB\xBF") head.remove_prefix(3);
  for (char c : head) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    return c == '{' ? Format::kNdjson : Format::kCsv;
  }
  return Format::kNdjson;
}

absl::StatusOr<engine::Detection> DecodeJsonValue(const rapidjson::Value& value,
                                                  const DecodeOptions& options) {
  if (!value.IsObject()) return absl::InvalidArgumentError("a row must be a JSON object");
  std::vector<api::FieldError> errors;
  auto d = api::ReadDetection(value, "", options.now, options.limits, &errors);
  if (d.ok()) return d;
  std::vector<std::string> parts;
  for (const api::FieldError& e : errors) parts.push_back(absl::StrCat(e.field, ": ", e.message));
  if (parts.empty()) return d.status();
  return absl::InvalidArgumentError(absl::StrJoin(parts, "; "));
}

absl::Status CheckJsonDepth(std::string_view text, std::string_view what) {
  if (std::optional<size_t> at = core::FindJsonNestingOver(text)) {
    return absl::InvalidArgumentError(absl::StrCat(
        AV(what), "JSON nested deeper than ", core::kMaxJsonDepth, " levels at byte ", *at + 1));
  }
  return absl::OkStatus();
}

absl::Status CheckRowUtf8(std::string_view text) {
  if (auto bad = core::FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid UTF-8 at byte ", *bad + 1, " of the row"));
  }
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("NUL byte at byte ", nul + 1, " of the row"));
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::Detection> DecodeJsonRow(std::string_view text,
                                                const DecodeOptions& options) {
  QUELL_RETURN_IF_ERROR(CheckRowUtf8(text));
  QUELL_RETURN_IF_ERROR(CheckJsonDepth(text, ""));
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseFullPrecisionFlag>(text.data(), text.size());  // as the API reads
  if (doc.HasParseError()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at byte ", doc.GetErrorOffset() + 1, ": ",
                     rapidjson::GetParseError_En(doc.GetParseError())));
  }
  return DecodeJsonValue(doc, options);
}

absl::StatusOr<CsvHeader> CsvHeader::Parse(std::string_view line) {
  if (line.size() >= 3 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::vector<std::string> fields;
  if (auto s = SplitCsvRecord(line, &fields); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("CSV header: ", s.message()));
  }
  CsvHeader h;
  for (std::string& f : fields) {
    std::string name(absl::StripAsciiWhitespace(f));
    bool known = false;
    for (std::string_view k : kRequired) known |= name == k;
    for (std::string_view k : kOptional) known |= name == k;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CSV header: unknown column \"", name,
          "\" (columns: id, source, type, entity, score, observed_at, evidence, related)"));
    }
    for (const std::string& seen : h.names_) {
      if (seen == name) {
        return absl::InvalidArgumentError(
            absl::StrCat("CSV header: column \"", name, "\" appears twice"));
      }
    }
    h.names_.push_back(std::move(name));
  }
  for (std::string_view k : kRequired) {
    bool found = false;
    for (const std::string& n : h.names_) found |= n == k;
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("CSV header: missing required column \"", AV(k),
                       "\" (required: id, source, type, entity, score, observed_at)"));
    }
  }
  return h;
}

absl::Status SplitCsvRecord(std::string_view text, std::vector<std::string>* fields) {
  fields->clear();
  size_t i = 0;
  const size_t n = text.size();
  for (;;) {
    std::string field;
    if (i < n && text[i] == '"') {
      ++i;
      for (;;) {
        if (i >= n) {
          return absl::InvalidArgumentError(
              absl::StrCat("unterminated quoted field in column ", fields->size() + 1));
        }
        char c = text[i++];
        if (c == '"') {
          if (i < n && text[i] == '"') {
            field.push_back('"');
            ++i;
          } else {
            break;
          }
        } else {
          field.push_back(c);
        }
      }
      if (i < n && text[i] != ',') {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected text after the closing quote in column ", fields->size() + 1));
      }
    } else {
      size_t end = text.find(',', i);
      if (end == std::string_view::npos) end = n;
      std::string_view raw = text.substr(i, end - i);
      if (raw.find('"') != std::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("a quote inside an unquoted field in column ", fields->size() + 1));
      }
      field.assign(raw);
      i = end;
    }
    fields->push_back(std::move(field));
    if (i >= n) break;
    ++i;  // the comma
    if (i == n) {
      fields->emplace_back();  // a trailing comma ends with an empty field
      break;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::Detection> DecodeFields(const std::vector<std::string>& names,
                                               const std::vector<std::string>& fields,
                                               const DecodeOptions& options) {
  rapidjson::Document doc;
  doc.SetObject();
  auto& a = doc.GetAllocator();
  for (size_t i = 0; i < names.size() && i < fields.size(); ++i) {
    const std::string& name = names[i];
    const std::string& v = fields[i];
    rapidjson::Value key(rapidjson::StringRef(name.data(), name.size()));
    if (name == "score") {
      char* end = nullptr;
      std::string trimmed(absl::StripAsciiWhitespace(v));
      // A decimal number only: strtod also reads hex ("0x1", "0x0.8p0"), "nan" and "inf".
      const bool decimal = trimmed.find_first_not_of("0123456789.eE+-") == std::string::npos;
      double x = decimal ? std::strtod(trimmed.c_str(), &end) : 0;
      if (decimal && !trimmed.empty() && end == trimmed.c_str() + trimmed.size()) {
        doc.AddMember(key, rapidjson::Value(x), a);
        continue;
      }
      // Not a number: ReadDetection names the field and the expected type.
    } else if (name == "evidence") {
      if (v.empty()) continue;
      QUELL_RETURN_IF_ERROR(CheckJsonDepth(v, "evidence: "));
      rapidjson::Document ev(&a);
      ev.Parse<rapidjson::kParseFullPrecisionFlag>(v.data(), v.size());
      if (ev.HasParseError()) {
        return absl::InvalidArgumentError(
            absl::StrCat("evidence: not valid JSON at byte ", ev.GetErrorOffset() + 1, ": ",
                         rapidjson::GetParseError_En(ev.GetParseError())));
      }
      doc.AddMember(key, rapidjson::Value(ev, a), a);
      continue;
    } else if (name == "related") {
      if (v.empty()) continue;
      rapidjson::Value arr(rapidjson::kArrayType);
      for (absl::string_view part : absl::StrSplit(v, '|')) {
        arr.PushBack(
            rapidjson::Value(part.data(), static_cast<rapidjson::SizeType>(part.size()), a), a);
      }
      doc.AddMember(key, arr, a);
      continue;
    }
    doc.AddMember(key, rapidjson::Value(v.data(), static_cast<rapidjson::SizeType>(v.size()), a),
                  a);
  }
  return DecodeJsonValue(doc, options);
}

absl::StatusOr<engine::Detection> DecodeCsvRow(const CsvHeader& header, std::string_view text,
                                               const DecodeOptions& options) {
  QUELL_RETURN_IF_ERROR(CheckRowUtf8(text));
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  std::vector<std::string> fields;
  if (auto s = SplitCsvRecord(text, &fields); !s.ok()) return s;
  if (fields.size() != header.columns()) {
    return absl::InvalidArgumentError(absl::StrCat("wrong column count: the header has ",
                                                   header.columns(), " columns, this row ",
                                                   fields.size()));
  }
  return DecodeFields(header.names(), fields, options);
}

}  // namespace quell::importer
