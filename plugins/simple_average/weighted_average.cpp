#include "weighted_average.hpp"

#include <utility>

#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

void WeightedAverageOptions::bind(Options<WeightedAverageOptions>& o) {
  o("weights", &WeightedAverageOptions::weights, "one weight per expert, in the order of modelpool.models")
      .required()
      .check([](const std::vector<double>& w) { return w.empty() ? "is empty: give one weight per expert" : ""; });
  o("normalize", &WeightedAverageOptions::normalize, "divide the weights by their sum");
}

WeightedAverage::WeightedAverage(Options options) : options_(std::move(options)), weights_(options_.weights) {
  if (!options_.normalize) return;
  double total = 0;
  for (double w : weights_) total += w;
  FUSION_ENSURE(total != 0.0, "method.", option_name(&Options::weights), " sum to 0 and cannot be normalized (set ",
                option_name(&Options::normalize), " = false)");
  for (double& w : weights_) w /= total;
}

ComponentInfo WeightedAverage::info() {
  return {"weighted_average", "Weighted averaging: Σₜ wₜ θₜ over the experts with user weights",
          "https://arxiv.org/abs/2203.05482", {}, Requirements().experts(1)};
}

Result WeightedAverage::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const size_t t = models.expert_names().size();
  const std::string key = option_name(&Options::weights);
  FUSION_ENSURE(weights_.size() == t, "method.", key, " has ", weights_.size(),
                " entries but the model pool has ", t, " experts");
  Result result;
  result.info = {{"num_experts", t}, {key, weights_}};
  result.add("merged", weighted_sum_of_experts(models, ctx, weights_), nlohmann::json{{key, weights_}});
  return result;
}

}  // namespace fusion::methods
