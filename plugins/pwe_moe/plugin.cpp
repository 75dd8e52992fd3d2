#include "fusion/plugin.hpp"
#include "pwe_moe.hpp"

FUSION_PLUGIN("pwe_moe", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::methods::PweMoeLs>();
  reg.add<fusion::methods::PweMoeEpo>();
}
