#include "task_arithmetic.hpp"

#include <utility>

#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

TaskArithmeticOptions TaskArithmeticOptions::from_config(const Config& config) {
  TaskArithmeticOptions o;
  o.scaling_factor = config.get<double>("scaling_factor");
  if (config.has("scaling_factors")) o.scaling_factors = config.get<std::vector<double>>("scaling_factors");
  return o;
}

TaskArithmetic::TaskArithmetic(TaskArithmeticOptions options) : options_(std::move(options)) {
  scaling_factors_of(options_.scaling_factor, options_.scaling_factors);  // validates
}

ComponentInfo TaskArithmetic::info() {
  ComponentInfo info;
  info.name = "task_arithmetic";
  info.summary = "Task arithmetic: the pretrained model plus λ times the sum of the task vectors";
  info.reference = "https://arxiv.org/abs/2212.04089";
  info.schema.add("scaling_factor", 0.3, "λ in θ = θ₀ + λ Σₜ (θₜ − θ₀)");
  info.schema.add_optional("scaling_factors", ValueType::DoubleList,
                           "a λ sweep: one merged model per value, replacing scaling_factor "
                           "(the task vectors are summed once)");
  return info;
}

std::unique_ptr<Algorithm> TaskArithmetic::create(const Context& ctx) {
  return std::make_unique<TaskArithmetic>(TaskArithmeticOptions::from_config(ctx.config()));
}

Result TaskArithmetic::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const std::vector<double> lambdas = scaling_factors_of(options_.scaling_factor, options_.scaling_factors);
  // Only checked here: the pretrained model is loaded after the experts are summed.
  FUSION_ENSURE(models.has_pretrained(), "task_arithmetic needs a pretrained model: set modelpool.pretrained");
  StateDict task_vector_sum = sum_task_vectors(models, ctx);
  Result result;
  result.info = {{"num_experts", models.expert_names().size()}, {"scaling_factors", lambdas}};
  add_scaled_results(result, models.pretrained(), std::move(task_vector_sum), lambdas);
  return result;
}

}  // namespace fusion::methods
