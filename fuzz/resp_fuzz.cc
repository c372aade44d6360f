// Fuzzes the Redis reply parser (RESP2) of the Redis counter backend, through its real
// entry point: the bytes are what a Redis server (or anything listening on its address)
// sent on the socket. The first byte chooses how many replies are awaited (1-8), the
// rest is the stream. Properties: never crash nor read outside what was received; a
// complete parse gives exactly that many replies, each of a known type, arrays holding
// no arrays, every string inside the received bytes.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "counters/internal/resp.h"

namespace {

using quell::counters::internal::RedisReply;

void CheckReply(const RedisReply& r, const char* begin, const char* end, bool nested) {
  switch (r.type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      if (r.str < begin || r.str + r.len > end) std::abort();
      break;
    case REDIS_REPLY_INTEGER:
    case REDIS_REPLY_NIL:
      break;
    case REDIS_REPLY_ARRAY:
      if (nested) std::abort();
      for (size_t i = 0; i < r.elements; ++i) CheckReply(r.element[i], begin, end, true);
      break;
    default:
      std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Within one socket buffer, so that a single-threaded write cannot block.
  if (size == 0 || size > 60000) return 0;
  const size_t count = 1 + data[0] % 8;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) std::abort();
  const char* stream = reinterpret_cast<const char*>(data) + 1;
  size_t left = size - 1;
  while (left > 0) {
    const ssize_t n = write(fds[1], stream + (size - 1 - left), left);
    if (n <= 0) std::abort();
    left -= static_cast<size_t>(n);
  }
  close(fds[1]);  // the parser sees the end of the stream: "connection closed"
  quell::counters::internal::RedisReplies replies;
  const std::string_view error = replies.ReadFrom(fds[0], count);
  close(fds[0]);
  if (error.empty()) {
    if (replies.size() != count) std::abort();
    // The parser's buffer is not exposed: a string must at least fit in what was sent.
    for (size_t i = 0; i < count; ++i) {
      const RedisReply& r = replies[i];
      const char* begin = r.str - r.offset;  // the start of the parser's buffer
      CheckReply(r, begin, begin + (size - 1), false);
    }
  }
  return 0;
}
