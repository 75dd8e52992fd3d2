// Golden tests: every case of data/<set>/cases.json, made by make_golden.py (the reference math of
// design/reference.md and FusionBench's TIES), run through the C++ methods.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/checkpoint_stream.hpp"
#include "fusion/safetensors.hpp"
#include "simple_average.hpp"
#include "support.hpp"
#include "task_arithmetic.hpp"
#include "ties_merging.hpp"
#include "weighted_average.hpp"

using namespace fusion;
using namespace fusion::methods;
namespace fs = std::filesystem;

namespace {

struct GoldenCase {
  std::string set;
  std::string name;
  std::string method;
  nlohmann::json options;
};

std::vector<GoldenCase> all_cases() {
  std::vector<GoldenCase> out;
  for (const char* set : {"grid", "random"}) {
    std::ifstream in(fs::path(FUSION_BASELINES_DATA) / set / "cases.json");
    if (!in) continue;  // reported by the test below
    const nlohmann::json manifest = nlohmann::json::parse(in);
    for (const auto& c : manifest.at("cases")) {
      out.push_back({set, c.at("name").get<std::string>(), c.at("method").get<std::string>(), c.at("options")});
    }
  }
  return out;
}

std::unique_ptr<Algorithm> make_method(const GoldenCase& c) {
  const nlohmann::json& o = c.options;
  if (c.method == "task_arithmetic") {
    return std::make_unique<TaskArithmetic>(TaskArithmeticOptions{o.at("scaling_factor").get<double>(), {}});
  }
  if (c.method == "simple_average") return std::make_unique<SimpleAverage>();
  if (c.method == "weighted_average") {
    return std::make_unique<WeightedAverage>(
        WeightedAverageOptions{o.at("weights").get<std::vector<double>>(), o.at("normalize").get<bool>()});
  }
  if (c.method == "ties_merging") {
    TiesMergingOptions t;
    t.threshold = o.at("threshold").get<double>();
    t.merge_func = o.at("merge_func").get<std::string>();
    t.remove_keys = o.at("remove_keys").get<std::vector<std::string>>();
    t.scaling_factor = o.at("scaling_factor").get<double>();
    return std::make_unique<TiesMerging>(t);
  }
  ADD_FAILURE() << "unknown method " << c.method;
  return nullptr;
}

class Golden : public ::testing::TestWithParam<GoldenCase> {};

}  // namespace

TEST(GoldenData, IsPresent) {
  EXPECT_GE(all_cases().size(), 20u) << "run /usr/bin/python3 tests/baselines/make_golden.py";
}

TEST_P(Golden, MatchesReference) {
  const GoldenCase& c = GetParam();
  const fs::path dir = fs::path(FUSION_BASELINES_DATA) / c.set;
  // float32 takes the methods' fused CPU loops; float64 takes their generic ATen path (as on CUDA).
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    SCOPED_TRACE(dtype == at::kFloat ? "float32" : "float64");
    std::vector<std::pair<std::string, StateDict>> experts;
    for (int i = 0; fs::exists(dir / ("expert_" + std::to_string(i) + ".safetensors")); ++i) {
      experts.push_back({"expert_" + std::to_string(i),
                         load_safetensors(dir / ("expert_" + std::to_string(i) + ".safetensors"), at::kCPU, dtype)});
    }
    ASSERT_EQ(experts.size(), 3u);
    // Handed out in the dtype they were loaded in (the pool's default would make them float32).
    auto pool = fusion::testing::MemoryModelPool::from_state_dicts(
        load_safetensors(dir / "pretrained.safetensors", at::kCPU, dtype), experts, at::kCPU, dtype);
    const StateDict expected = load_safetensors(dir / ("expected_" + c.name + ".safetensors"), at::kCPU, dtype);
    std::unique_ptr<Algorithm> method = make_method(c);
    ASSERT_NE(method, nullptr);
    Result r = method->run(*pool, nullptr, Context());
    ASSERT_EQ(r.models.size(), 1u);
    // The reference ran in float32; the grid set is exact in float32 (dyadic values).
    EXPECT_EQ(fusion::testing::state_dict_difference(r.models[0].make()->parameters(), expected, 1e-6, 1e-6), "");
  }
}

TEST_P(Golden, StreamedFromFilesMatchesReference) {
  // The same case through the `safetensors` pool reading the golden files themselves: the methods
  // then stream the weights straight from the files (detail::CheckpointStream) instead of loading
  // each model. Float32 on the CPU, the streamed path's domain.
  const GoldenCase& c = GetParam();
  const fs::path dir = fs::path(FUSION_BASELINES_DATA) / c.set;
  StringMap models;
  std::vector<std::string> names{"pretrained"};
  for (int i = 0; fs::exists(dir / ("expert_" + std::to_string(i) + ".safetensors")); ++i) {
    models.emplace_back("expert_" + std::to_string(i), (dir / ("expert_" + std::to_string(i) + ".safetensors")).string());
    names.push_back(models.back().first);
  }
  ASSERT_EQ(models.size(), 3u);
  std::map<std::string, Value> values{{"pretrained", (dir / "pretrained.safetensors").string()}, {"models", models}};
  CheckpointModelPool pool(Context().with_config(Config::validate("modelpool", values, schema_of<CheckpointPoolOptions>())));
  ASSERT_NE(fusion::detail::CheckpointStream::open(pool, names), nullptr) << "the streamed path does not apply";
  const StateDict expected = load_safetensors(dir / ("expected_" + c.name + ".safetensors"));
  std::unique_ptr<Algorithm> method = make_method(c);
  ASSERT_NE(method, nullptr);
  Result r = method->run(pool, nullptr, Context());
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(fusion::testing::state_dict_difference(r.models[0].make()->parameters(), expected, 1e-6, 1e-6), "");
}

INSTANTIATE_TEST_SUITE_P(Baselines, Golden, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           return info.param.set + "_" + info.param.name;
                         });
