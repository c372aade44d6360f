#include "core/threads.h"

#include <pthread.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace quell::core {

void NameThisThread(std::string_view name) {
  const std::string cut(name.substr(0, kMaxThreadName));
  (void)pthread_setname_np(pthread_self(), cut.c_str());
}

void NameThisThread(std::string_view prefix, int n) {
  NameThisThread(absl::StrCat(absl::string_view(prefix.data(), prefix.size()), n));
}

}  // namespace quell::core
