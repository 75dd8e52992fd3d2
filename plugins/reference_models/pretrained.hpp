#pragma once
#include <memory>

#include "fusion/algorithm.hpp"
#include "fusion/plugin.hpp"

namespace fusion::methods {

/// FusionBench's `dummy`/pretrained reference: the pretrained model, unchanged (one result,
/// "pretrained"). Reads nothing else. No options.
class Pretrained : public Algorithm {
 public:
  static ComponentInfo info();
  static std::unique_ptr<Algorithm> create(const Context& ctx);
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
};

}  // namespace fusion::methods
