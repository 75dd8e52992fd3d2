#pragma once
#include <memory>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/config.hpp"
#include "fusion/plugin.hpp"

namespace fusion::methods {

struct TaskArithmeticOptions {
  /// λ in θ = θ₀ + λ Σₜ τₜ. Default 0.3.
  double scaling_factor = 0.3;
  /// A λ sweep: when non-empty, one merged model per value (and `scaling_factor` is not used);
  /// Σₜ τₜ is computed once for all of them. Default: empty.
  std::vector<double> scaling_factors;

  /// Reads the options from a config checked against TaskArithmetic::info().schema.
  static TaskArithmeticOptions from_config(const Config& config);
};

/// Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
/// θ = θ₀ + λ Σₜ (θₜ − θ₀). Streams the experts: holds at most the running sum, one expert and,
/// at the end, the pretrained model. Integer tensors are the pretrained model's.
class TaskArithmetic : public Algorithm {
 public:
  explicit TaskArithmetic(TaskArithmeticOptions options = {});
  static ComponentInfo info();
  static std::unique_ptr<Algorithm> create(const Context& ctx);

  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const TaskArithmeticOptions& options() const { return options_; }

 private:
  TaskArithmeticOptions options_;
};

}  // namespace fusion::methods
