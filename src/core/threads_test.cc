#include "core/threads.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace quell::core {
namespace {

// What the kernel reports for the calling thread, as `top -H` reads it.
std::string KernelName() {
  std::ifstream in(absl::StrCat("/proc/self/task/", syscall(SYS_gettid), "/comm"));
  std::string name;
  std::getline(in, name);
  return name;
}

TEST(Threads, NamesTheCallingThreadOnly) {
  const std::string before = KernelName();
  std::string inside;
  std::thread t([&] {
    NameThisThread("quell-commit");
    inside = KernelName();
  });
  t.join();
  EXPECT_EQ(inside, "quell-commit");
  EXPECT_EQ(KernelName(), before);
}

TEST(Threads, LongNamesAndNumberedNamesAreCutToWhatLinuxKeeps) {
  std::string numbered, long_name;
  std::thread([&] {
    NameThisThread("quell-http-", 12);
    numbered = KernelName();
    NameThisThread("quell-a-name-longer-than-fifteen");
    long_name = KernelName();
  }).join();
  EXPECT_EQ(numbered, "quell-http-12");
  EXPECT_EQ(long_name, "quell-a-name-lo");
  EXPECT_EQ(long_name.size(), kMaxThreadName);
}

}  // namespace
}  // namespace quell::core
