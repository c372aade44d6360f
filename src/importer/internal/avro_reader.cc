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
  size_t size = 0;     // its bytes, through the sync marker
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
  h.size = pos + 16;
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

// An object container's bytes as libavro is to read them: the same bytes without the
// blocks of 0 records. The spec allows those, but libavro 1.11's
// avro_file_reader_read_value mishandles one: it takes the count of 0, decodes a record
// from the previous block's data all the same (an invented record), and then reports the
// end of the file, whatever follows. Its API has no way to skip a block, so they are
// dropped before it sees them. Nothing else is changed or checked here: this follows the
// blocks' framing (count, byte size, bytes, sync marker) only to find the empty ones, and
// from framing it cannot follow (a varint over 10 bytes, a negative size) on passes every
// byte, for libavro to judge.
//
// Thread-safety: confined to one thread.
class EmptyBlockFilter {
 public:
  //! Appends to `out` what libavro is to read of `in`, the next bytes of the file.
  void Feed(std::string_view in, std::string* out);

  //! The file's sync marker, once its header has been fed whole ("" before, and for good
  //! when no header is found within kMaxHeaderBytes).
  const std::string& sync() const { return sync_; }
  //! The writer schema's JSON, from the header; the caller may take it.
  std::string& schema_json() { return schema_json_; }
  //! Whether the bytes fed so far end inside a block's count or an empty block: bytes
  //! held back from libavro. At the end of the file, a cut that libavro cannot see.
  bool holding() const {
    return (state_ == State::kCount && !varint_.empty()) || state_ == State::kEmptySize ||
           state_ == State::kEmptyBlock || state_ == State::kEmptySync;
  }
  //! "" or why an empty block is corrupt; no byte from it on is passed on.
  const std::string& error() const { return error_; }

  // The header (magic, metadata with the schema, sync marker) is far shorter than this, or
  // the file is refused.
  static constexpr size_t kMaxHeaderBytes = 1 << 20;

 private:
  enum class State {
    kHeader,      // in the header
    kCount,       // in a block's record count (held back until it is known not to be 0)
    kSize,        // in a block's byte size
    kBlock,       // in its bytes and sync marker
    kEmptySize,   // in an empty block's byte size (dropped, as all of it)
    kEmptyBlock,  // in its bytes
    kEmptySync,   // in its sync marker
    kPassThrough,
    kStopped,
  };

  void Stop(std::string why) {
    error_ = std::move(why);
    state_ = State::kStopped;
  }

  State state_ = State::kHeader;
  std::string head_;  // the header's bytes so far
  std::string sync_, schema_json_;
  std::string varint_;      // the bytes of the varint being read
  uint64_t remaining_ = 0;  // bytes left in kBlock, kEmptyBlock and kEmptySync
  std::string error_;
};

void EmptyBlockFilter::Feed(std::string_view in, std::string* out) {
  while (!in.empty()) {
    switch (state_) {
      case State::kHeader: {
        const size_t before = head_.size();
        head_.append(in.substr(0, kMaxHeaderBytes - before));
        std::optional<Header> h = ParseHeader(head_);
        if (!h) {
          out->append(in);
          if (head_.size() >= kMaxHeaderBytes) {  // not a container libavro reads either
            std::string().swap(head_);
            state_ = State::kPassThrough;
          }
          return;
        }
        out->append(in.substr(0, h->size - before));
        in.remove_prefix(h->size - before);
        sync_ = std::move(h->sync);
        schema_json_ = std::move(h->schema);
        std::string().swap(head_);
        state_ = State::kCount;
        break;
      }
      case State::kCount:
      case State::kSize:
      case State::kEmptySize: {
        varint_.push_back(in.front());
        in.remove_prefix(1);
        if (state_ == State::kSize) out->push_back(varint_.back());
        if (static_cast<uint8_t>(varint_.back()) & 0x80) {
          if (varint_.size() < 10) break;
          // Longer than any long: framing this cannot follow.
          if (state_ == State::kEmptySize) {
            Stop("an empty block's byte size is not a long");
          } else {
            if (state_ == State::kCount) out->append(varint_);
            state_ = State::kPassThrough;
          }
          varint_.clear();
          break;
        }
        size_t pos = 0;
        int64_t value = 0;
        ReadAvroLong(varint_, &pos, &value);  // whole: its last byte is in
        if (state_ == State::kCount) {
          if (value != 0) out->append(varint_);
          state_ = value == 0 ? State::kEmptySize : State::kSize;
        } else if (value < 0) {
          if (state_ == State::kEmptySize) {
            Stop("an empty block's byte size is negative");
          } else {
            state_ = State::kPassThrough;
          }
        } else if (state_ == State::kSize) {
          remaining_ = static_cast<uint64_t>(value) + 16;
          state_ = State::kBlock;
        } else if (value == 0) {  // an empty block of no bytes (the null codec's)
          remaining_ = 16;
          state_ = State::kEmptySync;
        } else {
          remaining_ = static_cast<uint64_t>(value);
          state_ = State::kEmptyBlock;
        }
        varint_.clear();
        break;
      }
      case State::kBlock:
      case State::kEmptyBlock: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size()));
        if (state_ == State::kBlock) out->append(in.substr(0, n));
        in.remove_prefix(n);
        remaining_ -= n;
        if (remaining_ == 0) {
          if (state_ == State::kBlock) {
            state_ = State::kCount;
          } else {
            state_ = State::kEmptySync;
            remaining_ = 16;
          }
        }
        break;
      }
      case State::kEmptySync: {
        if (in.front() != sync_[16 - remaining_]) {
          Stop("a block of 0 records does not end with the file's sync marker");
          break;
        }
        in.remove_prefix(1);
        if (--remaining_ == 0) state_ = State::kCount;
        break;
      }
      case State::kPassThrough:
        out->append(in);
        return;
      case State::kStopped:
        return;
    }
  }
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
    if (filter_.sync().empty()) {  // libavro read a header that we cannot: refuse rather than guess
      return absl::InvalidArgumentError(
          absl::StrCat(source_->name(),
                       ": not a readable Avro container: no metadata and sync marker within "
                       "its first MiB"));
    }
    schema_ = avro_file_reader_get_writer_schema(reader_);
    auto plan = Plan(schema_, filter_.schema_json(), source_->name());
    std::string().swap(filter_.schema_json());
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
    // A header and no block (or empty blocks only) is an empty file: refused as an empty
    // NDJSON or CSV file is, before anything is written, not imported as 0 rows. The first
    // record is read here (libavro has its block already) and handed out by the first Next.
    first_rc_ = avro_file_reader_read_value(reader_, &value_);
    if (first_rc_ == EOF && WholeAtEnd() && filter_.error().empty()) {
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
  // compression and stdin work the same as for the text formats), through filter_ (which
  // drops the empty blocks and keeps what Init needs of the header). Keeps the last 16
  // bytes libavro was given. A short read is fine for stdio; 0 is the end of the file.
  static ssize_t CookieRead(void* cookie, char* buf, size_t size) {
    auto* self = static_cast<AvroReader*>(cookie);
    if (size == 0) return 0;
    // Read on while what comes is all dropped (an empty block), or libavro would take the
    // 0 for the end of the file.
    while (self->ready_at_ == self->ready_.size()) {
      self->ready_.clear();
      self->ready_at_ = 0;
      if (self->at_end_ || !self->filter_.error().empty()) return 0;
      self->chunk_.resize(kChunkBytes);
      auto got = self->source_->Read(self->chunk_.data(), self->chunk_.size());
      if (!got.ok()) {
        errno = EIO;
        return -1;
      }
      if (*got == 0) {
        self->at_end_ = true;
        return 0;
      }
      self->filter_.Feed(std::string_view(self->chunk_.data(), *got), &self->ready_);
    }
    const size_t n = std::min(size, self->ready_.size() - self->ready_at_);
    std::memcpy(buf, self->ready_.data() + self->ready_at_, n);
    self->ready_at_ += n;
    const std::string_view read(buf, n);
    if (read.size() >= 16) {
      self->tail_.assign(read.substr(read.size() - 16));
    } else {
      self->tail_.append(read);
      if (self->tail_.size() > 16) self->tail_.erase(0, self->tail_.size() - 16);
    }
    return static_cast<ssize_t>(n);
  }

  // The next record into value_, counted and its key noted: true, or false at the end of
  // a whole file. libavro also reports a file cut inside a block's count as its end, and
  // sees the end where filter_ stopped at a corrupt empty block.
  absl::StatusOr<bool> ReadRecord() {
    const int rc = ReadValue();
    if (rc == EOF) {
      if (!filter_.error().empty()) {
        return absl::DataLossError(absl::StrCat(
            source_->name(), ": corrupt Avro data after record ", rows_, ": ", filter_.error()));
      }
      if (!WholeAtEnd()) return CutShort();
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

  // Whether the bytes read, where libavro saw the end, make a whole file: every whole file
  // ends with its sync marker. A cut right after one is a shorter whole file (the format
  // has no end marker), anywhere else (in a count or an empty block, which libavro is not
  // given) it is not.
  bool WholeAtEnd() const { return tail_ == filter_.sync() && !filter_.holding(); }

  absl::Status CutShort() const {
    return absl::DataLossError(
        absl::StrCat(source_->name(), ": corrupt Avro data after record ", rows_,
                     ": the data ends inside a block (the file is cut short)"));
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
  // What is read of the source at a time (libavro's own reads are smaller but for blocks
  // larger than this, which take several).
  static constexpr size_t kChunkBytes = 64 << 10;
  EmptyBlockFilter filter_;
  std::string chunk_;  // the bytes last read from the source
  std::string ready_;  // filter_'s output of them; from ready_at_ on, not read by libavro yet
  size_t ready_at_ = 0;
  std::string tail_;     // the last (up to) 16 bytes libavro read
  bool at_end_ = false;  // a read found the end of the input
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
