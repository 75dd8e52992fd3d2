#include "fusion/plugin.hpp"

namespace fusion {

Registrar::~Registrar() = default;

}  // namespace fusion
