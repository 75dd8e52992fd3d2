// The conformance suite over every algorithm of the build tree's plugins, loaded as `fusion` loads
// them, and over the out-of-tree examples (examples/lerp_plugin, examples/adamerging, built here as
// test plugins). A new algorithm without a case below fails EveryAlgorithmHasACase.
#include <gtest/gtest.h>

#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "fusion/testing/conformance.hpp"
#include "fusion/testing/gtest.hpp"
#include "plugin_host.hpp"

namespace {

namespace ft = fusion::testing;
using fusion::host::PluginHost;

const char* const kTrains =
    "trains the model on the tasks: its output differs from the pretrained model by design, "
    "whatever the experts are";

const char* const kLanguageModel =
    "trains a GPT-2 language model on a text corpus (tokenizer, train_files): the suite's tiny model is "
    "not a GPT-2 and has no corpus; tests/finetune (LmPretrain.*) covers it";

/// One algorithm and what it needs to run on the tiny model in a short time.
struct Case {
  std::string name;
  std::vector<std::string> options;
  std::map<std::string, std::string> skip;
};

// The case's name where GoogleTest prints a parameter (ctest's test names).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"task_arithmetic", {}, {}},
      {"dare_task_arithmetic", {}, {}},
      {"ties_merging", {}, {}},
      {"simple_average", {}, {}},
      {"weighted_average", {"weights=[0.5, 0.5]"}, {}},
      {"pretrained", {}, {}},
      {"individual", {}, {}},
      {"pwe_moe_ls", {"num_steps=3", "eval_grid_m=3", "batch_size=8"}, {}},
      {"pwe_moe_epo", {"num_steps=3", "eval_grid_m=3", "batch_size=8"}, {}},
      {"finetune", {"task=task0", "num_steps=3", "batch_size=8"}, {{"identity", kTrains}}},
      {"multitask_pretrain", {"init=pretrained", "num_steps=3", "batch_size=8"}, {{"identity", kTrains}}},
      {"lm_pretrain", {}, {{"identity", kLanguageModel}, {"unmodified", kLanguageModel},
                            {"deterministic", kLanguageModel}, {"requirements", kLanguageModel},
                            {"finite", kLanguageModel}, {"minimal", kLanguageModel}}},
      {"linear_interpolation", {}, {}},  // examples/lerp_plugin
      {"task_wise_adamerging", {"max_steps=3", "batch_size=8"}, {}},  // examples/adamerging
  };
  return all;
}

/// The plugins of the build tree and the example plugin, loaded once (plugins are never unloaded).
PluginHost& registry() {
  static fusion::Logger log(fusion::LogLevel::Warn);
  static PluginHost* host = [] {
    auto* h = new PluginHost(log);
    h->add_builtins();
    h->load_path(FUSION_BUILD_PLUGIN_DIR);
    h->load_path(FUSION_CONFORMANCE_EXAMPLES_DIR);
    return h;
  }();
  return *host;
}

std::string refused() {
  std::string out;
  for (const auto& r : registry().refused()) out += "\n  refused " + r.file.string() + ": " + r.reason;
  return out;
}

class InTree : public ::testing::TestWithParam<Case> {};

TEST_P(InTree, Conforms) {
  const Case& c = GetParam();
  const fusion::host::Component* component = registry().find(c.name);
  ASSERT_NE(component, nullptr) << c.name << " is not registered: is its plugin built?" << refused();
  ASSERT_EQ(component->kind, fusion::ComponentKind::Algorithm);
  ft::ConformanceOptions options;
  options.options = c.options;
  options.skip = c.skip;
  const ft::ConformanceReport report = ft::check_algorithm(component->info, component->algorithm, options);
  FUSION_EXPECT_CONFORMS(report);
  // Every check ran, except those skipped here with a reason.
  for (const auto& check : report.checks)
    if (c.skip.count(check.check) == 0)
      EXPECT_EQ(check.status, ft::CheckStatus::Pass) << check.check << ": " << check.message;
  std::cout << report.to_string();
}

INSTANTIATE_TEST_SUITE_P(Algorithms, InTree, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(InTree, EveryAlgorithmHasACase) {
  for (const auto& component : registry().components()) {
    if (component.kind != fusion::ComponentKind::Algorithm) continue;
    bool found = false;
    for (const auto& c : cases()) found = found || c.name == component.info.name;
    EXPECT_TRUE(found) << "no conformance case for algorithm '" << component.info.name << "' ("
                       << component.origin << "): add one to cases() in " << __FILE__;
  }
  EXPECT_TRUE(registry().refused().empty()) << refused();
}

}  // namespace
