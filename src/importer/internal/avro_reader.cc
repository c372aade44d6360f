#include "importer/internal/avro_reader.h"

#include <avro.h>
#include <stdio.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/strings.h"
#include "core/time.h"
#include "core/utf8.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

namespace quell::importer::internal {
namespace {

enum class Kind { kString, kDouble, kTime, kEvidence, kRelated };
// How observed_at is written: RFC 3339 text, or a long in the unit its logicalType says.
enum class TimeAs { kText, kMicros, kMillis };

struct FieldPlan {
  std::string name;
  Kind kind;
  bool nullable = false;  // a ["null", T] union
  int index = 0;          // in the writer schema
  TimeAs time_as = TimeAs::kText;
};

// Reads one zigzag varint (Avro's int and long) from `in` at `*pos`; false if cut short.
bool ReadAvroLong(std::string_view in, size_t* pos, int64_t* out) {
  uint64_t u = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= in.size()) return false;
    const auto b = static_cast<uint8_t>(in[(*pos)++]);
    u |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *out = static_cast<int64_t>(u >> 1) ^ -static_cast<int64_t>(u & 1);
      return true;
    }
  }
  return false;
}

struct Header {
  std::string sync;    // the marker that ends the header and each block
  std::string schema;  // the "avro.schema" metadata: the writer schema as JSON
};

// The header of an object container whose start is `head` (magic, then the metadata map:
// blocks of string keys and bytes values, a 0 count last, then the sync marker), or
// nullopt if `head` is cut short of it.
std::optional<Header> ParseHeader(std::string_view head) {
  Header h;
  size_t pos = 4;
  for (;;) {
    int64_t count = 0;
    if (!ReadAvroLong(head, &pos, &count)) return std::nullopt;
    if (count == 0) break;
    if (count < 0) {
      int64_t block_bytes = 0;
      if (count == INT64_MIN || !ReadAvroLong(head, &pos, &block_bytes)) return std::nullopt;
      count = -count;
    }
    // Each entry takes at least two bytes (two lengths): more than fit is a bad header.
    if (static_cast<uint64_t>(count) > (head.size() - pos) / 2) return std::nullopt;
    std::string_view key;
    for (int64_t i = 0; i < 2 * count; ++i) {  // key, then value
      int64_t len = 0;
      if (!ReadAvroLong(head, &pos, &len) || len < 0 ||
          static_cast<uint64_t>(len) > head.size() - pos) {
        return std::nullopt;
      }
      const std::string_view bytes = head.substr(pos, static_cast<size_t>(len));
      if (i % 2 == 0) {
        key = bytes;
      } else if (key == "avro.schema") {
        h.schema = std::string(bytes);
      }
      pos += static_cast<size_t>(len);
    }
  }
  if (head.size() - pos < 16) return std::nullopt;
  h.sync = std::string(head.substr(pos, 16));
  return h;
}

// The logicalType of observed_at's type in the writer schema `json`: "" if it has none,
// nullopt if the JSON does not say (not an object, or a logicalType that is not a
// string). libavro drops logical types as it parses a schema (a timestamp-millis long is
// a plain long to it), so the unit is read from the JSON here.
std::optional<std::string> ObservedAtLogicalType(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) return std::nullopt;
  const auto fields = doc.FindMember("fields");
  if (fields == doc.MemberEnd() || !fields->value.IsArray()) return "";
  for (const rapidjson::Value& f : fields->value.GetArray()) {
    if (!f.IsObject()) continue;
    const auto name = f.FindMember("name");
    if (name == f.MemberEnd() || !name->value.IsString() ||
        std::string_view(name->value.GetString(), name->value.GetStringLength()) != "observed_at") {
      continue;
    }
    const auto type = f.FindMember("type");
    if (type == f.MemberEnd() || !type->value.IsObject()) return "";
    const auto logical = type->value.FindMember("logicalType");
    if (logical == type->value.MemberEnd()) return "";
    if (!logical->value.IsString()) return std::nullopt;
    return std::string(logical->value.GetString(), logical->value.GetStringLength());
  }
  return "";
}

// The type of a field, seen through an optional ["null", T] union.
avro_schema_t Unwrap(avro_schema_t s, bool* nullable) {
  *nullable = false;
  if (!is_avro_union(s)) return s;
  if (avro_schema_union_size(s) != 2) return nullptr;
  avro_schema_t a = avro_schema_union_branch(s, 0), b = avro_schema_union_branch(s, 1);
  if (is_avro_null(a) && !is_avro_null(b)) {
    *nullable = true;
    return b;
  }
  if (is_avro_null(b) && !is_avro_null(a)) {
    *nullable = true;
    return a;
  }
  return nullptr;
}

// `json` is the schema's text, for what libavro does not keep of it (logical types).
absl::StatusOr<std::vector<FieldPlan>> Plan(avro_schema_t schema, std::string_view json,
                                            const std::string& name) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the Avro schema does not fit (", why,
                                                   "); the expected schema is in docs/import.md"));
  };
  if (!is_avro_record(schema)) return bad("the top-level type must be a record");
  std::vector<FieldPlan> plan;
  bool seen[6] = {};
  static const char* kRequired[] = {"id", "source", "type", "entity", "score", "observed_at"};
  for (size_t i = 0; i < avro_schema_record_size(schema); ++i) {
    const char* fname = avro_schema_record_field_name(schema, static_cast<int>(i));
    avro_schema_t ft = avro_schema_record_field_get_by_index(schema, static_cast<int>(i));
    FieldPlan p;
    p.name = fname;
    p.index = static_cast<int>(i);
    avro_schema_t t = Unwrap(ft, &p.nullable);
    if (t == nullptr) return bad(absl::StrCat("field \"", p.name, "\" has an unsupported union"));
    int req = -1;
    for (int k = 0; k < 6; ++k) {
      if (p.name == kRequired[k]) req = k;
    }
    if (req >= 0) {
      if (p.nullable)
        return bad(absl::StrCat("field \"", p.name, "\" is required, it cannot be null"));
      seen[req] = true;
    }
    if (p.name == "score") {
      if (!is_avro_double(t) && !is_avro_float(t)) return bad("field \"score\" must be a double");
      p.kind = Kind::kDouble;
    } else if (p.name == "observed_at") {
      // A plain long is microseconds (docs/import.md); a logicalType but the two timestamps
      // may be another unit: refused rather than guessed.
      const std::optional<std::string> logical = ObservedAtLogicalType(json);
      if (!logical)
        return bad("field \"observed_at\": its logicalType cannot be read from the schema");
      p.kind = Kind::kTime;
      if (is_avro_string(t) && logical->empty()) {
        p.time_as = TimeAs::kText;
      } else if (is_avro_int64(t) && (logical->empty() || *logical == "timestamp-micros")) {
        p.time_as = TimeAs::kMicros;
      } else if (is_avro_int64(t) && *logical == "timestamp-millis") {
        p.time_as = TimeAs::kMillis;
      } else if (!logical->empty() && (is_avro_string(t) || is_avro_int64(t))) {
        return bad(absl::StrCat("field \"observed_at\" has logicalType \"", *logical,
                                "\": a long may be timestamp-micros or timestamp-millis, a "
                                "string none"));
      } else {
        return bad(
            "field \"observed_at\" must be a string (RFC 3339) or a long (timestamp-micros, "
            "or timestamp-millis)");
      }
    } else if (p.name == "evidence") {
      if (!is_avro_string(t))
        return bad("field \"evidence\" must be a string holding a JSON object");
      p.kind = Kind::kEvidence;
    } else if (p.name == "related") {
      if (!is_avro_array(t) || !is_avro_string(avro_schema_array_items(t))) {
        return bad("field \"related\" must be an array of strings");
      }
      p.kind = Kind::kRelated;
    } else if (req >= 0) {
      if (!is_avro_string(t)) return bad(absl::StrCat("field \"", p.name, "\" must be a string"));
      p.kind = Kind::kString;
    } else {
      return bad(absl::StrCat("unknown field \"", p.name, "\""));
    }
    plan.push_back(std::move(p));
  }
  for (int k = 0; k < 6; ++k) {
    if (!seen[k]) return bad(absl::StrCat("required field \"", kRequired[k], "\" is missing"));
  }
  return plan;
}

class AvroReader final : public RowReader {
 public:
  AvroReader(std::unique_ptr<ByteSource> source, const ReaderOptions& options)
      : RowReader(std::move(source)), options_(options) {}
  ~AvroReader() override {
    if (value_ready_) avro_value_decref(&value_);
    if (iface_ != nullptr) avro_value_iface_decref(iface_);
    if (reader_ != nullptr) avro_file_reader_close(reader_);  // closes file_
    if (schema_ != nullptr) avro_schema_decref(schema_);
  }

  absl::Status Init() {
    cookie_io_functions_t io{};
    io.read = &CookieRead;
    FILE* f = fopencookie(this, "r", io);
    if (f == nullptr) return absl::InternalError("fopencookie failed");
    // should_close = 1: the reader owns `f` from here, and libavro closes it on its own
    // failure paths too (closing it again was a double free on any truncated file).
    if (avro_file_reader_fp(f, source_->name().c_str(), 1, &reader_) != 0) {
      reader_ = nullptr;
      return absl::InvalidArgumentError(
          absl::StrCat(source_->name(), ": not a readable Avro container: ", avro_strerror()));
    }
    head_.clear();
    head_.shrink_to_fit();
    if (sync_.empty()) {  // libavro read a header that we cannot: refuse rather than guess
      return absl::InvalidArgumentError(
          absl::StrCat(source_->name(),
                       ": not a readable Avro container: no metadata and sync marker within "
                       "its first MiB"));
    }
    schema_ = avro_file_reader_get_writer_schema(reader_);
    auto plan = Plan(schema_, schema_json_, source_->name());
    std::string().swap(schema_json_);
    if (!plan.ok()) return plan.status();
    plan_ = *std::move(plan);
    for (const FieldPlan& p : plan_) {  // both required, strings, never null (Plan)
      if (p.name == "id") id_index_ = p.index;
      if (p.name == "source") source_index_ = p.index;
    }
    iface_ = avro_generic_class_from_schema(schema_);
    if (iface_ == nullptr || avro_generic_value_new(iface_, &value_) != 0) {
      return absl::InternalError(absl::StrCat("libavro: ", avro_strerror()));
    }
    value_ready_ = true;
    // A header and no block is an empty file: refused as an empty NDJSON or CSV file is,
    // before anything is written, not imported as 0 rows. The first record is read here
    // (libavro has its block already) and handed out by the first Next.
    first_rc_ = avro_file_reader_read_value(reader_, &value_);
    if (first_rc_ == EOF && tail_ == sync_) {
      return absl::InvalidArgumentError(absl::StrCat(
          source_->name(), " is empty: no rows to import (an Avro header and no records)"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<bool> Next(Row* row) override {
    if (!failed_.ok()) return failed_;  // libavro's state after an error is not to be read
    if (done_) return false;
    absl::StatusOr<bool> more = ReadRecord();
    if (!more.ok()) return failed_ = more.status();
    if (!*more) {
      done_ = true;
      return false;
    }
    *row = Row{};
    row->line = rows_;
    auto d = Decode();
    if (d.ok()) {
      row->detection = *std::move(d);
    } else {
      row->error = std::string(SV(d.status().message()));
      row->text = text_.substr(0, kMaxRejectText);
    }
    return true;
  }

  absl::Status SkipTo(const Position& pos) override {
    while (rows_ < pos.rows) {
      QUELL_ASSIGN_OR_RETURN(bool more, ReadRecord());
      if (!more) {
        return absl::DataLossError(absl::StrCat(source_->name(), ": the file has ", rows_,
                                                " records, fewer than the checkpoint's ",
                                                pos.rows));
      }
    }
    // The records skipped are the ones the checkpoint counted, by key: skipping a record
    // of another key would lose it, while one of the same key would have come back a
    // duplicate (detections are idempotent per source and id).
    if (pos.crc && *pos.crc != keys_crc_) {
      return absl::FailedPreconditionError(absl::StrCat(
          source_->name(), ": its first ", pos.rows,
          " records differ (by source and id) from those the checkpoint was made on: is it "
          "the same input?"));
    }
    return absl::OkStatus();
  }

  Position position() const override {
    Position p;
    p.rows = rows_;
    p.line = rows_;
    p.crc = keys_crc_;
    return p;
  }

 private:
  // The record as a JSON object for ReadDetection (and, on error, for the rejects file).
  absl::StatusOr<engine::Detection> Decode() {
    rapidjson::Document doc;
    doc.SetObject();
    auto& a = doc.GetAllocator();
    // A field that cannot be decoded is kept in the record (so that the rejects file gets
    // the whole record), and the first such error rejects it.
    absl::Status bad_field;
    std::deque<std::string> fixed;  // replaced text, alive until the record is written
    // A string field's bytes: Avro promises UTF-8 but does not check it (as JSON rows are,
    // they are checked, so that no sink stores invalid text). Nor does it forbid a NUL,
    // which is a row error as in an NDJSON or CSV row (CheckRowUtf8): the text after it
    // is lost wherever the string is read as a C string (JSON parsers, C APIs).
    auto text = [&](avro_value_t& v, const FieldPlan& p) -> std::string_view {
      const char* s = nullptr;
      size_t n = 0;
      avro_value_get_string(&v, &s, &n);
      std::string_view out(s, n > 0 ? n - 1 : 0);  // libavro counts the NUL it adds
      const std::optional<size_t> bad_utf8 = core::FindInvalidUtf8(out);
      const size_t nul = out.find('\0');
      if (bad_field.ok() && bad_utf8) {
        bad_field = absl::InvalidArgumentError(
            absl::StrCat("field \"", p.name, "\": invalid UTF-8 at byte ", *bad_utf8 + 1));
      } else if (bad_field.ok() && nul != std::string_view::npos) {
        bad_field = absl::InvalidArgumentError(
            absl::StrCat("field \"", p.name, "\": NUL byte at byte ", nul + 1));
      }
      if (bad_utf8) return fixed.emplace_back(core::ReplaceInvalidUtf8(out));
      return out;  // a NUL is kept: the rejects file's JSON escapes it
    };
    auto str = [&](std::string_view v) {
      return rapidjson::Value(v.data(), static_cast<rapidjson::SizeType>(v.size()), a);
    };
    for (const FieldPlan& p : plan_) {
      avro_value_t field;
      if (avro_value_get_by_index(&value_, p.index, &field, nullptr) != 0) {
        return absl::InternalError(avro_strerror());
      }
      if (p.nullable) {
        avro_value_t branch;
        if (avro_value_get_current_branch(&field, &branch) != 0)
          return absl::InternalError(avro_strerror());
        if (avro_value_get_type(&branch) == AVRO_NULL) continue;
        field = branch;
      }
      rapidjson::Value key(rapidjson::StringRef(p.name.data(), p.name.size()));
      switch (p.kind) {
        case Kind::kString:
          doc.AddMember(key, str(text(field, p)), a);
          break;
        case Kind::kEvidence: {
          const std::string_view v = text(field, p);
          absl::Status ok_json = CheckJsonDepth(v, "evidence: ");
          rapidjson::Document ev(&a);
          if (ok_json.ok()) {
            ev.Parse<rapidjson::kParseFullPrecisionFlag>(v.data(), v.size());  // as the API reads
            if (ev.HasParseError())
              ok_json = absl::InvalidArgumentError("evidence: not valid JSON");
          }
          if (ok_json.ok()) {
            doc.AddMember(key, rapidjson::Value(ev, a), a);
          } else {  // kept as the text it is
            if (bad_field.ok()) bad_field = ok_json;
            doc.AddMember(key, str(v), a);
          }
          break;
        }
        case Kind::kDouble: {
          double x = 0;
          if (avro_value_get_type(&field) == AVRO_FLOAT) {
            float f = 0;
            avro_value_get_float(&field, &f);
            x = f;
          } else {
            avro_value_get_double(&field, &x);
          }
          doc.AddMember(key, rapidjson::Value(x), a);
          break;
        }
        case Kind::kTime: {
          if (p.time_as != TimeAs::kText) {
            int64_t n = 0;
            avro_value_get_long(&field, &n);
            std::string t = core::FormatRfc3339(
                p.time_as == TimeAs::kMillis ? absl::FromUnixMillis(n) : absl::FromUnixMicros(n));
            doc.AddMember(key, str(t), a);
          } else {
            doc.AddMember(key, str(text(field, p)), a);
          }
          break;
        }
        case Kind::kRelated: {
          size_t count = 0;
          avro_value_get_size(&field, &count);
          rapidjson::Value arr(rapidjson::kArrayType);
          for (size_t i = 0; i < count; ++i) {
            avro_value_t item;
            avro_value_get_by_index(&field, i, &item, nullptr);
            arr.PushBack(str(text(item, p)), a);
          }
          doc.AddMember(key, arr, a);
          break;
        }
      }
    }
    absl::StatusOr<engine::Detection> d = bad_field.ok()
                                              ? DecodeJsonValue(doc, options_.decode)
                                              : absl::StatusOr<engine::Detection>(bad_field);
    if (!d.ok()) {
      // The rejects file gets the record as JSON.
      rapidjson::StringBuffer buf;
      // NaN and infinities as the words: a rejected score must not cut the record short.
      rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::UTF8<>,
                        rapidjson::CrtAllocator, rapidjson::kWriteNanAndInfFlag>
          w(buf);
      doc.Accept(w);
      text_.assign(buf.GetString(), buf.GetSize());
    }
    return d;
  }

  // fopencookie glue: libavro reads a FILE*, the bytes come from the ByteSource (so
  // compression and stdin work the same as for the text formats). Keeps what Init needs
  // of them (the header, read first) and the last 16 bytes read.
  static ssize_t CookieRead(void* cookie, char* buf, size_t size) {
    auto* self = static_cast<AvroReader*>(cookie);
    auto got = self->source_->Read(buf, size);
    if (!got.ok()) {
      errno = EIO;
      return -1;
    }
    if (*got == 0 && size > 0) self->at_end_ = true;
    std::string_view read(buf, *got);
    if (self->sync_.empty() && self->head_.size() < kMaxHeaderBytes) {
      self->head_.append(read.substr(0, kMaxHeaderBytes - self->head_.size()));
      if (std::optional<Header> h = ParseHeader(self->head_)) {
        self->sync_ = std::move(h->sync);
        self->schema_json_ = std::move(h->schema);
        std::string().swap(self->head_);  // the first block stays out
      }
    }
    if (read.size() >= 16) {
      self->tail_.assign(read.substr(read.size() - 16));
    } else {
      self->tail_.append(read);
      if (self->tail_.size() > 16) self->tail_.erase(0, self->tail_.size() - 16);
    }
    return static_cast<ssize_t>(*got);
  }

  // The next record into value_, counted and its key noted: true, or false at the end of
  // a whole file. libavro also reports a file cut inside a block's count as its end.
  // Every whole file ends with its sync marker; a cut right after one is a shorter whole
  // file (the format has no end marker), anywhere else is refused. libavro also stops at a
  // block of 0 records (which writers do not make) even if more follow: refused as well,
  // unless the whole file was read ahead by then.
  absl::StatusOr<bool> ReadRecord() {
    const int rc = ReadValue();
    if (rc == EOF) {
      if (tail_ != sync_) return CutShort();
      return false;
    }
    if (rc != 0 && CutInBlock()) return CutShort();
    if (rc != 0) {
      return absl::DataLossError(absl::StrCat(source_->name(), ": corrupt Avro data after record ",
                                              rows_, ": ", avro_strerror()));
    }
    ++rows_;
    QUELL_RETURN_IF_ERROR(NoteKey());
    return true;
  }

  // Whether libavro's last failure was a short read of the input because it had ended
  // (libavro: "Cannot read N bytes from file", once the input has been read to its end),
  // rather than a block it read and could not decode (a small file is read to its end at
  // once, so the end alone says nothing). A whole file whose block size is corrupt, past
  // its end, reads the same and is called cut short too: libavro cannot tell them apart.
  bool CutInBlock() const {
    return at_end_ && absl::StrContains(avro_strerror(), "bytes from file");
  }

  absl::Status CutShort() const {
    return absl::DataLossError(absl::StrCat(
        source_->name(), ": corrupt Avro data after record ", rows_,
        ": the data ends inside a block (the file is cut short, or libavro stopped at an "
        "empty block)"));
  }

  // Brings keys_crc_ over the record in value_: its source and id, each with its length.
  absl::Status NoteKey() {
    for (int index : {source_index_, id_index_}) {
      avro_value_t field;
      const char* s = nullptr;
      size_t n = 0;
      if (avro_value_get_by_index(&value_, index, &field, nullptr) != 0 ||
          avro_value_get_string(&field, &s, &n) != 0) {
        return absl::DataLossError(absl::StrCat(source_->name(), ": ", avro_strerror()));
      }
      const uint32_t len = static_cast<uint32_t>(n);  // libavro counts the NUL
      keys_crc_ = static_cast<uint32_t>(
          ::crc32_z(keys_crc_, reinterpret_cast<const Bytef*>(&len), sizeof len));
      keys_crc_ = static_cast<uint32_t>(::crc32_z(keys_crc_, reinterpret_cast<const Bytef*>(s), n));
    }
    return absl::OkStatus();
  }

  // The next record into value_: the one Init read first, then libavro's next.
  int ReadValue() {
    if (first_rc_) return *std::exchange(first_rc_, std::nullopt);
    return avro_file_reader_read_value(reader_, &value_);
  }

  ReaderOptions options_;
  // The header (magic, metadata with the schema, sync marker) is far shorter than this, or
  // the file is refused.
  static constexpr size_t kMaxHeaderBytes = 1 << 20;
  std::string head_;         // the bytes read until the header parses (libavro reads it first)
  std::string sync_;         // the file's sync marker, from its header
  std::string schema_json_;  // the writer schema's JSON, from its header, until Init's Plan
  std::string tail_;         // the last (up to) 16 bytes libavro read
  bool at_end_ = false;      // a read found the end of the input
  int id_index_ = 0, source_index_ = 0;
  // CRC-32 of the keys (source and id, length-prefixed) of the records read or skipped:
  // what a Position records of an Avro file, since its records are counted, not its bytes.
  uint32_t keys_crc_ = 0;
  avro_file_reader_t reader_ = nullptr;
  avro_schema_t schema_ = nullptr;
  avro_value_iface_t* iface_ = nullptr;
  avro_value_t value_;
  bool value_ready_ = false;
  std::optional<int> first_rc_;  // Init's read of the first record, until ReadValue takes it
  std::vector<FieldPlan> plan_;
  int64_t rows_ = 0;
  bool done_ = false;
  absl::Status failed_;  // the error Next returned, returned again
  std::string text_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RowReader>> OpenAvroReader(std::unique_ptr<ByteSource> source,
                                                          const ReaderOptions& options) {
  auto r = std::make_unique<AvroReader>(std::move(source), options);
  if (auto s = r->Init(); !s.ok()) return s;
  return std::unique_ptr<RowReader>(std::move(r));
}

}  // namespace quell::importer::internal
