#include "fusion/plugin.hpp"
#include "task_arithmetic.hpp"

FUSION_PLUGIN("task_arithmetic", FUSION_VERSION_STRING, reg) {
  reg.add_algorithm(fusion::methods::TaskArithmetic::info(), fusion::methods::TaskArithmetic::create);
}
