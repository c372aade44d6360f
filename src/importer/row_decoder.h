// Decoding one row of a bulk file into an engine::Detection: the pure, untrusted-input
// part of `quell import` (the fuzz target fuzz/import_row_fuzz.cc drives it). Every row,
// whatever its format, becomes a RapidJSON object read by api::ReadDetection, so a row
// is valid exactly when the same detection would be accepted by POST /v1/detections.
//
// Row errors are kInvalidArgument with a message for people, naming the field
// ("score: must be between 0 and 1") or the place ("invalid UTF-8 at byte 17").
//
// Thread-safety: pure functions; CsvHeader is immutable after Parse.
#ifndef QUELL_IMPORTER_ROW_DECODER_H_
#define QUELL_IMPORTER_ROW_DECODER_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "api/detection_codec.h"
#include "engine/engine.h"
#include "rapidjson/document.h"

namespace quell::importer {

enum class Format { kNdjson, kCsv, kAvro };

std::string_view FormatName(Format f);
//! "ndjson" (also "jsonl", "json"), "csv", "avro"; kInvalidArgument otherwise.
absl::StatusOr<Format> ParseFormat(std::string_view name);
//! From the file name, ignoring a .gz/.zst/.zstd suffix: .ndjson/.jsonl/.json, .csv,
//! .avro. nullopt when the name says nothing (stdin, other extensions).
std::optional<Format> FormatFromName(std::string_view path);
//! From the first decompressed bytes: "Obj\x01" is Avro, a '{' first is NDJSON, else CSV.
Format FormatFromContent(std::string_view head);

struct DecodeOptions {
  absl::Time now = absl::InfiniteFuture();  // observed_at may be at most limits' skew ahead
  api::DetectionLimits limits;
};

//! kInvalidArgument "invalid UTF-8 at byte N of the row" unless `text` is valid UTF-8,
//! or "NUL byte at byte N of the row" for a raw NUL (never valid in a JSON or CSV text;
//! a JSON parser would take it for the end of the row and drop what follows).
absl::Status CheckRowUtf8(std::string_view text);

//! kInvalidArgument ("<what>JSON nested deeper than 100 levels at byte N", 1-based) if
//! `text` nests arrays and objects deeper than core::kMaxJsonDepth: checked before any
//! parser, which recurses per level.
absl::Status CheckJsonDepth(std::string_view text, std::string_view what);

//! Reads a detection from a JSON value (a parsed row), as POST /v1/detections would.
absl::StatusOr<engine::Detection> DecodeJsonValue(const rapidjson::Value& value,
                                                  const DecodeOptions& options);

//! One NDJSON line (without its newline).
absl::StatusOr<engine::Detection> DecodeJsonRow(std::string_view text,
                                                const DecodeOptions& options);

//! The CSV columns Quell knows. Required: id, source, type, entity, score, observed_at.
//! Optional: evidence (a JSON object), related (entities separated by '|').
class CsvHeader {
 public:
  //! Parses the header line. kInvalidArgument for an unknown or repeated column, or a
  //! missing required one: these refuse the whole file.
  static absl::StatusOr<CsvHeader> Parse(std::string_view line);
  size_t columns() const { return names_.size(); }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<std::string> names_;
};

//! Splits one CSV record (RFC 4180: ',' separated, '"' quoted with "" escapes, newlines
//! allowed inside quotes) into `fields`. kInvalidArgument for malformed quoting.
absl::Status SplitCsvRecord(std::string_view text, std::vector<std::string>* fields);

//! One CSV record (without its final newline) under `header`.
absl::StatusOr<engine::Detection> DecodeCsvRow(const CsvHeader& header, std::string_view text,
                                               const DecodeOptions& options);

//! Builds the JSON object of a CSV record already split into fields (one per column).
//! Used by DecodeCsvRow and the Avro reader's string fields.
absl::StatusOr<engine::Detection> DecodeFields(const std::vector<std::string>& names,
                                               const std::vector<std::string>& fields,
                                               const DecodeOptions& options);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_ROW_DECODER_H_
