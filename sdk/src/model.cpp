#include "fusion/model.hpp"

#include "fusion/error.hpp"
#include "fusion/model_pool.hpp"

namespace fusion {

Model::Model(std::string architecture, StateDict parameters, nlohmann::json config)
    : architecture_(std::move(architecture)), parameters_(std::move(parameters)), config_(std::move(config)) {}

Model::~Model() = default;

at::Tensor Model::forward(const StateDict&, const at::Tensor&) const {
  FUSION_FAIL("architecture '", architecture_, "' has no forward: load the model with a pool that knows "
              "its architecture (e.g. clip_vision)");
}

std::shared_ptr<Model> Model::with_parameters(StateDict parameters) const {
  check_same_layout(parameters_, parameters, "model", "new parameters");
  return std::make_shared<Model>(architecture_, std::move(parameters), config_);
}

ModelPool::~ModelPool() = default;

}  // namespace fusion
