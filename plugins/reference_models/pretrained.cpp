#include "pretrained.hpp"

namespace fusion::methods {

ComponentInfo Pretrained::info() {
  return {"pretrained", "Reference: the pretrained model, unchanged", "https://github.com/tanganke/fusion_bench", {},
          Requirements().pretrained()};
}

Result Pretrained::run(ModelPool& models, TaskPool* /*tasks*/, const Context& /*ctx*/) {
  Result result;
  result.add("pretrained", models.pretrained(), nlohmann::json{{"model", "pretrained"}});
  return result;
}

}  // namespace fusion::methods
