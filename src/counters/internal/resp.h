// The Redis reply parser (RESP2) of the Redis counter backend: the replies of one
// pipeline, read from the socket into one buffer and parsed in place, without an
// allocation per reply. It reads what a Redis server sends, so it refuses malformed input
// with an error instead of trusting it (fuzz/resp_fuzz.cc).
//
// Thread-safety: a RedisReplies is confined to one thread (the one that called ReadFrom).
#ifndef QUELL_COUNTERS_INTERNAL_RESP_H_
#define QUELL_COUNTERS_INTERNAL_RESP_H_

#include <hiredis/read.h>  // REDIS_REPLY_* type numbers

#include <cstddef>
#include <memory>
#include <string_view>
#include <vector>

namespace quell::counters::internal {

// One reply of a pipeline, as hiredis would give it: `str` points into the RedisReplies
// that own it, and an array's elements follow it in one vector (`element[0 .. elements)`;
// arrays in arrays are refused, no command the backend sends returns them).
struct RedisReply {
  int type = 0;               // REDIS_REPLY_STRING, _ARRAY, _INTEGER, _NIL, _STATUS, _ERROR
  long long integer = 0;      // REDIS_REPLY_INTEGER
  const char* str = nullptr;  // REDIS_REPLY_STRING, _STATUS, _ERROR
  size_t len = 0;
  size_t elements = 0;                  // REDIS_REPLY_ARRAY
  const RedisReply* element = nullptr;  // REDIS_REPLY_ARRAY
  size_t offset = 0;                    // while parsing: of `str` in the buffer
};

class RedisReplies {
 public:
  size_t size() const { return top_.size(); }
  //! The reply to command `i` of the pipeline (i < size()).
  const RedisReply& operator[](size_t i) const { return all_[top_[i]]; }

  //! Reads from `fd` (blocking; a receive timeout set on it bounds each wait) until
  //! `count` replies are parsed. Returns "" or what went wrong: "protocol error",
  //! "connection closed", "timed out", "read failed", "more replies than commands".
  //! Call once per RedisReplies.
  std::string_view ReadFrom(int fd, size_t count);

 private:
  static constexpr size_t kChunk = 64 * 1024;

  void Grow(size_t cap);
  // The line at `pos` ("<tag><text>\r\n"): its text's end, or npos if incomplete.
  size_t LineEnd(size_t pos) const;
  bool ParseInt(size_t begin, size_t end, long long* v) const;
  // One reply (or one element, `nested`) at `pos`: 1 parsed (pos moved past it), 0
  // incomplete (nothing kept), -1 malformed.
  int ParseOne(size_t& pos, bool nested = false);

  std::unique_ptr<char[]> data_;
  size_t cap_ = 0;
  size_t len_ = 0;
  std::vector<RedisReply> all_;  // every reply and array element, in order
  std::vector<size_t> top_;      // [command] -> its reply in all_
};

}  // namespace quell::counters::internal

#endif  // QUELL_COUNTERS_INTERNAL_RESP_H_
