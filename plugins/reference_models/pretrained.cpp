#include "pretrained.hpp"

#include "fusion/merging.hpp"

namespace fusion::methods {

ComponentInfo Pretrained::info() {
  ComponentInfo info;
  info.name = "pretrained";
  info.summary = "Reference: the pretrained model, unchanged";
  info.reference = "https://github.com/tanganke/fusion_bench";
  return info;
}

std::unique_ptr<Algorithm> Pretrained::create(const Context& /*ctx*/) {
  return std::make_unique<Pretrained>();
}

Result Pretrained::run(ModelPool& models, TaskPool* /*tasks*/, const Context& /*ctx*/) {
  Result result;
  result.add("pretrained", pretrained_checked(models, "pretrained"), nlohmann::json{{"model", "pretrained"}});
  return result;
}

}  // namespace fusion::methods
