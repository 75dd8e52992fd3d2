#include "simple_average.hpp"

#include <vector>

#include "fusion/merging.hpp"

namespace fusion::methods {

ComponentInfo SimpleAverage::info() {
  ComponentInfo info;
  info.name = "simple_average";
  info.summary = "Simple averaging: the mean of the experts' parameters";
  info.reference = "https://arxiv.org/abs/2203.05482";
  return info;
}

std::unique_ptr<Algorithm> SimpleAverage::create(const Context& /*ctx*/) {
  return std::make_unique<SimpleAverage>();
}

Result SimpleAverage::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  const size_t t = expert_names_checked(models, "simple_average").size();
  const std::vector<double> weights(t, 1.0 / static_cast<double>(t));
  Result result;
  result.info = {{"num_experts", t}};
  result.add("merged", weighted_sum_of_experts(models, ctx, weights));
  return result;
}

}  // namespace fusion::methods
