#include "counters/internal/resp.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"

namespace quell::counters::internal {

std::string_view RedisReplies::ReadFrom(int fd, size_t count) {
  top_.reserve(count);
  all_.reserve(count);
  size_t pos = 0;
  while (top_.size() < count) {
    int r = 1;
    while (top_.size() < count && (r = ParseOne(pos)) == 1) {
    }
    if (r < 0) return "protocol error";
    if (top_.size() == count) break;
    if (cap_ - len_ < kChunk) Grow(std::max(cap_ * 2, len_ + kChunk));
    const ssize_t n = recv(fd, data_.get() + len_, cap_ - len_, 0);
    if (n > 0) {
      len_ += static_cast<size_t>(n);
    } else if (n == 0) {
      return "connection closed";
    } else if (errno != EINTR) {
      return errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : "read failed";
    }
  }
  if (pos != len_) return "more replies than commands";
  for (RedisReply& r : all_) {
    r.str = data_.get() + r.offset;
    if (r.type == REDIS_REPLY_ARRAY) r.element = &r + 1;
  }
  return "";
}

void RedisReplies::Grow(size_t cap) {
  std::unique_ptr<char[]> bigger(new char[cap]);
  if (len_) std::memcpy(bigger.get(), data_.get(), len_);
  data_ = std::move(bigger);
  cap_ = cap;
}

size_t RedisReplies::LineEnd(size_t pos) const {
  const char* begin = data_.get() + pos;
  const void* cr = std::memchr(begin, '\r', len_ - pos);
  if (cr == nullptr) return std::string_view::npos;
  const size_t end = static_cast<const char*>(cr) - data_.get();
  return end + 1 < len_ ? end : std::string_view::npos;
}

bool RedisReplies::ParseInt(size_t begin, size_t end, long long* v) const {
  return absl::SimpleAtoi(absl::string_view(data_.get() + begin, end - begin), v);
}

int RedisReplies::ParseOne(size_t& pos, bool nested) {
  const size_t start = pos;
  const size_t kept = all_.size();
  auto incomplete = [&] {
    pos = start;
    all_.resize(kept);
    return 0;
  };
  if (pos >= len_) return 0;
  const size_t end = LineEnd(pos);
  if (end == std::string_view::npos) return incomplete();
  RedisReply r;
  const char tag = data_[pos];
  switch (tag) {
    case '+':
    case '-':
      r.type = tag == '+' ? REDIS_REPLY_STATUS : REDIS_REPLY_ERROR;
      r.offset = pos + 1;
      r.len = end - pos - 1;
      pos = end + 2;
      break;
    case ':':
      r.type = REDIS_REPLY_INTEGER;
      if (!ParseInt(pos + 1, end, &r.integer)) return -1;
      pos = end + 2;
      break;
    case '$': {
      long long n = 0;
      if (!ParseInt(pos + 1, end, &n) || n < -1) return -1;
      if (n == -1) {
        r.type = REDIS_REPLY_NIL;
        pos = end + 2;
        break;
      }
      if (end + 2 + static_cast<size_t>(n) + 2 > len_) return incomplete();
      r.type = REDIS_REPLY_STRING;
      r.offset = end + 2;
      r.len = static_cast<size_t>(n);
      pos = end + 2 + r.len + 2;
      break;
    }
    case '*': {
      long long n = 0;
      if (nested || !ParseInt(pos + 1, end, &n) || n < -1) return -1;
      pos = end + 2;
      if (n == -1) {
        r.type = REDIS_REPLY_NIL;
        break;
      }
      r.type = REDIS_REPLY_ARRAY;
      r.elements = static_cast<size_t>(n);
      all_.push_back(r);
      for (long long i = 0; i < n; ++i) {
        const int e = ParseOne(pos, /*nested=*/true);
        if (e < 0) return -1;
        if (e == 0) return incomplete();
      }
      if (!nested) top_.push_back(kept);
      return 1;
    }
    default:
      return -1;
  }
  all_.push_back(r);
  if (!nested) top_.push_back(kept);
  return 1;
}

}  // namespace quell::counters::internal
