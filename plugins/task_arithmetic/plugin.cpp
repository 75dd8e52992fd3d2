#include "dare.hpp"
#include "fusion/plugin.hpp"
#include "task_arithmetic.hpp"

FUSION_PLUGIN("task_arithmetic", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::methods::TaskArithmetic>();
  reg.add<fusion::methods::Dare>();
}
