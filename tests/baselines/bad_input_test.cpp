// Bad input: each gets one fusion::Error whose message names what is wrong and where.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/options.hpp"
#include "individual.hpp"
#include "pretrained.hpp"
#include "simple_average.hpp"
#include "support.hpp"
#include "task_arithmetic.hpp"
#include "ties_merging.hpp"
#include "weighted_average.hpp"

using namespace fusion;
using namespace fusion::methods;
using namespace fusion::testing;
using ::testing::HasSubstr;

namespace {
// Expert "b" has w of shape [3] where the pretrained model and expert "a" have [2].
std::shared_ptr<MemoryModelPool> mismatched_pool() {
  return MemoryModelPool::from_state_dicts(
      sd({{"w", f32({1, 2})}}),
      {{"a", sd({{"w", f32({1, 1})}})}, {"b", sd({{"w", f32({1, 1, 1})}})}});
}
std::shared_ptr<MemoryModelPool> missing_key_pool() {
  return MemoryModelPool::from_state_dicts(
      sd({{"w", f32({1, 2})}, {"v", f32({0})}}),
      {{"a", sd({{"w", f32({1, 1})}, {"v", f32({0})}})}, {"b", sd({{"w", f32({1, 1})}})}});
}
}  // namespace

TEST(BadInput, ExpertShapeDiffersNamesKeyAndBothShapes) {
  std::vector<std::unique_ptr<Algorithm>> methods;
  methods.push_back(std::make_unique<TaskArithmetic>());
  methods.push_back(std::make_unique<SimpleAverage>());
  methods.push_back(std::make_unique<WeightedAverage>(WeightedAverageOptions{{1, 1}, true}));
  methods.push_back(std::make_unique<TiesMerging>());
  for (auto& m : methods) {
    auto pool = mismatched_pool();
    const std::string msg = error_of([&] { m->run(*pool, nullptr, Context()); });
    EXPECT_THAT(msg, HasSubstr("key 'w'"));
    EXPECT_THAT(msg, HasSubstr("[2]"));
    EXPECT_THAT(msg, HasSubstr("[3]"));
    EXPECT_THAT(msg, HasSubstr("expert 'b'"));
  }
}

TEST(BadInput, ExpertLacksAKey) {
  for (auto make : {+[]() -> std::unique_ptr<Algorithm> { return std::make_unique<TaskArithmetic>(); },
                    +[]() -> std::unique_ptr<Algorithm> { return std::make_unique<TiesMerging>(); },
                    +[]() -> std::unique_ptr<Algorithm> { return std::make_unique<SimpleAverage>(); }}) {
    auto pool = missing_key_pool();
    const std::string msg = error_of([&] { make()->run(*pool, nullptr, Context()); });
    EXPECT_THAT(msg, HasSubstr("expert 'b' lacks key 'v'"));
  }
}

TEST(BadInput, WeightsOfWrongLength) {
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({1})}})}, {"b", sd({{"w", f32({2})}})}});
  const std::string msg =
      error_of([&] { WeightedAverage({{1, 2, 3}, true}).run(*pool, nullptr, Context()); });
  EXPECT_THAT(msg, HasSubstr("method.weights has 3 entries but the model pool has 2 experts"));
  EXPECT_EQ(pool->loads(), 0);  // refused before reading anything
}

TEST(BadInput, WeightsThatCannotBeNormalized) {
  EXPECT_EQ(error_of([] { WeightedAverage({{1, -1}, true}); }),
            "method.weights sum to 0 and cannot be normalized (set normalize = false)");
  EXPECT_EQ(WeightedAverage({{1, -1}, false}).effective_weights(), (std::vector<double>{1, -1}));
  EXPECT_EQ(WeightedAverage({{1, 3}, true}).effective_weights(), (std::vector<double>{0.25, 0.75}));
}

namespace {
// The error Config::validate gives for `values` in [method] against T's options binding.
template <class T>
std::string refused(const std::map<std::string, Value>& values) {
  return error_of([&] { Config::validate("method", values, schema_of<typename T::Options>()); });
}
}  // namespace

TEST(BadInput, OptionsRefusedWhenRead) {
  // Ranges, choices and checks are declared in the options' binding: the host's Config::validate
  // refuses them before anything is built.
  EXPECT_EQ(refused<TiesMerging>({{"threshold", 120.0}}), "method.threshold: expected a value in [0, 100], got 120.0");
  EXPECT_EQ(refused<TiesMerging>({{"threshold", -1.0}}), "method.threshold: expected a value in [0, 100], got -1.0");
  EXPECT_EQ(refused<TiesMerging>({{"merge_func", std::string("median")}}),
            "method.merge_func: expected one of \"sum\", \"mean\", \"max\", got \"median\"");
  EXPECT_THAT(refused<WeightedAverage>({}), HasSubstr("method.weights: required option missing"));
  EXPECT_EQ(refused<WeightedAverage>({{"weights", std::vector<double>{}}}),
            "method.weights is empty: give one weight per expert");
  EXPECT_THAT(refused<TaskArithmetic>({{"scaling_factr", 0.3}}), HasSubstr("method.scaling_factr: unknown option"));
  // Non-finite numbers are refused when read, naming the option (and the entry of a list).
  EXPECT_EQ(refused<TaskArithmetic>({{"scaling_factor", std::nan("")}}),
            "method.scaling_factor: expected a finite number, got nan");
  EXPECT_EQ(refused<TaskArithmetic>({{"scaling_factors", std::vector<double>{0.1, INFINITY}}}),
            "method.scaling_factors[1]: expected a finite number, got inf");
  EXPECT_EQ(refused<TiesMerging>({{"scaling_factor", -INFINITY}}),
            "method.scaling_factor: expected a finite number, got -inf");
  EXPECT_EQ(refused<WeightedAverage>({{"weights", std::vector<double>{1, std::nan("")}}}),
            "method.weights[1]: expected a finite number, got nan");
}

TEST(BadInput, DuplicateScalingFactors) {
  for (auto make : {+[]() -> std::unique_ptr<Algorithm> { return std::make_unique<TaskArithmetic>(TaskArithmeticOptions{0.3, std::vector<double>{0.1, 0.1}}); },
                    +[]() -> std::unique_ptr<Algorithm> {
                      TiesMergingOptions o;
                      o.scaling_factors = std::vector<double>{0.1, 0.1};
                      return std::make_unique<TiesMerging>(o);
                    }}) {
    auto pool = MemoryModelPool::from_state_dicts(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({1})}})}});
    EXPECT_THAT(error_of([&] { make()->run(*pool, nullptr, Context()); }),
                HasSubstr("method.scaling_factors lists 0.1 more than once"));
  }
}

TEST(BadInput, UnknownMergeFuncGivenDirectly) {
  // Not through a config (which refuses it when read): the method still names it.
  TiesMergingOptions o;
  o.merge_func = "median";
  auto pool = MemoryModelPool::from_state_dicts(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({1})}})}});
  EXPECT_EQ(error_of([&] { TiesMerging(o).run(*pool, nullptr, Context()); }),
            "ties_merging: unknown merge function 'median'");
  EXPECT_EQ(pool->loads(), 0);
}

TEST(BadInput, RequirementsAreCheckedByTheHostInOneFormat) {
  // The host calls check_requirements(T::info(), pool, tasks) before any weight is read.
  auto no_pre = MemoryModelPool::from_state_dicts(std::nullopt, {{"a", sd({{"w", f32({1})}})}});
  EXPECT_EQ(error_of([&] { check_requirements(TaskArithmetic::info(), *no_pre, nullptr); }),
            "task_arithmetic needs a pretrained model: set modelpool.pretrained");
  EXPECT_EQ(error_of([&] { check_requirements(TiesMerging::info(), *no_pre, nullptr); }),
            "ties_merging needs a pretrained model: set modelpool.pretrained");
  EXPECT_EQ(error_of([&] { check_requirements(Pretrained::info(), *no_pre, nullptr); }),
            "pretrained needs a pretrained model: set modelpool.pretrained");
  auto no_experts = MemoryModelPool::from_state_dicts(sd({{"w", f32({1})}}), {});
  for (const ComponentInfo& info : {TaskArithmetic::info(), TiesMerging::info(), SimpleAverage::info(),
                                    WeightedAverage::info(), Individual::info()}) {
    EXPECT_EQ(error_of([&] { check_requirements(info, *no_experts, nullptr); }),
              info.name + " needs at least 1 expert, the model pool has 0: add them under [modelpool.models]");
  }
  // What each needs, and nothing more: averaging and the individual experts need no pretrained
  // model, the pretrained reference no expert.
  check_requirements(SimpleAverage::info(), *no_pre, nullptr);
  check_requirements(WeightedAverage::info(), *no_pre, nullptr);
  check_requirements(Individual::info(), *no_pre, nullptr);
  check_requirements(Pretrained::info(), *no_experts, nullptr);
  EXPECT_EQ(no_pre->loads() + no_experts->loads(), 0);
}

TEST(BadInput, RemoveKeysThatRemoveEverything) {
  auto pool = MemoryModelPool::from_state_dicts(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({2})}})}});
  TiesMergingOptions o;
  o.remove_keys = {".*"};
  EXPECT_THAT(error_of([&] { TiesMerging(o).run(*pool, nullptr, Context()); }), HasSubstr("method.remove_keys"));
}
