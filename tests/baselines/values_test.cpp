// Identities and hand-computed values of the baseline methods, on tiny state dicts.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "fusion/merging.hpp"
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

namespace {

at::Tensor ids(std::vector<int64_t> v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

// θ₀ = {w: [1, 2], ids: [0, 1]}, a = {w: [2, 2]}, b = {w: [1, 4]}; the experts' integer tensors
// differ from the pretrained's on purpose: merges must copy the pretrained's.
std::shared_ptr<MemoryModelPool> two_expert_pool() {
  return MemoryModelPool::from_state_dicts(
      sd({{"w", f32({1, 2})}, {"ids", ids({0, 1})}}),
      {{"a", sd({{"w", f32({2, 2})}, {"ids", ids({7, 7})}})},
       {"b", sd({{"w", f32({1, 4})}, {"ids", ids({9, 9})}})}});
}

StateDict random_sd(uint64_t seed, double scale = 1.0) {
  at::manual_seed(seed);
  return sd({{"layer.weight", at::randn({5, 4}) * scale},
             {"layer.bias", at::randn({4}) * scale},
             {"position_ids", at::arange(6, at::kLong)}});
}

// Experts a, b, c: random_sd(2), random_sd(3), random_sd(4).
std::vector<std::pair<std::string, StateDict>> random_experts() {
  return {{"a", random_sd(2)}, {"b", random_sd(3)}, {"c", random_sd(4)}};
}

Context cpu_context() { return Context(); }

}  // namespace

// ---- task arithmetic ---------------------------------------------------------------------

TEST(TaskArithmetic, HandComputed) {
  auto pool = two_expert_pool();
  // Σ τ = [1, 0] + [0, 2] = [1, 2]; θ₀ + 0.5 · Σ τ = [1.5, 3].
  Result r = TaskArithmetic({0.5, {}}).run(*pool, nullptr, cpu_context());
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].label, "merged");
  EXPECT_DOUBLE_EQ(r.models[0].metadata.at("scaling_factor").get<double>(), 0.5);
  EXPECT_EQ(exact_difference(r.models[0].make()->parameters(), sd({{"w", f32({1.5, 3})}, {"ids", ids({0, 1})}})), "");
}

TEST(TaskArithmetic, LambdaZeroIsThePretrainedModel) {
  StateDict pre = random_sd(1);
  auto pool = MemoryModelPool::from_state_dicts(pre, random_experts());
  ConstModelPtr m = only_model(TaskArithmetic({0.0, {}}).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), pre), "");
}

TEST(TaskArithmetic, StreamsOneExpertAtATime) {
  auto pool = MemoryModelPool::from_state_dicts(random_sd(1), random_experts());
  TaskArithmetic().run(*pool, nullptr, cpu_context());
  EXPECT_EQ(pool->loads(), 3);
  EXPECT_EQ(pool->max_live_experts(), 1);
  EXPECT_LE(pool->max_lent_bytes_alive(), pool->expert_bytes());
}

TEST(TaskArithmetic, DefaultScalingFactorIsPointThree) {
  EXPECT_DOUBLE_EQ(TaskArithmeticOptions{}.scaling_factor, 0.3);
  auto pool = two_expert_pool();
  ConstModelPtr m = only_model(TaskArithmetic().run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(state_dict_difference(m->parameters(), sd({{"w", f32({1.3f, 2.6f})}, {"ids", ids({0, 1})}})), "");
}

TEST(TaskArithmetic, SweepSumsTheTaskVectorsOnce) {
  auto pool = two_expert_pool();
  Result r = TaskArithmetic({0.3, std::vector<double>{0.0, 0.5, 1.0}}).run(*pool, nullptr, cpu_context());
  ASSERT_EQ(r.models.size(), 3u);
  EXPECT_TRUE(r.sweep);  // one curve: the Pareto plot joins the points
  auto other = two_expert_pool();
  EXPECT_FALSE(TaskArithmetic().run(*other, nullptr, cpu_context()).sweep);  // a single model
  EXPECT_EQ(r.models[0].label, "scaling_factor=0");
  EXPECT_EQ(r.models[1].label, "scaling_factor=0.5");
  EXPECT_EQ(r.models[2].label, "scaling_factor=1");
  EXPECT_DOUBLE_EQ(r.models[2].metadata.at("scaling_factor").get<double>(), 1.0);
  EXPECT_EQ(exact_difference(r.models[0].make()->parameters(), sd({{"w", f32({1, 2})}, {"ids", ids({0, 1})}})), "");
  EXPECT_EQ(exact_difference(r.models[1].make()->parameters(), sd({{"w", f32({1.5, 3})}, {"ids", ids({0, 1})}})), "");
  EXPECT_EQ(exact_difference(r.models[2].make()->parameters(), sd({{"w", f32({2, 4})}, {"ids", ids({0, 1})}})), "");
  // Made twice, same answer (make() may be called more than once).
  EXPECT_EQ(exact_difference(r.models[1].make()->parameters(), sd({{"w", f32({1.5, 3})}, {"ids", ids({0, 1})}})), "");
  EXPECT_EQ(pool->loads(), 2);
}

TEST(TaskArithmetic, HalfPrecisionIsAccumulatedInFloat) {
  // 1 + 3 · 1e-3 in f16 steps of ~1e-3 each would drift; the sum is kept in f32.
  StateDict pre = sd({{"w", at::full({4}, 1.0, at::kHalf)}});
  std::vector<std::pair<std::string, StateDict>> experts;
  for (int i = 0; i < 8; ++i) experts.push_back({"e" + std::to_string(i), sd({{"w", at::full({4}, 1.0 + 1.0 / 1024, at::kHalf)}})});
  auto pool = MemoryModelPool::from_state_dicts(pre, experts, at::kCPU, at::kHalf);  // handed out in f16
  ConstModelPtr m = only_model(TaskArithmetic({1.0, {}}).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(m->parameters().at("w").scalar_type(), at::kHalf);
  EXPECT_NEAR(m->parameters().at("w")[0].item<double>(), 1.0 + 8.0 / 1024, 1e-3);
}

// ---- averaging ---------------------------------------------------------------------------

TEST(SimpleAverage, HandComputed) {
  auto pool = two_expert_pool();
  ConstModelPtr m = only_model(SimpleAverage().run(*pool, nullptr, cpu_context()));
  // The average of [2, 2] and [1, 4]; integer tensors are the first expert's (the pretrained is not read).
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({1.5, 3})}, {"ids", ids({7, 7})}})), "");
}

TEST(SimpleAverage, OfOneExpertIsThatExpert) {
  StateDict a = random_sd(5);
  auto pool = MemoryModelPool::from_state_dicts(random_sd(1), {{"a", a}});
  ConstModelPtr m = only_model(SimpleAverage().run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), a), "");
}

TEST(SimpleAverage, StreamsOneExpertAtATimeAndNeedsNoPretrained) {
  auto pool = MemoryModelPool::from_state_dicts(std::nullopt, random_experts());
  SimpleAverage().run(*pool, nullptr, cpu_context());
  // The running sum is the first expert's own tensors: one model's worth, never two.
  EXPECT_GT(pool->max_lent_bytes_alive(), 0);
  EXPECT_LE(pool->max_lent_bytes_alive(), pool->expert_bytes());
}

TEST(WeightedAverage, OneHotWeightsGiveThatExpert) {
  StateDict b = random_sd(3);
  auto pool = MemoryModelPool::from_state_dicts(random_sd(1), {{"a", random_sd(2)}, {"b", b}, {"c", random_sd(4)}});
  ConstModelPtr m = only_model(WeightedAverage({{0, 1, 0}, false}).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(state_dict_difference(m->parameters(), b, 0, 0), "");
  auto pool2 = MemoryModelPool::from_state_dicts(random_sd(1), {{"a", random_sd(2)}, {"b", b}});
  m = only_model(WeightedAverage({{0, 3}, true}).run(*pool2, nullptr, cpu_context()));
  EXPECT_EQ(state_dict_difference(m->parameters(), b, 0, 0), "");
}

TEST(WeightedAverage, HandComputed) {
  auto pool = two_expert_pool();
  // normalize: weights [1, 3] → [0.25, 0.75]: 0.25·[2, 2] + 0.75·[1, 4] = [1.25, 3.5].
  ConstModelPtr m = only_model(WeightedAverage({{1, 3}, true}).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({1.25, 3.5})}, {"ids", ids({7, 7})}})), "");
  // Without normalising: 1·[2, 2] + 3·[1, 4] = [5, 14].
  auto pool2 = two_expert_pool();
  m = only_model(WeightedAverage({{1, 3}, false}).run(*pool2, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({5, 14})}, {"ids", ids({7, 7})}})), "");
}

// ---- TIES ---------------------------------------------------------------------------------

TEST(TiesMerging, OneExpertThreshold100SumIsTaskArithmetic) {
  StateDict pre = random_sd(1);
  StateDict a = random_sd(2);
  for (double lambda : {0.3, 1.0}) {
    auto p1 = MemoryModelPool::from_state_dicts(pre, {{"a", a}});
    auto p2 = MemoryModelPool::from_state_dicts(pre, {{"a", a}});
    TiesMergingOptions o;
    o.threshold = 100;
    o.merge_func = "sum";
    o.scaling_factor = lambda;
    ConstModelPtr ties = only_model(TiesMerging(o).run(*p1, nullptr, cpu_context()));
    ConstModelPtr ta = only_model(TaskArithmetic({lambda, {}}).run(*p2, nullptr, cpu_context()));
    EXPECT_EQ(state_dict_difference(ties->parameters(), ta->parameters(), 1e-6, 1e-7), "");
  }
}

namespace {
// θ₀ = 0; τ₁ = [3, -1, 0.5, -2], τ₂ = [1, 2, 0.5, 1]; plus an integer key and a removed key.
std::shared_ptr<MemoryModelPool> ties_pool() {
  return MemoryModelPool::from_state_dicts(
      sd({{"w", f32({0, 0, 0, 0})}, {"ids", ids({0, 1})}, {"frozen", f32({5})}}),
      {{"t1", sd({{"w", f32({3, -1, 0.5, -2})}, {"ids", ids({3, 3})}, {"frozen", f32({9})}})},
       {"t2", sd({{"w", f32({1, 2, 0.5, 1})}, {"ids", ids({4, 4})}, {"frozen", f32({-9})}})}});
}
TiesMergingOptions ties_options(const std::string& merge) {
  TiesMergingOptions o;
  o.threshold = 50;
  o.merge_func = merge;
  o.remove_keys = {"frozen"};
  o.scaling_factor = 1.0;
  return o;
}
}  // namespace

TEST(TiesMerging, HandComputed) {
  // d = 4, K = 50: k = 4 − int(2) = 2. |τ₁| = [3, 1, .5, 2] → 2nd smallest 1 → τ̂₁ = [3, −1, 0, −2];
  // |τ₂| = [1, 2, .5, 1] → 1 (tied, both kept) → τ̂₂ = [1, 2, 0, 1]. Σ = [4, 1, 0, −1] →
  // s = [1, 1, 0, −1], Σ s = 1 → s = [1, 1, 1, −1]. Agreeing: [3 & 1, 2, –, −2].
  const std::vector<std::pair<std::string, std::vector<float>>> cases = {
      {"sum", {4, 2, 0, -2}}, {"mean", {2, 2, 0, -2}}, {"max", {3, 2, 0, -2}}};
  for (const auto& [merge, expected] : cases) {
    auto pool = ties_pool();
    ConstModelPtr m = only_model(TiesMerging(ties_options(merge)).run(*pool, nullptr, cpu_context()));
    EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32(expected)}, {"ids", ids({0, 1})}, {"frozen", f32({5})}})),
              "")
        << merge;
  }
}

TEST(TiesMerging, ZeroMajorityKeepsNegativeValuesAsFusionBench) {
  // τ₁ = [1, -1, 1], τ₂ = [-1, 1, -1] (threshold 100): Σ = 0 everywhere, s = 0 and Σ s = 0, so s stays
  // 0 and FusionBench's where(s > 0, τ > 0, τ < 0) keeps the negative entries: sum = [−1, −1, −1].
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"w", f32({0, 0, 0})}}),
      {{"a", sd({{"w", f32({1, -1, 1})}})}, {"b", sd({{"w", f32({-1, 1, -1})}})}});
  TiesMergingOptions o;
  o.threshold = 100;
  o.scaling_factor = 1.0;
  ConstModelPtr m = only_model(TiesMerging(o).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({-1, -1, -1})}})), "");
  // max: |.| max times s = 0.
  auto pool2 = MemoryModelPool::from_state_dicts(
      sd({{"w", f32({0, 0, 0})}}),
      {{"a", sd({{"w", f32({1, -1, 1})}})}, {"b", sd({{"w", f32({-1, 1, -1})}})}});
  o.merge_func = "max";
  m = only_model(TiesMerging(o).run(*pool2, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({0, 0, 0})}})), "");
}

TEST(TiesMerging, TiesAtTheCutAreKept) {
  // All magnitudes equal: K = 20 keeps "20 %", but every entry ties with the cut and is kept.
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"w", f32({0, 0, 0, 0, 0})}}), {{"a", sd({{"w", f32({1, -1, 1, -1, 1})}})}});
  TiesMergingOptions o;
  o.scaling_factor = 1.0;
  ConstModelPtr m = only_model(TiesMerging(o).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({1, -1, 1, -1, 1})}})), "");
}

TEST(TiesMerging, TrimsOverTheWholeModelNotPerTensor) {
  // Two tensors, d = 4; K = 25: k = 4 − int(1) = 3, the 3rd smallest |τ| is 10, so the two largest
  // overall are kept, both in "big". (FusionBench keeps int(K·d) + 1 entries, ties aside.)
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"big", f32({0, 0})}, {"small", f32({0, 0})}}),
      {{"a", sd({{"big", f32({10, -20})}, {"small", f32({1, -2})}})}});
  TiesMergingOptions o;
  o.threshold = 25;
  o.scaling_factor = 1.0;
  ConstModelPtr m = only_model(TiesMerging(o).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"big", f32({10, -20})}, {"small", f32({0, 0})}})), "");
}

TEST(TiesMerging, RemoveKeysTakesExactNamesAndWholeKeyRegexes) {
  TiesMergingOptions o;
  o.remove_keys = {"a.b", "layers\\.[0-9]+\\.ln"};
  TiesMerging t(o);
  EXPECT_TRUE(t.removed("a.b"));
  EXPECT_FALSE(t.removed("a.b.c"));   // a regex must match the whole key
  EXPECT_TRUE(t.removed("layers.12.ln"));
  EXPECT_FALSE(t.removed("layers.12.ln.weight"));
  o.remove_keys = {"weird[name"};  // not a valid regex: an exact name only
  EXPECT_TRUE(TiesMerging(o).removed("weird[name"));
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"w", f32({0, 0})}, {"weird[name", f32({1})}}),
      {{"a", sd({{"w", f32({1, 2})}, {"weird[name", f32({5})}})}});
  o.threshold = 100;
  o.scaling_factor = 1.0;
  ConstModelPtr m = only_model(TiesMerging(o).run(*pool, nullptr, cpu_context()));
  EXPECT_EQ(exact_difference(m->parameters(), sd({{"w", f32({1, 2})}, {"weird[name", f32({1})}})), "");
}

TEST(TiesMerging, SweepAndStreaming) {
  auto pool = MemoryModelPool::from_state_dicts(random_sd(1), random_experts());
  TiesMergingOptions o;
  o.scaling_factors = std::vector<double>{0.0, 0.4};
  Result r = TiesMerging(o).run(*pool, nullptr, cpu_context());
  ASSERT_EQ(r.models.size(), 2u);
  EXPECT_TRUE(r.sweep);
  EXPECT_EQ(r.models[1].label, "scaling_factor=0.4");
  EXPECT_EQ(exact_difference(r.models[0].make()->parameters(), random_sd(1)), "");
  EXPECT_EQ(pool->loads(), 6);  // two passes over three experts
  EXPECT_EQ(pool->max_live_experts(), 1);
  EXPECT_EQ(pool->max_lent_bytes_alive(), 0);  // each expert is dropped once flattened
}

TEST(TiesMerging, KthSmallestMagnitudeMatchesKthvalue) {
  at::manual_seed(7);
  for (int64_t n : {1, 2, 17, 1000, 300001}) {
    // Integers / 8 give many ties; a few signed zeros too.
    at::Tensor x = at::randint(-40, 41, {n}).to(at::kFloat) / 8;
    if (n > 3) x[1] = -0.0;
    for (int64_t k : {int64_t{1}, (n + 1) / 2, n}) {
      const double expected = std::get<0>(at::kthvalue(x.abs(), k)).item<double>();
      EXPECT_EQ(kth_smallest_magnitude(x, k), expected) << "n=" << n << " k=" << k;
      EXPECT_EQ(kth_smallest_magnitude(x.to(at::kDouble), k), expected) << "double path";
      if (n > 3) {  // the same over parts, as TIES passes a task vector tensor by tensor
        const std::vector<at::Tensor> parts = {x.narrow(0, 0, 1), x.narrow(0, 1, n / 2), x.narrow(0, 1 + n / 2, n - 1 - n / 2)};
        EXPECT_EQ(kth_smallest_magnitude(parts, k), expected) << "parts";
      }
    }
    at::Tensor y = at::randn({n}) * 1e-3;
    EXPECT_EQ(kth_smallest_magnitude(y, (n + 2) / 3), std::get<0>(at::kthvalue(y.abs(), (n + 2) / 3)).item<double>());
  }
}

// ---- references ---------------------------------------------------------------------------

TEST(ReferenceModels, PretrainedIsUnchanged) {
  StateDict pre = random_sd(1);
  auto pool = MemoryModelPool::from_state_dicts(pre, {{"a", random_sd(2)}});
  Result r = Pretrained().run(*pool, nullptr, cpu_context());
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].label, "pretrained");
  EXPECT_EQ(exact_difference(r.models[0].make()->parameters(), pre), "");
  EXPECT_EQ(pool->loads(), 0);
}

TEST(ReferenceModels, IndividualIsOneLazyResultPerExpert) {
  StateDict a = random_sd(2), b = random_sd(3);
  auto pool = MemoryModelPool::from_state_dicts(random_sd(1), {{"a", a}, {"b", b}});
  Result r = Individual().run(*pool, nullptr, cpu_context());
  ASSERT_EQ(r.models.size(), 2u);
  EXPECT_FALSE(r.sweep);  // unrelated models: the Pareto plot draws points, no line
  EXPECT_EQ(pool->loads(), 0);  // nothing loaded until asked
  EXPECT_EQ(r.models[0].label, "a");
  EXPECT_EQ(r.models[1].metadata.at("model"), "b");
  EXPECT_EQ(exact_difference(r.models[0].make()->parameters(), a), "");
  EXPECT_EQ(exact_difference(r.models[1].make()->parameters(), b), "");
  EXPECT_EQ(pool->max_live_experts(), 1);
}

TEST(Registration, ComponentInfoNamesSchemasAndRequirements) {
  EXPECT_EQ(TaskArithmetic::info().name, "task_arithmetic");
  EXPECT_EQ(SimpleAverage::info().name, "simple_average");
  EXPECT_EQ(WeightedAverage::info().name, "weighted_average");
  EXPECT_EQ(TiesMerging::info().name, "ties_merging");
  EXPECT_EQ(Pretrained::info().name, "pretrained");
  EXPECT_EQ(Individual::info().name, "individual");
  const Schema& s = schema_of<TiesMergingOptions>();
  ASSERT_NE(s.find("threshold"), nullptr);
  EXPECT_EQ(std::get<double>(*s.find("threshold")->default_value), 20.0);
  EXPECT_EQ(std::get<std::string>(*s.find("merge_func")->default_value), "sum");
  EXPECT_EQ(std::get<double>(*schema_of<TaskArithmeticOptions>().find("scaling_factor")->default_value), 0.3);
  EXPECT_FALSE(schema_of<WeightedAverageOptions>().find("weights")->default_value.has_value());
  // The methods without options have none.
  EXPECT_TRUE(SimpleAverage::info().schema.empty());
  EXPECT_TRUE(Pretrained::info().schema.empty());
  EXPECT_TRUE(Individual::info().schema.empty());
  EXPECT_EQ(TaskArithmetic::info().requirements.describe(), "a pretrained model, at least 1 expert");
  EXPECT_EQ(TiesMerging::info().requirements.describe(), "a pretrained model, at least 1 expert");
  EXPECT_EQ(SimpleAverage::info().requirements.describe(), "at least 1 expert");
  EXPECT_EQ(WeightedAverage::info().requirements.describe(), "at least 1 expert");
  EXPECT_EQ(Pretrained::info().requirements.describe(), "a pretrained model");
  EXPECT_EQ(Individual::info().requirements.describe(), "at least 1 expert");
}

TEST(Registration, OptionsFromCheckedConfig) {
  Config c = Config::validate("method", {{"scaling_factors", std::vector<double>{0.1, 0.2}}},
                              schema_of<TaskArithmeticOptions>());
  TaskArithmeticOptions o = read_options<TaskArithmeticOptions>(c);
  EXPECT_DOUBLE_EQ(o.scaling_factor, 0.3);
  EXPECT_EQ(o.scaling_factors, (std::vector<double>{0.1, 0.2}));
  EXPECT_FALSE(read_options<TaskArithmeticOptions>(
                   Config::validate("method", {}, schema_of<TaskArithmeticOptions>()))
                   .scaling_factors.has_value());
  TiesMergingOptions t = read_options<TiesMergingOptions>(
      Config::validate("method", {{"merge_func", std::string("mean")}}, schema_of<TiesMergingOptions>()));
  EXPECT_EQ(t.merge_func, "mean");
  EXPECT_DOUBLE_EQ(t.threshold, 20);
  EXPECT_TRUE(t.remove_keys.empty());
  EXPECT_FALSE(t.scaling_factors.has_value());
  WeightedAverageOptions w = read_options<WeightedAverageOptions>(Config::validate(
      "method", {{"weights", std::vector<double>{1, 2}}}, schema_of<WeightedAverageOptions>()));
  EXPECT_TRUE(w.normalize);
  EXPECT_EQ(w.weights, (std::vector<double>{1, 2}));
}

TEST(Registration, OptionNamesForMessages) {
  EXPECT_EQ(option_name(&WeightedAverageOptions::weights), "weights");
  EXPECT_EQ(option_name(&WeightedAverageOptions::normalize), "normalize");
  EXPECT_EQ(option_name(&TiesMergingOptions::remove_keys), "remove_keys");
}

// ---- device --------------------------------------------------------------------------------

TEST(Device, MergesOnTheContextsDevice) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  Context::Settings settings;
  settings.device = at::Device(at::kCUDA, 0);
  const Context gpu(settings);
  auto experts = std::vector<std::pair<std::string, StateDict>>{{"a", random_sd(2)}, {"b", random_sd(3)}};
  std::vector<std::pair<std::string, std::unique_ptr<Algorithm>>> methods;
  methods.emplace_back("task_arithmetic", std::make_unique<TaskArithmetic>());
  methods.emplace_back("simple_average", std::make_unique<SimpleAverage>());
  methods.emplace_back("ties_merging", std::make_unique<TiesMerging>());
  for (auto& [name, m] : methods) {
    auto cpu_pool = MemoryModelPool::from_state_dicts(random_sd(1), experts);
    auto gpu_pool = MemoryModelPool::from_state_dicts(random_sd(1), experts);
    ConstModelPtr on_cpu = only_model(m->run(*cpu_pool, nullptr, cpu_context()));
    ConstModelPtr on_gpu = only_model(m->run(*gpu_pool, nullptr, gpu));
    for (const auto& [k, t] : on_gpu->parameters()) {
      if (is_mergeable(t)) EXPECT_TRUE(t.is_cuda()) << name << " " << k;
    }
    EXPECT_EQ(state_dict_difference(on_gpu->parameters(), on_cpu->parameters(), 1e-5, 1e-6), "") << name;
  }
}
