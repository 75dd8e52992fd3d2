#pragma once
#include <memory>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/config.hpp"
#include "fusion/plugin.hpp"

namespace fusion::methods {

struct WeightedAverageOptions {
  /// One weight per expert, in the order of modelpool.models. Required (no default).
  std::vector<double> weights;
  /// Divide the weights by their sum first. Default true (as FusionBench).
  bool normalize = true;

  static WeightedAverageOptions from_config(const Config& config);
};

/// Weighted averaging: θ = Σₜ wₜ θₜ over the experts, with wₜ / Σ w when `normalize`. Streams the
/// experts like SimpleAverage; integer tensors are the first expert's.
class WeightedAverage : public Algorithm {
 public:
  explicit WeightedAverage(WeightedAverageOptions options);
  static ComponentInfo info();
  static std::unique_ptr<Algorithm> create(const Context& ctx);
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const WeightedAverageOptions& options() const { return options_; }

  /// The weights actually applied (normalised when asked). Throws fusion::Error naming
  /// method.weights when a weight is not finite or, with `normalize`, the weights sum to 0.
  std::vector<double> effective_weights() const;

 private:
  WeightedAverageOptions options_;
};

}  // namespace fusion::methods
