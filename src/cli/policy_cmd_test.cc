#include "cli/policy_cmd.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::cli {
namespace {

using ::testing::HasSubstr;

// Runs PolicyCommand capturing stdout and stderr.
struct CmdRun {
  int rc;
  std::string out, err;
};
CmdRun Call(const std::vector<std::string>& args) {
  std::stringstream out, err;
  auto* old_out = std::cout.rdbuf(out.rdbuf());
  auto* old_err = std::cerr.rdbuf(err.rdbuf());
  int rc = PolicyCommand(args);
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  return {rc, out.str(), err.str()};
}

const std::string kExamples = QUELL_EXAMPLES_DIR;

TEST(PolicyCommand, CheckTheExample) {
  CmdRun r = Call({"check", kExamples + "/music.yaml"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("music.yaml: OK (25 policies"));
}

TEST(PolicyCommand, CheckListsEveryErrorWithFileLineColumn) {
  std::string path = ::testing::TempDir() + "/bad-policy.yaml";
  std::ofstream(path) << "policies:\n  - id: p\n    on: detection\n    wehn: true\n"
                         "    action: bogus\n";
  CmdRun r = Call({"check", path});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr(path + ":2:5: policy p needs `when:`"));
  EXPECT_THAT(r.err, HasSubstr(path + ":4:5: unknown key \"wehn\""));
  EXPECT_THAT(r.err, HasSubstr(path + ":5:13: unknown action \"bogus\""));
  EXPECT_THAT(r.err, HasSubstr("3 errors"));
}

TEST(PolicyCommand, TestRunsTheCases) {
  CmdRun r = Call({"test", kExamples + "/music.yaml", "--cases", kExamples + "/cases"});
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr(" passed, 0 failed"));

  std::string dir = ::testing::TempDir() + "/failing-cases";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/a.yaml")
      << "name: wrong\ndetections:\n  - {type: fake_account, entity: \"user:z\", score: 0.99}\n"
         "expect: []\n";
  r = Call({"test", kExamples + "/music.yaml", "--cases", dir});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("FAIL wrong"));
  EXPECT_THAT(r.out, HasSubstr("+ unexpected: user:z suspend active (policy fake-account)"));
  EXPECT_THAT(r.out, HasSubstr("0 passed, 1 failed"));
}

TEST(PolicyCommand, Usage) {
  EXPECT_EQ(Call({}).rc, 2);
  EXPECT_EQ(Call({"frobnicate"}).rc, 2);
  EXPECT_EQ(Call({"check"}).rc, 2);
  EXPECT_EQ(Call({"test", "x.yaml"}).rc, 2);
  EXPECT_EQ(Call({"check", "--help"}).rc, 0);
  EXPECT_EQ(Call({"check", "/nonexistent.yaml"}).rc, 1);
}

}  // namespace
}  // namespace quell::cli
