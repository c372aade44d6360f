// Reading rows from one input: splits NDJSON lines and CSV records (quotes may span
// lines), or walks an Avro object container file, and decodes each row with
// row_decoder.h. Memory is bounded by the longest allowed row, whatever the file size.
//
// Two kinds of errors, documented in docs/import.md:
//   - row errors (bad JSON, wrong column count, invalid UTF-8, a row over the size limit,
//     a field that fails validation): the Row carries the error; reading continues;
//   - input errors (cannot open, empty input, unknown CSV column, an Avro schema that
//     does not fit, a truncated or corrupt compressed stream): Open or Next returns the
//     status and the file cannot be read further.
//
// Thread-safety: confined to one thread. Owns its ByteSource.
#ifndef QUELL_IMPORTER_READER_H_
#define QUELL_IMPORTER_READER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "importer/input.h"
#include "importer/row_decoder.h"

namespace quell::importer {

// Where a reader stands: after the last row it returned.
struct Position {
  uint64_t offset = 0;  // decompressed bytes consumed (text formats)
  int64_t line = 0;     // physical lines consumed (text formats)
  int64_t rows = 0;     // rows returned (every format; Avro resumes by this)
  // CRC-32 (zlib's) of the decompressed bytes before `offset` (text formats), or of the
  // keys (source, id) of the `rows` records before (Avro). SkipTo with one refuses input
  // whose bytes (records' keys) up to there differ (kFailedPrecondition).
  std::optional<uint32_t> crc;
};

struct Row {
  int64_t line = 0;  // 1-based line where the row starts (NDJSON/CSV) or record number (Avro)
  std::optional<engine::Detection> detection;  // empty: rejected, see `error`
  // With ReaderOptions::ndjson_as_text, an NDJSON row of at most kMaxTextRowBytes comes
  // here instead of `detection`: the line as read, checked only for UTF-8 (the server
  // validates the rest). A longer one is decoded, so a valid one travels compact.
  std::string json;
  std::string error;
  std::string text;  // the row as read (at most kMaxRejectText bytes), only when rejected
};

// How much of a rejected row goes to the rejects file.
inline constexpr size_t kMaxRejectText = 4096;
// The longest NDJSON row sent as read (ReaderOptions::ndjson_as_text). A valid detection
// is shorter once compact (evidence <= 16 KiB, <= 100 related entities of <= 300 bytes).
inline constexpr size_t kMaxTextRowBytes = 64 * 1024;

struct ReaderOptions {
  size_t max_row_bytes = 1 << 20;  // longer rows are rejected (and skipped to the next line)
  DecodeOptions decode;
  bool ndjson_as_text = false;  // NDJSON rows in Row::json, not decoded (CSV, Avro: decoded)
};

class RowReader {
 public:
  //! Opens a reader of `format` over `source` (which it takes). Reads the CSV header or
  //! the Avro header and schema. kInvalidArgument for an empty input, a bad CSV header or
  //! an Avro schema that does not fit (see docs/import.md); kDataLoss for corrupt input.
  static absl::StatusOr<std::unique_ptr<RowReader>> Open(std::unique_ptr<ByteSource> source,
                                                         Format format,
                                                         const ReaderOptions& options);
  virtual ~RowReader() = default;

  //! The next row: true with `row` filled, false at the end, or an input error.
  virtual absl::StatusOr<bool> Next(Row* row) = 0;
  //! Moves to `pos` (from a checkpoint of the same input), reading and dropping what lies
  //! before it. Only before the first Next. kDataLoss if the input ends first.
  virtual absl::Status SkipTo(const Position& pos) = 0;
  virtual Position position() const = 0;
  const ByteSource& source() const { return *source_; }

 protected:
  explicit RowReader(std::unique_ptr<ByteSource> source) : source_(std::move(source)) {}
  std::unique_ptr<ByteSource> source_;
};

//! Decides the format: `forced` if set, else from the name, else from the content.
absl::StatusOr<Format> DetectFormat(ByteSource& source, const std::string& path,
                                    std::optional<Format> forced);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_READER_H_
