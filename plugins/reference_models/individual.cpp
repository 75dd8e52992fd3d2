#include "individual.hpp"

#include <string>

namespace fusion::methods {

ComponentInfo Individual::info() {
  return {"individual", "Reference: each expert as it is, one result per expert",
          "https://github.com/tanganke/fusion_bench", {}, Requirements().experts(1)};
}

Result Individual::run(ModelPool& models, TaskPool* /*tasks*/, const Context& /*ctx*/) {
  Result result;
  ModelPool* pool = &models;
  for (const std::string& name : models.expert_names()) {
    result.add_lazy(name, [pool, name]() { return pool->load(name); }, nlohmann::json{{"model", name}});
  }
  return result;
}

}  // namespace fusion::methods
