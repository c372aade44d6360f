// The Avro object container reader behind RowReader::Open (libavro's C API). The file's
// writer schema must fit docs/import.md (examples/import/detection.avsc); anything else is
// refused before a single row is read.
//
// Thread-safety: confined to one thread.
#ifndef QUELL_IMPORTER_INTERNAL_AVRO_READER_H_
#define QUELL_IMPORTER_INTERNAL_AVRO_READER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "importer/reader.h"

namespace quell::importer::internal {

absl::StatusOr<std::unique_ptr<RowReader>> OpenAvroReader(std::unique_ptr<ByteSource> source,
                                                          const ReaderOptions& options);

}  // namespace quell::importer::internal

#endif  // QUELL_IMPORTER_INTERNAL_AVRO_READER_H_
