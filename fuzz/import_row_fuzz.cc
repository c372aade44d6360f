// Fuzzes the row decoders of `quell import` (untrusted bulk files): NDJSON rows, CSV rows
// under a fixed header, and whole inputs through RowReader (CSV record splitting with
// quotes spanning lines, the row-size limit, compression sniffing, NDJSON rows kept as
// text), and the server's half of an import through a server: an NDJSON body split into
// lines and parsed (api::SplitNdjsonLines, DetectionIntake::ParseTexts). Properties:
// never crash; a decoded detection, written back as JSON, decodes to the same JSON; a
// line is never blank nor holds a newline, and a text that did not parse is an empty
// object.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "api/detection_codec.h"
#include "api/detection_intake.h"
#include "api/json_reader.h"
#include "core/utf8.h"
#include "importer/reader.h"
#include "importer/row_decoder.h"

namespace {

using quell::importer::DecodeOptions;

void CheckRoundTrip(const quell::engine::Detection& d, const DecodeOptions& o) {
  std::string json = quell::api::DetectionToJson(d);
  auto again = quell::importer::DecodeJsonRow(json, o);
  if (!again.ok() || quell::api::DetectionToJson(*again) != json) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 4;
  const bool variant = (data[0] & 8) != 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  DecodeOptions o;  // now = infinite future: no time-dependent outcomes
  switch (mode) {
    case 0: {
      if (!variant) {
        auto d = quell::importer::DecodeJsonRow(in, o);
        if (d.ok()) CheckRoundTrip(*d, o);
        break;
      }
      std::vector<std::string_view> lines = quell::api::SplitNdjsonLines(in);
      for (std::string_view line : lines) {
        if (line.find('\n') != line.npos || line.find_first_not_of(" \t\r") == line.npos)
          std::abort();
      }
      auto parsed = quell::api::DetectionIntake::ParseTexts(lines);
      for (size_t i = 0; i < lines.size(); ++i) {
        const rapidjson::Value& v = parsed->values[i];
        if (parsed->unparsed[i] && !(v.IsObject() && v.MemberCount() == 0)) std::abort();
        std::vector<quell::api::FieldError> errors;
        auto d = quell::api::ReadDetection(v, "", absl::InfiniteFuture(), {}, &errors);
        if (d.ok()) CheckRoundTrip(*d, o);
      }
      break;
    }
    case 1: {
      static const auto* header = new quell::importer::CsvHeader(*quell::importer::CsvHeader::Parse(
          "id,source,type,entity,score,observed_at,evidence,related"));
      auto d = quell::importer::DecodeCsvRow(*header, in, o);
      if (d.ok()) CheckRoundTrip(*d, o);
      break;
    }
    default: {
      quell::importer::ReaderOptions ro;
      ro.max_row_bytes = 256;
      ro.ndjson_as_text = variant;
      auto format = mode == 2 ? quell::importer::Format::kCsv : quell::importer::Format::kNdjson;
      auto reader = quell::importer::RowReader::Open(
          quell::importer::ByteSource::FromString(std::string(in)), format, ro);
      if (!reader.ok()) break;
      quell::importer::Row row;
      int64_t last_line = 0;
      for (int i = 0; i < 10000; ++i) {
        auto got = (*reader)->Next(&row);
        if (!got.ok() || !*got) break;
        if (row.line <= last_line) std::abort();  // line numbers strictly increase
        last_line = row.line;
        // Exactly one of: decoded, kept as text (valid UTF-8, one line), rejected.
        const int forms = row.detection.has_value() + !row.json.empty() + !row.error.empty();
        if (forms != 1) std::abort();
        if (!row.json.empty() &&
            (quell::core::FindInvalidUtf8(row.json) || row.json.find('\n') != row.json.npos))
          std::abort();
        if (row.text.size() > quell::importer::kMaxRejectText) std::abort();
      }
      break;
    }
  }
  return 0;
}
