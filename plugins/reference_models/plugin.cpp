#include "fusion/plugin.hpp"
#include "individual.hpp"
#include "pretrained.hpp"

FUSION_PLUGIN("reference_models", FUSION_VERSION_STRING, reg) {
  reg.add_algorithm(fusion::methods::Pretrained::info(), fusion::methods::Pretrained::create);
  reg.add_algorithm(fusion::methods::Individual::info(), fusion::methods::Individual::create);
}
