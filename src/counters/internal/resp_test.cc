#include "counters/internal/resp.h"

#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <string_view>
#include <thread>

#include "gtest/gtest.h"

namespace quell::counters::internal {
namespace {

// Sends `parts` on a socket pair (one write each, from another thread, so that the
// parser meets replies cut anywhere), closes it, and parses `count` replies.
class Pipe {
 public:
  Pipe() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds_), 0); }
  ~Pipe() { close(fds_[0]); }
  std::string Parse(std::vector<std::string> parts, size_t count, RedisReplies* out) {
    std::thread writer([this, parts = std::move(parts)] {
      for (const std::string& p : parts) {
        EXPECT_EQ(write(fds_[1], p.data(), p.size()), static_cast<ssize_t>(p.size()));
        std::this_thread::yield();
      }
      close(fds_[1]);
    });
    std::string error(out->ReadFrom(fds_[0], count));
    writer.join();
    return error;
  }

 private:
  int fds_[2];
};

std::string_view Str(const RedisReply& r) { return std::string_view(r.str, r.len); }

TEST(RedisReplies, EveryTypeOfAPipelineEvenCutMidReply) {
  RedisReplies r;
  Pipe pipe;
  ASSERT_EQ(pipe.Parse({"+OK\r\n:4", "2\r\n$5\r\nhel", "lo\r\n$-1\r\n*3\r\n:1\r\n$0\r\n\r\n",
                        "$-1\r\n-ERR wrong type\r\n*-1\r\n"},
                       7, &r),
            "");
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0].type, REDIS_REPLY_STATUS);
  EXPECT_EQ(Str(r[0]), "OK");
  EXPECT_EQ(r[1].type, REDIS_REPLY_INTEGER);
  EXPECT_EQ(r[1].integer, 42);
  EXPECT_EQ(r[2].type, REDIS_REPLY_STRING);
  EXPECT_EQ(Str(r[2]), "hello");
  EXPECT_EQ(r[3].type, REDIS_REPLY_NIL);
  ASSERT_EQ(r[4].type, REDIS_REPLY_ARRAY);
  ASSERT_EQ(r[4].elements, 3u);
  EXPECT_EQ(r[4].element[0].integer, 1);
  EXPECT_EQ(r[4].element[1].type, REDIS_REPLY_STRING);
  EXPECT_EQ(Str(r[4].element[1]), "");
  EXPECT_EQ(r[4].element[2].type, REDIS_REPLY_NIL);
  EXPECT_EQ(r[5].type, REDIS_REPLY_ERROR);
  EXPECT_EQ(Str(r[5]), "ERR wrong type");
  EXPECT_EQ(r[6].type, REDIS_REPLY_NIL);
}

TEST(RedisReplies, BadStreamsAreErrorsNotGuesses) {
  struct Case {
    std::string stream;
    size_t count;
    std::string_view error;
  };
  const Case cases[] = {
      {":1\r\n", 2, "connection closed"},  // fewer replies than commands
      {":1\r\n:2\r\n", 1, "more replies than commands"},
      {"$10\r\nabc", 1, "connection closed"},       // a bulk string cut short
      {"*2\r\n:1\r\n", 1, "connection closed"},     // an array cut short
      {"*1\r\n*1\r\n:1\r\n", 1, "protocol error"},  // arrays in arrays
      {":12x\r\n", 1, "protocol error"},
      {"$-2\r\n", 1, "protocol error"},
      {"?what\r\n", 1, "protocol error"},
  };
  for (const Case& c : cases) {
    RedisReplies r;
    Pipe pipe;
    EXPECT_EQ(pipe.Parse({c.stream}, c.count, &r), c.error) << c.stream;
  }
}

}  // namespace
}  // namespace quell::counters::internal
