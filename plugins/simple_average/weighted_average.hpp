#pragma once
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

namespace fusion::methods {

struct WeightedAverageOptions {
  /// One weight per expert, in the order of modelpool.models. Required (no default).
  std::vector<double> weights;
  /// Divide the weights by their sum first. Default true (as FusionBench).
  bool normalize = true;

  static void bind(Options<WeightedAverageOptions>& o);
};

/// Weighted averaging: θ = Σₜ wₜ θₜ over the experts, with wₜ / Σ w when `normalize`. Streams the
/// experts like SimpleAverage; integer tensors are the first expert's.
class WeightedAverage : public Algorithm {
 public:
  using Options = WeightedAverageOptions;
  /// Throws fusion::Error naming method.weights when, with `normalize`, the weights sum to 0.
  explicit WeightedAverage(Options options);
  static ComponentInfo info();
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const Options& options() const { return options_; }
  /// The weights actually applied (normalised when asked).
  const std::vector<double>& effective_weights() const { return weights_; }

 private:
  Options options_;
  std::vector<double> weights_;
};

}  // namespace fusion::methods
