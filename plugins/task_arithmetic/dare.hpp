#pragma once
// DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a
// Free Lunch", arXiv:2311.03099) with task arithmetic, as FusionBench's dare_task_arithmetic:
//   τ̂ₜ = mₜ ⊙ τₜ / (1 − p)   with mₜ ~ Bernoulli(1 − p) elementwise (Drop And REscale),
//   θ  = θ₀ + λ Σₜ τ̂ₜ.
// The masks are drawn on the CPU from seeds derived from the run's seed and the expert's index, so a
// run is reproducible on any device. Holds θ₀, the running sum and one expert.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/merging.hpp"
#include "fusion/options.hpp"
#include "fusion/seed.hpp"

namespace fusion::methods {

struct DareOptions {
  double scaling_factor = 0.3;
  double sparsity_ratio = 0.5;
  bool rescale = true;
  static void bind(Options<DareOptions>& o) {
    o("scaling_factor", &DareOptions::scaling_factor, "λ in θ = θ₀ + λ Σₜ τ̂ₜ");
    o("sparsity_ratio", &DareOptions::sparsity_ratio, "p: the fraction of each task vector's entries dropped")
        .range(0.0, 1.0)
        .check([](double p) { return p < 1.0 ? "" : "must be below 1 (nothing would be kept)"; });
    o("rescale", &DareOptions::rescale, "divide the kept entries by 1 − p");
  }
};

class Dare : public Algorithm {
 public:
  using Options = DareOptions;
  explicit Dare(Options o) : o_(o) {}
  static ComponentInfo info() {
    return {"dare_task_arithmetic", "DARE: task vectors randomly sparsified and rescaled, then task arithmetic",
            "https://arxiv.org/abs/2311.03099", {}, Requirements().pretrained().experts(1)};
  }

  Result run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) override {
    ConstModelPtr base = models.pretrained();
    const std::vector<std::string> names = models.expert_names();
    const double keep = 1.0 - o_.sparsity_ratio, scale = o_.rescale ? 1.0 / keep : 1.0;
    StateDict sum;
    for (size_t t = 0; t < names.size(); ++t) {
      ModelPtr expert = models.load(names[t]);
      check_same_layout(base->parameters(), expert->parameters(), "pretrained", "expert '" + names[t] + "'");
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(derive_seed(ctx.seed(), 0x64617265ull, t));
      for (const auto& [key, theta0] : base->parameters()) {
        if (!is_mergeable(theta0)) continue;
        at::Tensor tau = expert->parameters().at(key).to(accumulation_dtype(theta0.scalar_type())) - theta0;
        at::Tensor mask = at::bernoulli(at::full(tau.sizes(), keep, at::kFloat), gen).to(tau.device(), tau.scalar_type());
        at::Tensor dropped = tau.mul_(mask).mul_(scale);
        if (sum.contains(key)) sum.at(key).add_(dropped);
        else sum.set(key, dropped);
      }
    }
    Result result;
    result.info = {{"num_experts", names.size()}};
    add_scaled_results(result, base, std::move(sum), {o_.scaling_factor});
    return result;
  }

 private:
  Options o_;
};

}  // namespace fusion::methods
