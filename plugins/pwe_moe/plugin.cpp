#include "fusion/plugin.hpp"
#include "pwe_moe.hpp"

FUSION_PLUGIN("pwe_moe", FUSION_VERSION_STRING, reg) {
  reg.add_algorithm(fusion::methods::PweMoeLs::info(), fusion::methods::PweMoeLs::create);
  reg.add_algorithm(fusion::methods::PweMoeEpo::info(), fusion::methods::PweMoeEpo::create);
}
