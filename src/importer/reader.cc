#include "importer/reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "importer/internal/avro_reader.h"

namespace quell::importer {
namespace {

constexpr size_t kChunk = 1 << 20;

std::string Clip(std::string_view s) {
  return std::string(s.substr(0, std::min(s.size(), kMaxRejectText)));
}

// NDJSON lines and CSV records.
class TextReader final : public RowReader {
 public:
  TextReader(std::unique_ptr<ByteSource> source, Format format, const ReaderOptions& options)
      : RowReader(std::move(source)), format_(format), options_(options) {}

  absl::Status Init() {
    if (format_ != Format::kCsv) return absl::OkStatus();
    for (;;) {
      Record rec;
      auto got = NextRecord(&rec);
      if (!got.ok()) return got.status();
      if (!*got)
        return absl::InvalidArgumentError(absl::StrCat(source_->name(), ": no CSV header row"));
      if (rec.blank) continue;
      if (rec.too_long) {
        return absl::InvalidArgumentError(absl::StrCat(source_->name(),
                                                       ": the CSV header row is longer than ",
                                                       options_.max_row_bytes, " bytes"));
      }
      auto h = CsvHeader::Parse(rec.text);
      if (!h.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(source_->name(), ": ", h.status().message()));
      header_ = *std::move(h);
      return absl::OkStatus();
    }
  }

  absl::StatusOr<bool> Next(Row* row) override {
    for (;;) {
      Record rec;
      QUELL_ASSIGN_OR_RETURN(bool got, NextRecord(&rec));
      if (!got) return false;
      if (rec.blank) continue;
      *row = Row{};
      row->line = rec.line;
      ++pos_state_.rows;
      if (rec.too_long) {
        row->error = absl::StrCat("row is longer than the limit of ", options_.max_row_bytes,
                                  " bytes (", rec.length, " bytes; --max-row-bytes raises it)");
        row->text = Clip(rec.text);
        return true;
      }
      if (format_ != Format::kCsv && options_.ndjson_as_text &&
          rec.text.size() <= kMaxTextRowBytes) {
        if (absl::Status s = CheckRowUtf8(rec.text); !s.ok()) {
          row->error = std::string(SV(s.message()));
          row->text = Clip(rec.text);
        } else {
          row->json.assign(rec.text);
        }
        return true;
      }
      if (format_ == Format::kCsv) ReadAgainAfterAnOpenQuote(&rec);
      absl::StatusOr<engine::Detection> d = format_ == Format::kCsv
                                                ? DecodeCsvRow(*header_, rec.text, options_.decode)
                                                : DecodeJsonRow(rec.text, options_.decode);
      if (d.ok()) {
        row->detection = *std::move(d);
      } else {
        row->error = std::string(SV(d.status().message()));
        row->text = Clip(rec.text);
      }
      return true;
    }
  }

  absl::Status SkipTo(const Position& pos) override {
    uint64_t here = buf_base_ + pos_;
    if (pos.offset < here) {
      return absl::InvalidArgumentError(absl::StrCat(source_->name(), ": checkpoint offset ",
                                                     pos.offset, " lies inside the header"));
    }
    while (buf_base_ + buf_.size() < pos.offset) {
      if (eof_) {
        return absl::DataLossError(
            absl::StrCat(source_->name(), ": the input ends at byte ", buf_base_ + buf_.size(),
                         ", before the checkpoint (byte ", pos.offset, "): is it the same file?"));
      }
      CrcTo(buf_base_ + buf_.size());
      buf_base_ += buf_.size();
      buf_.clear();
      pos_ = 0;
      QUELL_RETURN_IF_ERROR(Fill());
    }
    pos_ = pos.offset - buf_base_;
    scan_ = pos_;
    csv_ = Csv::kFieldStart;
    pos_state_.line = pos.line;
    pos_state_.rows = pos.rows;
    CrcTo(pos.offset);
    if (pos.crc && *pos.crc != crc_) {
      return absl::FailedPreconditionError(absl::StrCat(
          source_->name(), ": its first ", pos.offset,
          " bytes differ from those the checkpoint was made on: is it the same input?"));
    }
    return absl::OkStatus();
  }

  Position position() const override {
    Position p = pos_state_;
    p.offset = buf_base_ + pos_;
    CrcTo(p.offset);
    p.crc = crc_;
    return p;
  }

 private:
  struct Record {
    std::string_view text;  // valid until the next call
    int64_t line = 0;
    bool blank = false;
    bool too_long = false;
    uint64_t length = 0;  // the full length of a too-long row
  };

  absl::Status Fill() {
    if (pos_ > 0) {
      CrcTo(buf_base_ + pos_);  // before the bytes go
      buf_base_ += pos_;
      buf_.erase(0, pos_);
      scan_ -= pos_;
      pos_ = 0;
    }
    size_t old = buf_.size();
    buf_.resize(old + kChunk);
    auto got = source_->Read(buf_.data() + old, kChunk);
    if (!got.ok()) {
      buf_.resize(old);
      return got.status();
    }
    buf_.resize(old + *got);
    if (*got == 0) eof_ = true;
    return absl::OkStatus();
  }

  // Finds the end of the record starting at pos_, from scan_ on.
  size_t FindEnd() {
    if (format_ != Format::kCsv) {
      const void* p = std::memchr(buf_.data() + scan_, '\n', buf_.size() - scan_);
      if (p == nullptr) {
        scan_ = buf_.size();
        return std::string::npos;
      }
      return static_cast<const char*>(p) - buf_.data();
    }
    // RFC 4180: only a quote that opens a field starts a quoted section (a stray one in an
    // unquoted field is the row decoder's error, not the start of a section that would
    // swallow the rows after it); inside one, "" is a quote and a lone " ends it.
    for (; scan_ < buf_.size(); ++scan_) {
      const char c = buf_[scan_];
      switch (csv_) {
        case Csv::kFieldStart:
        case Csv::kUnquoted:
        case Csv::kQuoteInQuoted:
          if (c == '\n') return scan_;
          if (c == ',') {
            csv_ = Csv::kFieldStart;
          } else if (c == '"' && csv_ == Csv::kFieldStart) {
            csv_ = Csv::kQuoted;
          } else if (c == '"' && csv_ == Csv::kQuoteInQuoted) {
            csv_ = Csv::kQuoted;  // "" inside a quoted field
          } else {
            csv_ = Csv::kUnquoted;
          }
          break;
        case Csv::kQuoted:
          if (c == '"') csv_ = Csv::kQuoteInQuoted;
          break;
      }
    }
    return std::string::npos;
  }

  // A CSV record over several lines is a quoted field holding newlines, or a quote left
  // open that swallowed the rows after it (up to a later quote, or --max-row-bytes). When
  // it does not split into the header's columns it is taken for the latter: the record
  // becomes its first line alone (the row rejected, as an unterminated quoted field) and
  // the lines after it are read again as rows. They were lost inside one reject.
  void ReadAgainAfterAnOpenQuote(Record* rec) {
    const size_t nl = rec->text.find('\n');
    if (nl == std::string_view::npos) return;
    std::vector<std::string> fields;
    if (SplitCsvRecord(rec->text, &fields).ok() && fields.size() == header_->columns()) return;
    pos_ = static_cast<size_t>(rec->text.data() + nl + 1 - buf_.data());  // a view into buf_
    scan_ = pos_;
    csv_ = Csv::kFieldStart;
    pos_state_.line = rec->line;
    rec->text = rec->text.substr(0, nl);
    if (!rec->text.empty() && rec->text.back() == '\r') rec->text.remove_suffix(1);
  }

  absl::StatusOr<bool> NextRecord(Record* rec) {
    for (;;) {
      size_t end = FindEnd();
      if (end == std::string::npos && buf_.size() - pos_ > options_.max_row_bytes) {
        // Still inside a quoted field past the limit, with a newline in it: a quote left
        // open. The record is its first line (ReadAgainAfterAnOpenQuote's case, found at
        // the limit); without a newline, one line too long.
        const void* nl = format_ == Format::kCsv
                             ? std::memchr(buf_.data() + pos_, '\n', options_.max_row_bytes)
                             : nullptr;
        if (nl == nullptr) return SkipLongRow(rec);
        end = static_cast<const char*>(nl) - buf_.data();
      }
      if (end == std::string::npos && !eof_) {
        QUELL_RETURN_IF_ERROR(Fill());
        continue;
      }
      if (end == std::string::npos && pos_ == buf_.size()) return false;  // eof
      size_t stop = end == std::string::npos ? buf_.size() : end;
      if (stop - pos_ > options_.max_row_bytes) {  // whole in the buffer, still too long
        std::string_view row(buf_.data() + pos_, stop - pos_);
        long_prefix_.assign(row.substr(0, kMaxRejectText));
        rec->line = pos_state_.line + 1;
        pos_state_.line += 1 + std::count(row.begin(), row.end(), '\n');
        rec->text = long_prefix_;
        rec->too_long = true;
        rec->length = row.size();
        pos_ = end == std::string::npos ? buf_.size() : end + 1;
        scan_ = pos_;
        csv_ = Csv::kFieldStart;
        return true;
      }
      std::string_view text(buf_.data() + pos_, stop - pos_);
      if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
      if (pos_state_.line == 0 && text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") {
        text.remove_prefix(3);  // a byte order mark
      }
      rec->line = pos_state_.line + 1;
      pos_state_.line += 1 + std::count(text.begin(), text.end(), '\n');
      rec->text = text;
      rec->blank = text.find_first_not_of(" \t\r") == std::string_view::npos;
      pos_ = end == std::string::npos ? buf_.size() : end + 1;
      scan_ = pos_;
      csv_ = Csv::kFieldStart;
      return true;
    }
  }

  // The row at pos_ is over the limit (more than max_row_bytes in the buffer, no end
  // found): keep its start for the rejects file and drop the rest up to the first
  // physical newline past the limit (quotes are ignored: resynchronise on lines; a
  // newline inside the row's first max_row_bytes is not its end).
  absl::StatusOr<bool> SkipLongRow(Record* rec) {
    long_prefix_.assign(buf_.data() + pos_, std::min(kMaxRejectText, buf_.size() - pos_));
    rec->line = pos_state_.line + 1;
    const std::string_view within(buf_.data() + pos_, options_.max_row_bytes);
    pos_state_.line += std::count(within.begin(), within.end(), '\n');
    uint64_t length = options_.max_row_bytes;
    pos_ += options_.max_row_bytes;
    for (;;) {
      const void* p = std::memchr(buf_.data() + pos_, '\n', buf_.size() - pos_);
      if (p != nullptr) {
        size_t nl = static_cast<const char*>(p) - buf_.data();
        length += nl - pos_;
        pos_ = nl + 1;
        break;
      }
      length += buf_.size() - pos_;
      pos_ = buf_.size();
      scan_ = pos_;
      if (eof_) break;
      QUELL_RETURN_IF_ERROR(Fill());
    }
    pos_state_.line += 1;
    scan_ = pos_;
    csv_ = Csv::kFieldStart;
    rec->text = long_prefix_;
    rec->too_long = true;
    rec->length = length;
    return true;
  }

  Format format_;
  ReaderOptions options_;
  std::optional<CsvHeader> header_;
  std::string buf_;
  size_t pos_ = 0;   // start of the next record in buf_
  size_t scan_ = 0;  // where the search for its end resumes
  // Where FindEnd's CSV scan is in the record (kept across Fill).
  enum class Csv : uint8_t { kFieldStart, kUnquoted, kQuoted, kQuoteInQuoted };
  Csv csv_ = Csv::kFieldStart;
  bool eof_ = false;
  uint64_t buf_base_ = 0;  // decompressed offset of buf_[0]
  // CRC-32 of the decompressed bytes before crc_off_ (<= buf_base_ + pos_), brought up to
  // a position when it is taken and before buf_ drops bytes (position() is const).
  mutable uint32_t crc_ = 0;
  mutable uint64_t crc_off_ = 0;
  void CrcTo(uint64_t offset) const {
    const size_t from = crc_off_ - buf_base_;
    crc_ = static_cast<uint32_t>(
        ::crc32_z(crc_, reinterpret_cast<const Bytef*>(buf_.data() + from), offset - crc_off_));
    crc_off_ = offset;
  }
  Position pos_state_;
  std::string long_prefix_;
};

}  // namespace

absl::StatusOr<Format> DetectFormat(ByteSource& source, const std::string& path,
                                    std::optional<Format> forced) {
  if (forced) return *forced;
  if (auto f = FormatFromName(path)) return *f;
  auto head = source.Peek(64);
  if (!head.ok()) return head.status();
  return FormatFromContent(*head);
}

namespace {

// Whether all of `source` after its first `skip_lines` lines (0 or 1) is blank (spaces,
// line ends, a byte order mark at its start): peeked a little at a time, only as far as the
// first other byte, within 64 KiB (more: false). A read error answers false: it is the
// reader's to report (a cut stream stops after the rows before it).
bool BlankAfter(ByteSource& source, int skip_lines) {
  for (size_t look = 512; look <= (size_t{1} << 16); look *= 4) {
    auto start = source.Peek(look);
    if (!start.ok()) return false;
    std::string_view text = *start;
    if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    if (skip_lines > 0) {
      const size_t eol = text.find('\n');
      text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    }
    if (text.find_first_not_of(" \t\r\n") != std::string_view::npos) return false;
    if (start->size() < look) return true;  // all of it
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RowReader>> RowReader::Open(std::unique_ptr<ByteSource> source,
                                                           Format format,
                                                           const ReaderOptions& options) {
  auto head = source->Peek(4);
  if (!head.ok()) return head.status();
  if (head->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source->name(), " is empty: no rows to import"));
  }
  bool looks_avro = head->size() == 4 && *head == std::string_view("Obj\x01", 4);
  if (format == Format::kAvro) {
    if (!looks_avro) {
      return absl::InvalidArgumentError(absl::StrCat(
          source->name(), " is not an Avro object container file (no \"Obj\\x01\" magic)"));
    }
    return internal::OpenAvroReader(std::move(source), options);
  }
  if (looks_avro) {
    return absl::InvalidArgumentError(absl::StrCat(source->name(), " is an Avro file, not ",
                                                   AV(FormatName(format)), " (drop --format)"));
  }
  // Blank lines (or a byte order mark) alone, or a CSV header and nothing after it, are
  // as empty as no bytes at all: refused the same way, not imported as 0 rows. NDJSON is
  // looked at only when it starts blank, so a stream of rows is never held up.
  const bool blank_start = head->find_first_not_of(" \t\r\n\xEF\xBB\xBF") == std::string_view::npos;
  if (format == Format::kNdjson && blank_start && BlankAfter(*source, /*skip_lines=*/0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source->name(), " is empty: no rows to import (blank lines only)"));
  }
  const bool header_only = format == Format::kCsv && BlankAfter(*source, /*skip_lines=*/1);
  const std::string name = source->name();
  auto r = std::make_unique<TextReader>(std::move(source), format, options);
  if (auto s = r->Init(); !s.ok()) return s;
  if (header_only) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " has a header and no rows: no rows to import"));
  }
  return std::unique_ptr<RowReader>(std::move(r));
}

}  // namespace quell::importer
