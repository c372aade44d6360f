#include "importer/input.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace quell::importer {

std::string_view CompressionName(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
  }
  return "none";
}

ByteSource::~ByteSource() = default;

namespace {

constexpr size_t kRawChunk = 256 * 1024;

// One implementation for both origins: raw bytes come from a descriptor or a string.
class StreamSource final : public ByteSource {
 public:
  StreamSource(int fd, bool owns_fd, std::string data, std::string name)
      : fd_(fd), owns_fd_(owns_fd), data_(std::move(data)) {
    name_ = std::move(name);
  }
  ~StreamSource() override {
    if (owns_fd_ && fd_ >= 0) ::close(fd_);
    if (zs_ready_) inflateEnd(&zs_);
    if (zstd_ != nullptr) ZSTD_freeDStream(zstd_);
  }

  absl::Status Init() {
    if (fd_ >= 0) {
      struct stat st;
      if (fstat(fd_, &st) == 0 && S_ISREG(st.st_mode))
        raw_size_ = static_cast<uint64_t>(st.st_size);
    } else {
      raw_size_ = data_.size();
    }
    // Sniff the compression from the first raw bytes.
    while (raw_.size() - raw_pos_ < 4 && !raw_eof_) {
      if (auto s = FillRaw(); !s.ok()) return s;
    }
    std::string_view head(raw_.data() + raw_pos_, raw_.size() - raw_pos_);
    if (head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0x1f &&
        static_cast<unsigned char>(head[1]) == 0x8b) {
      compression_ = Compression::kGzip;
      std::memset(&zs_, 0, sizeof zs_);
      if (inflateInit2(&zs_, 15 + 16) != Z_OK)
        return absl::InternalError("zlib: inflateInit failed");
      zs_ready_ = true;
    } else if (head.size() >= 4 && static_cast<unsigned char>(head[0]) == 0x28 &&
               static_cast<unsigned char>(head[1]) == 0xb5 &&
               static_cast<unsigned char>(head[2]) == 0x2f &&
               static_cast<unsigned char>(head[3]) == 0xfd) {
      compression_ = Compression::kZstd;
      zstd_ = ZSTD_createDStream();
      if (zstd_ == nullptr) return absl::InternalError("zstd: cannot create a stream");
      ZSTD_initDStream(zstd_);
    } else if (raw_eof_ && !head.empty()) {
      // The whole input is shorter than the magic bytes: a .gz or .zst file cut inside
      // them was read as plain text (one rejected row, exit 0).
      struct Magic {
        const char* kind;
        std::string_view bytes;
        const char* exts[2];
      };
      static constexpr Magic kMagics[] = {
          {"gzip", std::string_view("\x1f\x8b", 2), {".gz", ".gzip"}},
          {"zstd", std::string_view("\x28\xb5\x2f\xfd", 4), {".zst", ".zstd"}}};
      for (const Magic& m : kMagics) {
        const bool named = absl::EndsWith(name_, m.exts[0]) || absl::EndsWith(name_, m.exts[1]);
        if (named && head.size() < m.bytes.size() && m.bytes.substr(0, head.size()) == head) {
          return absl::DataLossError(absl::StrCat(name_, ": truncated ", m.kind, " stream (",
                                                  head.size(), " bytes, inside its magic number)"));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string_view> Peek(size_t n) override {
    if (offset_ != 0) return absl::FailedPreconditionError("Peek after Read");
    while (peeked_.size() < n) {
      char buf[4096];
      size_t want = std::min(sizeof buf, n - peeked_.size());
      auto got = Decode(buf, want);
      if (!got.ok()) return got.status();
      if (*got == 0) break;
      peeked_.append(buf, *got);
    }
    return std::string_view(peeked_).substr(0, std::min(n, peeked_.size()));
  }

  absl::StatusOr<size_t> Read(char* buf, size_t n) override {
    if (peek_pos_ < peeked_.size()) {
      size_t k = std::min(n, peeked_.size() - peek_pos_);
      std::memcpy(buf, peeked_.data() + peek_pos_, k);
      peek_pos_ += k;
      offset_ += k;
      if (peek_pos_ == peeked_.size()) {
        peeked_.clear();
        peeked_.shrink_to_fit();
        peek_pos_ = 0;
      }
      return k;
    }
    auto got = Decode(buf, n);
    if (got.ok()) offset_ += *got;
    return got;
  }

 private:
  // Appends raw bytes to raw_ (compacting first).
  absl::Status FillRaw() {
    if (raw_pos_ > 0) {
      raw_.erase(0, raw_pos_);
      raw_pos_ = 0;
    }
    size_t old = raw_.size();
    raw_.resize(old + kRawChunk);
    size_t got = 0;
    if (fd_ >= 0) {
      ssize_t r;
      do {
        r = ::read(fd_, raw_.data() + old, kRawChunk);
      } while (r < 0 && errno == EINTR);
      if (r < 0) {
        raw_.resize(old);
        return absl::InternalError(absl::StrCat(name_, ": read error: ", std::strerror(errno)));
      }
      got = static_cast<size_t>(r);
    } else {
      got = std::min(kRawChunk, data_.size() - data_pos_);
      std::memcpy(raw_.data() + old, data_.data() + data_pos_, got);
      data_pos_ += got;
    }
    raw_.resize(old + got);
    if (got == 0) raw_eof_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> Decode(char* buf, size_t n) {
    if (n == 0) return 0;
    for (;;) {
      if (raw_pos_ == raw_.size() && !raw_eof_) {
        if (auto s = FillRaw(); !s.ok()) return s;
      }
      const size_t avail = raw_.size() - raw_pos_;
      switch (compression_) {
        case Compression::kNone: {
          if (avail == 0) return 0;  // raw_eof_
          size_t k = std::min(n, avail);
          std::memcpy(buf, raw_.data() + raw_pos_, k);
          raw_pos_ += k;
          raw_bytes_ += k;
          return k;
        }
        case Compression::kGzip: {
          if (avail == 0) {
            if (gz_member_done_) return 0;
            return absl::DataLossError(
                absl::StrCat(name_, ": truncated gzip stream (the compressed data ends after ",
                             raw_bytes_, " bytes, in the middle of a member)"));
          }
          if (gz_member_done_) {
            // Another member follows (concatenated gzip, as `cat a.gz b.gz` makes).
            inflateReset(&zs_);
            gz_member_done_ = false;
          }
          zs_.next_in = reinterpret_cast<Bytef*>(raw_.data() + raw_pos_);
          zs_.avail_in = static_cast<uInt>(std::min<size_t>(avail, 1u << 30));
          zs_.next_out = reinterpret_cast<Bytef*>(buf);
          zs_.avail_out = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
          int rc = inflate(&zs_, Z_NO_FLUSH);
          size_t used = avail - zs_.avail_in;
          raw_pos_ += used;
          raw_bytes_ += used;
          size_t produced = std::min<size_t>(n, 1u << 30) - zs_.avail_out;
          if (rc == Z_STREAM_END) {
            gz_member_done_ = true;
          } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
            return absl::DataLossError(absl::StrCat(
                name_, ": corrupt gzip data after ", raw_bytes_,
                " compressed bytes: ", zs_.msg != nullptr ? zs_.msg : "inflate error"));
          }
          if (produced > 0) return produced;
          if (rc == Z_BUF_ERROR && used == 0 && raw_eof_) {
            return absl::DataLossError(
                absl::StrCat(name_, ": truncated gzip stream after ", raw_bytes_, " bytes"));
          }
          continue;
        }
        case Compression::kZstd: {
          if (avail == 0) {
            if (zstd_frame_done_) return 0;
            return absl::DataLossError(
                absl::StrCat(name_, ": truncated zstd stream (the compressed data ends after ",
                             raw_bytes_, " bytes, in the middle of a frame)"));
          }
          ZSTD_inBuffer in{raw_.data() + raw_pos_, avail, 0};
          ZSTD_outBuffer out{buf, n, 0};
          size_t rc = ZSTD_decompressStream(zstd_, &out, &in);
          raw_pos_ += in.pos;
          raw_bytes_ += in.pos;
          if (ZSTD_isError(rc)) {
            return absl::DataLossError(absl::StrCat(name_, ": corrupt zstd data after ", raw_bytes_,
                                                    " compressed bytes: ", ZSTD_getErrorName(rc)));
          }
          zstd_frame_done_ = rc == 0;
          if (out.pos > 0) return out.pos;
          continue;
        }
      }
    }
  }

  int fd_;
  bool owns_fd_;
  std::string data_;
  size_t data_pos_ = 0;
  std::string raw_;
  size_t raw_pos_ = 0;
  bool raw_eof_ = false;
  std::string peeked_;
  size_t peek_pos_ = 0;
  z_stream zs_;
  bool zs_ready_ = false;
  bool gz_member_done_ = false;
  ZSTD_DStream* zstd_ = nullptr;
  bool zstd_frame_done_ = true;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ByteSource>> ByteSource::Open(const std::string& path) {
  int fd = 0;
  bool owns = false;
  std::string name = path;
  if (path == "-") {
    name = "<stdin>";
  } else {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(e));
      if (e == ENOENT) return absl::NotFoundError(msg);
      if (e == EACCES) return absl::PermissionDeniedError(msg);
      return absl::InternalError(msg);
    }
    owns = true;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, " is a directory"));
    }
  }
  auto src = std::make_unique<StreamSource>(fd, owns, std::string(), name);
  if (auto s = src->Init(); !s.ok()) return s;
  return std::unique_ptr<ByteSource>(std::move(src));
}

std::unique_ptr<ByteSource> ByteSource::FromString(std::string data, std::string name) {
  auto src = std::make_unique<StreamSource>(-1, false, std::move(data), std::move(name));
  (void)src->Init();  // in-memory raw reads cannot fail
  return src;
}

}  // namespace quell::importer
