#include "fusion/plugin.hpp"

namespace fusion {

Registrar::~Registrar() = default;

const char* kind_name(ComponentKind kind) {
  switch (kind) {
    case ComponentKind::Algorithm: return "algorithm";
    case ComponentKind::ModelPool: return "modelpool";
    case ComponentKind::TaskPool: return "taskpool";
  }
  return "?";
}

}  // namespace fusion
