// DARE (dare_task_arithmetic): drop-and-rescale of each task vector, then task arithmetic.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dare.hpp"
#include "support.hpp"
#include "task_arithmetic.hpp"

using namespace fusion;
using namespace fusion::methods;
using namespace fusion::testing;

namespace {

// θ₀ = 0 and one expert whose task vector is all ones, 20 000 entries: merged = λ · τ̂.
std::shared_ptr<MemoryModelPool> ones_pool() {
  return MemoryModelPool::from_state_dicts(sd({{"w", at::zeros({200, 100})}}), {{"a", sd({{"w", at::ones({200, 100})}})}});
}

at::Tensor merged_w(const DareOptions& o, uint64_t seed = 42) {
  Context::Settings s;
  s.seed = seed;
  auto pool = ones_pool();
  return only_model(Dare(o).run(*pool, nullptr, Context(s)))->parameters().at("w");
}

}  // namespace

TEST(Dare, WithoutDroppingItIsTaskArithmetic) {
  at::manual_seed(3);
  auto pool = MemoryModelPool::from_state_dicts(
      sd({{"w", at::randn({6, 5})}, {"ids", at::arange(4, at::kLong)}}),
      {{"a", sd({{"w", at::randn({6, 5})}, {"ids", at::arange(4, at::kLong)}})},
       {"b", sd({{"w", at::randn({6, 5})}, {"ids", at::arange(4, at::kLong)}})}});
  const StateDict dare = only_model(Dare({0.4, 0.0, true}).run(*pool, nullptr, Context()))->parameters();
  const StateDict ta = only_model(TaskArithmetic({0.4, {}}).run(*pool, nullptr, Context()))->parameters();
  EXPECT_EQ(state_dict_difference(dare, ta, 1e-6, 1e-6), "");
}

TEST(Dare, DropsAboutPAndRescalesTheRest) {
  const at::Tensor w = merged_w({0.5, 0.3, true});
  const double kept_value = 0.5 / 0.7;  // λ · 1 / (1 − p)
  const at::Tensor kept = (w - kept_value).abs() < 1e-6;
  const at::Tensor dropped = w == 0;
  EXPECT_TRUE((kept | dropped).all().item<bool>()) << "every entry is either dropped or rescaled";
  const double drop_rate = dropped.to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(drop_rate, 0.3, 0.015);  // 20 000 Bernoulli(0.3) draws: σ ≈ 0.0032
  // Without rescaling the kept entries are λ τ.
  const at::Tensor plain = merged_w({0.5, 0.3, false});
  EXPECT_TRUE((((plain - 0.5).abs() < 1e-6) | (plain == 0)).all().item<bool>());
}

TEST(Dare, TheMaskFollowsTheRunSeed) {
  EXPECT_TRUE(merged_w({0.5, 0.5, true}, 7).equal(merged_w({0.5, 0.5, true}, 7)));
  EXPECT_FALSE(merged_w({0.5, 0.5, true}, 7).equal(merged_w({0.5, 0.5, true}, 8)));
}

TEST(Dare, SparsityOneIsRefusedWhenRead) {
  const std::string msg = error_of([] {
    Config::validate("method", {{"sparsity_ratio", 1.0}}, schema_of<DareOptions>());
  });
  EXPECT_EQ(msg, "method.sparsity_ratio must be below 1 (nothing would be kept)");
}
