#include "fusion/algorithm.hpp"

namespace fusion {

Algorithm::~Algorithm() = default;

void Result::add(std::string label, ConstModelPtr model, nlohmann::json metadata) {
  models.push_back(ResultModel{std::move(label), std::move(metadata),
                               [model = std::move(model)]() { return model; }});
}

void Result::add_lazy(std::string label, std::function<ConstModelPtr()> make, nlohmann::json metadata) {
  models.push_back(ResultModel{std::move(label), std::move(metadata), std::move(make)});
}

}  // namespace fusion
