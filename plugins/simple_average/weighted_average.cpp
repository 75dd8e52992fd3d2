#include "weighted_average.hpp"

#include <cmath>
#include <utility>

#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

WeightedAverageOptions WeightedAverageOptions::from_config(const Config& config) {
  WeightedAverageOptions o;
  o.weights = config.get<std::vector<double>>("weights");
  o.normalize = config.get<bool>("normalize");
  return o;
}

WeightedAverage::WeightedAverage(WeightedAverageOptions options) : options_(std::move(options)) {
  effective_weights();  // validates
}

ComponentInfo WeightedAverage::info() {
  ComponentInfo info;
  info.name = "weighted_average";
  info.summary = "Weighted averaging: Σₜ wₜ θₜ over the experts with user weights";
  info.reference = "https://arxiv.org/abs/2203.05482";
  info.schema.add_required("weights", ValueType::DoubleList,
                           "one weight per expert, in the order of modelpool.models");
  info.schema.add("normalize", true, "divide the weights by their sum");
  return info;
}

std::unique_ptr<Algorithm> WeightedAverage::create(const Context& ctx) {
  return std::make_unique<WeightedAverage>(WeightedAverageOptions::from_config(ctx.config()));
}

std::vector<double> WeightedAverage::effective_weights() const {
  FUSION_ENSURE(!options_.weights.empty(), "method.weights is empty: give one weight per expert");
  double total = 0;
  for (double w : options_.weights) {
    FUSION_ENSURE(std::isfinite(w), "method.weights must be finite, got ", w);
    total += w;
  }
  if (!options_.normalize) return options_.weights;
  FUSION_ENSURE(total != 0.0, "method.weights sum to 0 and cannot be normalized (set normalize = false)");
  std::vector<double> out = options_.weights;
  for (double& w : out) w /= total;
  return out;
}

Result WeightedAverage::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const size_t t = expert_names_checked(models, "weighted_average").size();
  FUSION_ENSURE(options_.weights.size() == t, "method.weights has ", options_.weights.size(),
                " entries but the model pool has ", t, " experts");
  const std::vector<double> weights = effective_weights();
  Result result;
  result.info = {{"num_experts", t}, {"weights", weights}};
  result.add("merged", weighted_sum_of_experts(models, ctx, weights), nlohmann::json{{"weights", weights}});
  return result;
}

}  // namespace fusion::methods
