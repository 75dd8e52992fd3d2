#pragma once
#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"

namespace fusion::methods {

/// FusionBench's `dummy`/pretrained reference: the pretrained model, unchanged (one result,
/// "pretrained"). Reads nothing else. No options.
class Pretrained : public Algorithm {
 public:
  static ComponentInfo info();
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
};

}  // namespace fusion::methods
