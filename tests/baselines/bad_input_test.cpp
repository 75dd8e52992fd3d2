// Bad input: each gets one fusion::Error whose message names what is wrong and where.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fusion/config.hpp"
#include "fusion/merging.hpp"
#include "individual.hpp"
#include "pretrained.hpp"
#include "simple_average.hpp"
#include "support.hpp"
#include "task_arithmetic.hpp"
#include "ties_merging.hpp"
#include "weighted_average.hpp"

using namespace fusion;
using namespace fusion::methods;
using fusion::testing::error_of;
using fusion::testing::f32;
using fusion::testing::MemoryPool;
using fusion::testing::sd;
using ::testing::HasSubstr;

namespace {
// Expert "b" has w of shape [3] where the pretrained model and expert "a" have [2].
MemoryPool mismatched_pool() {
  return MemoryPool(sd({{"w", f32({1, 2})}}),
                    {{"a", sd({{"w", f32({1, 1})}})}, {"b", sd({{"w", f32({1, 1, 1})}})}});
}
MemoryPool missing_key_pool() {
  return MemoryPool(sd({{"w", f32({1, 2})}, {"v", f32({0})}}),
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
    MemoryPool pool = mismatched_pool();
    const std::string msg = error_of([&] { m->run(pool, nullptr, Context()); });
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
    MemoryPool pool = missing_key_pool();
    const std::string msg = error_of([&] { make()->run(pool, nullptr, Context()); });
    EXPECT_THAT(msg, HasSubstr("expert 'b' lacks key 'v'"));
  }
}

TEST(BadInput, WeightsOfWrongLength) {
  MemoryPool pool(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({1})}})}, {"b", sd({{"w", f32({2})}})}});
  const std::string msg =
      error_of([&] { WeightedAverage({{1, 2, 3}, true}).run(pool, nullptr, Context()); });
  EXPECT_THAT(msg, HasSubstr("method.weights has 3 entries but the model pool has 2 experts"));
  EXPECT_EQ(pool.loads(), 0);  // refused before reading anything
}

TEST(BadInput, WeightsThatCannotBeNormalized) {
  EXPECT_THAT(error_of([] { WeightedAverage({{1, -1}, true}); }), HasSubstr("method.weights sum to 0"));
  EXPECT_THAT(error_of([] { WeightedAverage({{1, std::nan("")}, false}); }), HasSubstr("method.weights must be finite"));
  EXPECT_THAT(error_of([] { WeightedAverage({{}, false}); }), HasSubstr("method.weights is empty"));
}

TEST(BadInput, OutOfRangeOptions) {
  TiesMergingOptions o;
  o.threshold = 120;
  EXPECT_THAT(error_of([&] { TiesMerging{o}; }), HasSubstr("method.threshold"));
  o.threshold = -1;
  EXPECT_THAT(error_of([&] { TiesMerging{o}; }), HasSubstr("method.threshold"));
  o = TiesMergingOptions{};
  o.merge_func = "median";
  EXPECT_THAT(error_of([&] { TiesMerging{o}; }), HasSubstr("method.merge_func"));
  EXPECT_THAT(error_of([] { TaskArithmetic({std::nan(""), {}}); }), HasSubstr("method.scaling_factor must be finite"));
  EXPECT_THAT(error_of([] { TaskArithmetic({0.3, {0.1, INFINITY}}); }), HasSubstr("method.scaling_factors must be finite"));
  MemoryPool pool(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({1})}})}});
  EXPECT_THAT(error_of([&] { TaskArithmetic({0.3, {0.1, 0.1}}).run(pool, nullptr, Context()); }),
              HasSubstr("method.scaling_factors lists 0.1 more than once"));
}

TEST(BadInput, OutOfRangeOptionsThroughTheSchema) {
  // The schema carries the ranges and choices, so the host's Config::validate refuses them too.
  EXPECT_THAT(error_of([] {
                Config::validate("method", {{"threshold", 120.0}}, TiesMerging::info().schema);
              }),
              HasSubstr("method.threshold"));
  EXPECT_THAT(error_of([] {
                Config::validate("method", {{"merge_func", std::string("median")}}, TiesMerging::info().schema);
              }),
              HasSubstr("method.merge_func"));
  EXPECT_THAT(error_of([] { Config::validate("method", {}, WeightedAverage::info().schema); }),
              HasSubstr("method.weights"));
  EXPECT_THAT(error_of([] {
                Config::validate("method", {{"scaling_factr", 0.3}}, TaskArithmetic::info().schema);
              }),
              HasSubstr("method.scaling_factr"));
}

TEST(BadInput, NoPretrainedOrNoExperts) {
  MemoryPool no_pre(std::nullopt, {{"a", sd({{"w", f32({1})}})}});
  EXPECT_THAT(error_of([&] { TaskArithmetic().run(no_pre, nullptr, Context()); }),
              HasSubstr("task_arithmetic needs a pretrained model"));
  EXPECT_THAT(error_of([&] { TiesMerging().run(no_pre, nullptr, Context()); }),
              HasSubstr("ties_merging needs a pretrained model"));
  EXPECT_THAT(error_of([&] { Pretrained().run(no_pre, nullptr, Context()); }),
              HasSubstr("pretrained needs a pretrained model"));
  MemoryPool no_experts(sd({{"w", f32({1})}}), {});
  EXPECT_THAT(error_of([&] { SimpleAverage().run(no_experts, nullptr, Context()); }), HasSubstr("no experts"));
  EXPECT_THAT(error_of([&] { TaskArithmetic().run(no_experts, nullptr, Context()); }), HasSubstr("no experts"));
  EXPECT_THAT(error_of([&] { TiesMerging().run(no_experts, nullptr, Context()); }), HasSubstr("no experts"));
  EXPECT_THAT(error_of([&] { Individual().run(no_experts, nullptr, Context()); }), HasSubstr("no experts"));
}

TEST(BadInput, RemoveKeysThatRemoveEverything) {
  MemoryPool pool(sd({{"w", f32({1})}}), {{"a", sd({{"w", f32({2})}})}});
  TiesMergingOptions o;
  o.remove_keys = {".*"};
  EXPECT_THAT(error_of([&] { TiesMerging(o).run(pool, nullptr, Context()); }), HasSubstr("method.remove_keys"));
}
