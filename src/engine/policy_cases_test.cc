#include "engine/policy_cases.h"

#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::engine {
namespace {

std::string ReadExample(const std::string& name) {
  std::ifstream in(std::string(QUELL_EXAMPLES_DIR) + "/" + name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(ExamplePolicies, MusicSetLoads) {
  policy::LoadResult r = policy::LoadPolicySetWithDiagnostics(ReadExample("music.yaml"), 1);
  for (const auto& e : r.errors) ADD_FAILURE() << "music.yaml:" << e.ToString();
  ASSERT_NE(r.set, nullptr);
  EXPECT_GE(r.set->policies().size(), 20u);
}

}  // namespace
}  // namespace quell::engine
