// Fuzzes `quell import`'s Avro object container reader (untrusted bulk files from data
// pipelines): the bytes are a whole input, opened as Avro (libavro reads the header,
// schema and blocks; avro_reader.cc checks the schema and decodes each record). Also
// through the compression sniffing, so a gzip or zstd stream of an Avro file is read the
// same way. Properties: never crash; records are numbered 1, 2, 3...; each row is either
// a detection or a reason with at most kMaxRejectText of its text; a reader that ended
// (error or end) stays ended.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "importer/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  quell::importer::ReaderOptions ro;
  ro.max_row_bytes = 4096;
  auto reader =
      quell::importer::RowReader::Open(quell::importer::ByteSource::FromString(
                                           std::string(reinterpret_cast<const char*>(data), size)),
                                       quell::importer::Format::kAvro, ro);
  if (!reader.ok()) return 0;
  quell::importer::Row row;
  int64_t expected = 1;
  bool ended = false;
  for (int i = 0; i < 10000; ++i) {
    auto got = (*reader)->Next(&row);
    if (!got.ok() || !*got) {
      ended = true;
      break;
    }
    if (row.line != expected++) std::abort();
    if (row.detection.has_value() == !row.error.empty()) std::abort();
    if (row.text.size() > quell::importer::kMaxRejectText) std::abort();
    if ((*reader)->position().rows != row.line) std::abort();
  }
  if (ended) {
    auto again = (*reader)->Next(&row);
    if (again.ok() && *again) std::abort();
  }
  return 0;
}
