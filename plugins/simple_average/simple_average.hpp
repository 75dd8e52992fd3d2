#pragma once
#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"

namespace fusion::methods {

/// Simple averaging (model soups, Wortsman et al. 2022): θ = (1/T) Σₜ θₜ over the experts; the
/// pretrained model is neither averaged in nor read. Streams the experts (the running sum and one
/// expert held). Integer tensors are the first expert's. No options.
class SimpleAverage : public Algorithm {
 public:
  static ComponentInfo info();
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
};

}  // namespace fusion::methods
