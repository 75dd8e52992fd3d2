#include "task_arithmetic.hpp"

#include <utility>

#include "fusion/merging.hpp"

namespace fusion::methods {

void TaskArithmeticOptions::bind(Options<TaskArithmeticOptions>& o) {
  o("scaling_factor", &TaskArithmeticOptions::scaling_factor, "λ in θ = θ₀ + λ Σₜ (θₜ − θ₀)");
  o("scaling_factors", &TaskArithmeticOptions::scaling_factors,
    "a λ sweep: one merged model per value, replacing scaling_factor "
    "(the task vectors are summed once)");
}

ComponentInfo TaskArithmetic::info() {
  return {"task_arithmetic", "Task arithmetic: the pretrained model plus λ times the sum of the task vectors",
          "https://arxiv.org/abs/2212.04089", {}, Requirements().pretrained().experts(1)};
}

Result TaskArithmetic::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const std::vector<double> lambdas =
      scaling_factors_of(options_.scaling_factor, options_.scaling_factors.value_or(std::vector<double>{}));
  StateDict task_vector_sum = sum_task_vectors(models, ctx);
  Result result;
  result.info = {{"num_experts", models.expert_names().size()}, {"scaling_factors", lambdas}};
  add_scaled_results(result, models.pretrained(), std::move(task_vector_sum), lambdas);
  return result;
}

}  // namespace fusion::methods
