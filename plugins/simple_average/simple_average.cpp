#include "simple_average.hpp"

#include <vector>

#include "fusion/merging.hpp"

namespace fusion::methods {

ComponentInfo SimpleAverage::info() {
  return {"simple_average", "Simple averaging: the mean of the experts' parameters",
          "https://arxiv.org/abs/2203.05482", {}, Requirements().experts(1)};
}

Result SimpleAverage::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const size_t t = models.expert_names().size();
  Result result;
  result.info = {{"num_experts", t}};
  result.add("merged", weighted_sum_of_experts(models, ctx, std::vector<double>(t, 1.0 / static_cast<double>(t))));
  return result;
}

}  // namespace fusion::methods
