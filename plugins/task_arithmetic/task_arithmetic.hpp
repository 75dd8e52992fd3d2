#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

namespace fusion::methods {

struct TaskArithmeticOptions {
  /// λ in θ = θ₀ + λ Σₜ τₜ. Default 0.3.
  double scaling_factor = 0.3;
  /// A λ sweep: one merged model per value (and `scaling_factor` is not used); Σₜ τₜ is computed
  /// once for all of them. Default: absent.
  std::optional<std::vector<double>> scaling_factors;

  static void bind(Options<TaskArithmeticOptions>& o);
};

/// Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
/// θ = θ₀ + λ Σₜ (θₜ − θ₀). Streams the experts: holds at most the running sum, one expert and,
/// at the end, the pretrained model. Integer tensors are the pretrained model's.
class TaskArithmetic : public Algorithm {
 public:
  using Options = TaskArithmeticOptions;
  explicit TaskArithmetic(Options options = {}) : options_(std::move(options)) {}
  static ComponentInfo info();

  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const Options& options() const { return options_; }

 private:
  Options options_;
};

}  // namespace fusion::methods
