#include "individual.hpp"

#include <string>

#include "fusion/merging.hpp"

namespace fusion::methods {

ComponentInfo Individual::info() {
  ComponentInfo info;
  info.name = "individual";
  info.summary = "Reference: each expert as it is, one result per expert";
  info.reference = "https://github.com/tanganke/fusion_bench";
  return info;
}

std::unique_ptr<Algorithm> Individual::create(const Context& /*ctx*/) {
  return std::make_unique<Individual>();
}

Result Individual::run(ModelPool& models, TaskPool* /*tasks*/, const Context& /*ctx*/) {
  Result result;
  ModelPool* pool = &models;
  for (const std::string& name : expert_names_checked(models, "individual")) {
    result.add_lazy(name, [pool, name]() { return pool->load(name); }, nlohmann::json{{"model", name}});
  }
  return result;
}

}  // namespace fusion::methods
