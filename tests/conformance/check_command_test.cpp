// `fusion check`: its arguments, the command in this process (host/check_command.cpp) and the
// `fusion` binary end to end, on a real method and on purpose-built broken ones
// (plugins/broken_plugin.cpp).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "check_command.hpp"
#include "run_binary.hpp"
#include "fusion/error.hpp"

namespace {

namespace fs = std::filesystem;
using fusion::host::check_command;
using fusion::host::CheckRequest;
using fusion::host::parse_check_arguments;

const fs::path kBinary = FUSION_BINARY;
const fs::path kTaskArithmetic = fs::path(FUSION_BUILD_PLUGIN_DIR) / "fusion_task_arithmetic.so";
const fs::path kSimpleAverage = fs::path(FUSION_BUILD_PLUGIN_DIR) / "fusion_simple_average.so";
const fs::path kBroken = fs::path(FUSION_CONFORMANCE_BROKEN_DIR) / "fusion_conformance_broken.so";

TEST(CheckArguments, NamesFlagsAndValues) {
  CheckRequest r = parse_check_arguments({"a", "--set", "weights=[1,2]", "b", "--skip=identity", "--set=a.x=1", "--all"});
  EXPECT_EQ(r.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.settings, (std::vector<std::string>{"weights=[1,2]", "a.x=1"}));
  EXPECT_EQ(r.skips, (std::vector<std::string>{"identity"}));
  EXPECT_TRUE(r.all);
  EXPECT_TRUE(parse_check_arguments({"--all"}).names.empty());
  EXPECT_THROW(parse_check_arguments({}), fusion::host::CheckUsageError);
  EXPECT_THROW(parse_check_arguments({"a", "--set"}), fusion::host::CheckUsageError);
  EXPECT_THROW(parse_check_arguments({"a", "--bogus"}), fusion::host::CheckUsageError);
}

/// check_command in this process with only `plugins` loaded (colon-separated files).
struct InProcess {
  int code = -1;
  std::string out;
  std::string error;  ///< the fusion::Error thrown, if any
};

InProcess check_in_process(const std::vector<std::string>& args, const std::string& plugins) {
  setenv("FUSION_NO_DEFAULT_PLUGINS", "1", 1);
  setenv("FUSION_PLUGIN_PATH", plugins.c_str(), 1);
  InProcess r;
  std::ostringstream out;
  try {
    r.code = check_command(parse_check_arguments(args), std::make_shared<fusion::Logger>(fusion::LogLevel::Warn), out);
  } catch (const fusion::Error& e) {
    r.error = e.what();
  }
  r.out = out.str();
  unsetenv("FUSION_PLUGIN_PATH");
  return r;
}

int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

TEST(CheckCommand, ARealMethodPassesEveryCheck) {
  InProcess r = check_in_process({"task_arithmetic"}, kTaskArithmetic.string());
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_of(r.out, "\nPASS task_arithmetic "), 6) << r.out;
  EXPECT_NE(r.out.find("PASS task_arithmetic identity: 1 model from experts equal to the pretrained model equals it"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("fusion check: 1 algorithm, 6 passed, 0 failed, 0 skipped"), std::string::npos) << r.out;
}

TEST(CheckCommand, BrokenMethodsFailNamingTheCheck) {
  InProcess r = check_in_process({"broken_modifies_pool", "broken_nan"}, kBroken.string());
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("FAIL broken_modifies_pool unmodified: during run 'run1': the pretrained model handed out by "
                       "pretrained() changed"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("FAIL broken_nan finite: model 'merged': key '"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PASS broken_nan unmodified"), std::string::npos) << r.out;
}

TEST(CheckCommand, OptionsAreScopedAndCheckedFirst) {
  const std::string plugins = kSimpleAverage.string();
  // weighted_average needs its weights: skipped without them, passes with them.
  InProcess missing = check_in_process({"weighted_average"}, plugins);
  EXPECT_EQ(missing.code, 0) << missing.out;
  EXPECT_NE(missing.out.find("SKIP weighted_average identity: cannot run without method.weights (required, no "
                             "default): give it as options (fusion check: --set weights=VALUE)"),
            std::string::npos)
      << missing.out;
  InProcess given = check_in_process({"weighted_average", "simple_average", "--set", "weighted_average.weights=[0.5,0.5]"},
                                     plugins);
  EXPECT_EQ(given.code, 0) << given.out;
  EXPECT_NE(given.out.find("fusion check: 2 algorithms, 12 passed, 0 failed, 0 skipped"), std::string::npos) << given.out;
  // An option every checked algorithm gets must be one of each one's options.
  InProcess unscoped = check_in_process({"weighted_average", "simple_average", "--set", "weights=[0.5,0.5]"}, plugins);
  EXPECT_NE(unscoped.error.find("simple_average: method.weights"), std::string::npos) << unscoped.error;
  EXPECT_EQ(unscoped.out, "");  // refused before any check ran
  InProcess other = check_in_process({"simple_average", "--set", "task_arithmetic.scaling_factor=1"}, plugins);
  EXPECT_NE(other.error.find("'task_arithmetic' is not an algorithm being checked (checking: simple_average)"),
            std::string::npos)
      << other.error;
  InProcess skip = check_in_process({"simple_average", "--skip", "simple_average.identity"}, plugins);
  EXPECT_NE(skip.out.find("SKIP simple_average identity: skipped on request: --skip simple_average.identity"),
            std::string::npos)
      << skip.out;
  InProcess two = check_in_process({"simple_average", "--skip", "identity,minimal"}, plugins);
  EXPECT_NE(two.out.find("0 failed, 2 skipped"), std::string::npos) << two.out;
  EXPECT_NE(two.out.find("SKIP simple_average minimal: skipped on request: --skip minimal"), std::string::npos)
      << two.out;
  InProcess bad_skip = check_in_process({"simple_average", "--skip", "everything"}, plugins);
  EXPECT_NE(bad_skip.error.find("unknown check 'everything'"), std::string::npos) << bad_skip.error;
}

TEST(CheckCommand, UnknownAlgorithmsAreNamed) {
  InProcess r = check_in_process({"nope"}, kTaskArithmetic.string());
  EXPECT_EQ(r.error, "check: unknown algorithm 'nope'; known algorithms: task_arithmetic, dare_task_arithmetic");
  InProcess pool = check_in_process({"safetensors"}, kTaskArithmetic.string());  // a model pool
  EXPECT_NE(pool.error.find("unknown algorithm 'safetensors'"), std::string::npos) << pool.error;
}

// ---------------------------------------------------------------------------------------------
// The `fusion` binary.

using fusion::testing::Outcome;
using fusion::testing::shell_quote;

Outcome fusion_check(const std::vector<std::string>& args, const std::string& plugins) {
  const fs::path dir = fs::temp_directory_path() / ("fusion_check_e2e_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string cmd = "env FUSION_NO_DEFAULT_PLUGINS=1 FUSION_PLUGIN_PATH=" + shell_quote(plugins) + " " +
                    shell_quote(kBinary.string()) + " check";
  for (const auto& a : args) cmd += " " + shell_quote(a);
  Outcome o = fusion::testing::run_in(dir, cmd);
  fs::remove_all(dir);
  return o;
}

TEST(FusionCheck, PassesOnTaskArithmetic) {
  Outcome o = fusion_check({"task_arithmetic"}, kTaskArithmetic.string());
  ASSERT_EQ(o.err.find("unknown command 'check'"), std::string::npos)
      << "`fusion check` is not wired into host/cli.cpp (check_command in host/check_command.hpp)";
  EXPECT_EQ(o.code, 0) << o.out << o.err;
  EXPECT_EQ(count_of(o.out, "\nPASS task_arithmetic "), 6) << o.out;
}

TEST(FusionCheck, FailsOnABrokenMethodNamingTheCheck) {
  Outcome o = fusion_check({"broken_modifies_pool"}, kBroken.string());
  ASSERT_EQ(o.err.find("unknown command 'check'"), std::string::npos) << "`fusion check` is not wired into host/cli.cpp";
  EXPECT_EQ(o.code, 1) << o.out << o.err;
  EXPECT_NE(o.out.find("FAIL broken_modifies_pool unmodified: "), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("fusion check: 1 algorithm, "), std::string::npos) << o.out;
  EXPECT_NE(o.out.find(" 1 failed"), std::string::npos) << o.out;
  // A bad option: one error line, exit 1, before any check runs.
  o = fusion_check({"broken_modifies_pool", "--set", "broken_modifies_pool.nope=1"}, kBroken.string());
  EXPECT_EQ(o.code, 1) << o.err;
  EXPECT_NE(o.err.find("fusion: error: broken_modifies_pool: method.nope"), std::string::npos) << o.err;
  EXPECT_EQ(o.out.find("PASS"), std::string::npos) << o.out;
  // A malformed command line: a usage error.
  o = fusion_check({"broken_modifies_pool", "--set"}, kBroken.string());
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find("fusion: error: check: --set needs a value"), std::string::npos) << o.err;
}

}  // namespace
