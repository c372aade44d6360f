// Byte input for `quell import`: a file or standard input ("-"), optionally gzip- or
// zstd-compressed (detected by magic bytes, never by name), decompressed as a stream so
// memory stays bounded whatever the file size.
//
//   QUELL_ASSIGN_OR_RETURN(auto in, importer::ByteSource::Open("day.ndjson.zst"));
//   char buf[65536];
//   QUELL_ASSIGN_OR_RETURN(size_t n, in->Read(buf, sizeof buf));   // 0 at the end
//
// Errors: kNotFound / kPermissionDenied (cannot open), kDataLoss (corrupt or truncated
// compressed stream: the bytes delivered before it are good), kInternal (I/O errors).
//
// Thread-safety: confined to one thread. Owns its file descriptor (stdin is not closed).
#ifndef QUELL_IMPORTER_INPUT_H_
#define QUELL_IMPORTER_INPUT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace quell::importer {

enum class Compression { kNone, kGzip, kZstd };

//! "none", "gzip", "zstd".
std::string_view CompressionName(Compression c);

class ByteSource {
 public:
  //! Opens `path` ("-" = standard input) and sniffs its compression from the first bytes.
  static absl::StatusOr<std::unique_ptr<ByteSource>> Open(const std::string& path);
  //! A source over bytes in memory (tests, fuzzing); compression is sniffed the same way.
  static std::unique_ptr<ByteSource> FromString(std::string data, std::string name = "<memory>");

  virtual ~ByteSource();

  //! Up to `n` decompressed bytes into `buf`; 0 only at the end of the input.
  virtual absl::StatusOr<size_t> Read(char* buf, size_t n) = 0;
  //! The first (up to) `n` decompressed bytes, without consuming them. Valid before the
  //! first Read only.
  virtual absl::StatusOr<std::string_view> Peek(size_t n) = 0;

  Compression compression() const { return compression_; }
  const std::string& name() const { return name_; }
  //! Raw (possibly compressed) bytes consumed so far: the progress bar's "bytes".
  uint64_t raw_bytes() const { return raw_bytes_; }
  //! The raw size if known (regular files), for the ETA.
  std::optional<uint64_t> raw_size() const { return raw_size_; }
  //! Decompressed bytes delivered by Read so far.
  uint64_t offset() const { return offset_; }

 protected:
  ByteSource() = default;
  std::string name_;
  Compression compression_ = Compression::kNone;
  uint64_t raw_bytes_ = 0;
  std::optional<uint64_t> raw_size_;
  uint64_t offset_ = 0;
};

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_INPUT_H_
