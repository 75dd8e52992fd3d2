// fusion::Adam and the learning-rate schedules against torch.optim (golden trajectories from
// make_optim_golden.py) and hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fusion/error.hpp"
#include "fusion/optim.hpp"

namespace {

const std::filesystem::path kData = FUSION_SDK_TEST_DATA;

nlohmann::json optim_golden() {
  std::ifstream in(kData / "optim_golden.json");
  EXPECT_TRUE(in.good()) << "optim_golden.json missing: run tests/sdk/make_optim_golden.py";
  return nlohmann::json::parse(in);
}

at::Tensor vec(const nlohmann::json& j) {
  return at::tensor(j.get<std::vector<double>>(), at::kDouble);
}

}  // namespace

TEST(Optim, AdamFollowsTorchTrajectories) {
  const nlohmann::json golden = optim_golden();  // alive for the loop (not a temporary in its range)
  for (const auto& c : golden.at("adam")) {
    const double wd = c.at("weight_decay"), lr = c.at("lr");
    const int64_t steps = c.at("steps");
    SCOPED_TRACE("weight_decay " + std::to_string(wd));
    at::Tensor p = vec(c.at("theta0")).set_requires_grad(true);
    const at::Tensor a = vec(c.at("a")), b = vec(c.at("b"));
    fusion::Adam adam({p}, wd);
    for (int64_t s = 1; s <= steps; ++s) {
      const double step_lr = fusion::cosine_lr(lr, s, steps, 0.1);
      EXPECT_NEAR(step_lr, c.at("lrs")[s - 1].get<double>(), 1e-15) << "step " << s;
      adam.zero_grad();
      (0.5 * (a * p * p).sum() + (b * p).sum()).backward();
      adam.step(step_lr);
      const at::Tensor want = vec(c.at("thetas")[s - 1]);
      EXPECT_TRUE(at::allclose(p.detach(), want, 0.0, 1e-13))
          << "step " << s << ": max |diff| " << (p.detach() - want).abs().max().item<double>();
    }
    EXPECT_EQ(adam.steps(), steps);
  }
}

TEST(Optim, AdamFirstStepMovesEachCoordinateByLr) {
  // With bias correction, the first step is lr·g/|g| (up to ε) per coordinate; a zero gradient
  // leaves its coordinate where it was.
  at::Tensor p = at::tensor({1.0, -2.0, 3.0}, at::kDouble).set_requires_grad(true);
  fusion::Adam adam({p});
  (p * at::tensor({2.0, -0.5, 0.0}, at::kDouble)).sum().backward();
  adam.step(0.1);
  EXPECT_NEAR(p[0].item<double>(), 0.9, 1e-6);
  EXPECT_NEAR(p[1].item<double>(), -1.9, 1e-6);
  EXPECT_EQ(p[2].item<double>(), 3.0);
}

TEST(Optim, AdamWeightDecayIsAddedToTheGradient) {
  // A zero loss gradient with L2 decay: g = wd·θ, so the first step moves θ by lr toward 0.
  at::Tensor p = at::tensor({2.0, -4.0}, at::kDouble).set_requires_grad(true);
  fusion::Adam adam({p}, 0.5);
  (p * 0.0).sum().backward();
  adam.step(0.25);
  EXPECT_NEAR(p[0].item<double>(), 1.75, 1e-6);
  EXPECT_NEAR(p[1].item<double>(), -3.75, 1e-6);
}

TEST(Optim, AdamSkipsTensorsWithoutGradAndZeroGradClears) {
  at::Tensor used = at::ones({2}, at::kDouble).set_requires_grad(true);
  at::Tensor idle = at::ones({2}, at::kDouble).set_requires_grad(true);
  fusion::Adam adam({used, idle});
  (used * 3.0).sum().backward();
  adam.step(0.1);
  EXPECT_TRUE(at::equal(idle.detach(), at::ones({2}, at::kDouble)));
  EXPECT_FALSE(at::equal(used.detach(), at::ones({2}, at::kDouble)));
  EXPECT_TRUE(at::equal(adam.exp_avg_sq()[1], at::zeros({2}, at::kDouble)));
  adam.zero_grad();
  EXPECT_FALSE(used.grad().defined());
}

TEST(Optim, AdamResumedFromItsStateEqualsUninterrupted) {
  auto grad_step = [](at::Tensor& p, fusion::Adam& adam, double lr) {
    adam.zero_grad();
    (p * p * at::tensor({1.0, 2.0, -3.0}, at::kDouble)).sum().backward();
    adam.step(lr);
  };
  at::Tensor p = at::tensor({0.5, -1.0, 2.0}, at::kDouble).set_requires_grad(true);
  fusion::Adam adam({p});
  for (int s = 0; s < 3; ++s) grad_step(p, adam, 0.05);
  // A second optimizer restored from the first one's state after three steps.
  at::Tensor q = p.detach().clone().set_requires_grad(true);
  fusion::Adam resumed({q});
  {
    at::NoGradGuard no_grad;
    resumed.exp_avg()[0].copy_(adam.exp_avg()[0]);
    resumed.exp_avg_sq()[0].copy_(adam.exp_avg_sq()[0]);
  }
  resumed.set_steps(adam.steps());
  grad_step(p, adam, 0.05);
  grad_step(q, resumed, 0.05);
  EXPECT_TRUE(at::equal(p.detach(), q.detach()));
}

TEST(Optim, AdamRejectsBadParameters) {
  EXPECT_THROW(fusion::Adam({at::ones({2})}), fusion::Error);  // no requires_grad
  EXPECT_THROW(fusion::Adam({at::ones({2}).set_requires_grad(true)}, -1.0), fusion::Error);
}

TEST(Optim, CosineScheduleMatchesCosineAnnealingLR) {
  // CosineAnnealingLR(T_max = 10, eta_min = 0): step 1 uses the base lr, step 6 half of it; with
  // eta_min = 0.1·lr, steps past T_max stay at eta_min; total ≤ 0 keeps the base lr.
  EXPECT_DOUBLE_EQ(fusion::cosine_lr(0.1, 1, 10, 0.0), 0.1);
  EXPECT_NEAR(fusion::cosine_lr(0.1, 6, 10, 0.0), 0.05, 1e-15);
  EXPECT_NEAR(fusion::cosine_lr(0.1, 11, 10, 0.1), 0.01, 1e-15);
  EXPECT_NEAR(fusion::cosine_lr(0.1, 50, 10, 0.1), 0.01, 1e-15);
  EXPECT_DOUBLE_EQ(fusion::cosine_lr(0.1, 3, 0, 0.1), 0.1);
}

TEST(Optim, WarmupIsLinearThenCosine) {
  EXPECT_NEAR(fusion::warmup_cosine_lr(1.0, 1, 4, 14, 0.0), 0.25, 1e-15);
  EXPECT_NEAR(fusion::warmup_cosine_lr(1.0, 4, 4, 14, 0.0), 1.0, 1e-15);
  EXPECT_NEAR(fusion::warmup_cosine_lr(1.0, 5, 4, 14, 0.0), 1.0, 1e-15);   // cosine step 1
  EXPECT_NEAR(fusion::warmup_cosine_lr(1.0, 10, 4, 14, 0.0), 0.5, 1e-15);  // cosine step 6 of 10
  EXPECT_DOUBLE_EQ(fusion::warmup_cosine_lr(1.0, 7, 0, 10, 0.2), fusion::cosine_lr(1.0, 7, 10, 0.2));
}
