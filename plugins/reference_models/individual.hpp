#pragma once
#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"

namespace fusion::methods {

/// FusionBench's individual-model reference: every expert as it is, one result per expert
/// (labelled with the expert's name, metadata {"model": name}). Each is loaded lazily from the
/// pool when the host asks for it, so at most one is held; the result must therefore be used while
/// the pool is alive, as the host does. No options.
class Individual : public Algorithm {
 public:
  static ComponentInfo info();
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
};

}  // namespace fusion::methods
