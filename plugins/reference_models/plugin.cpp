#include "fusion/plugin.hpp"
#include "individual.hpp"
#include "pretrained.hpp"

FUSION_PLUGIN("reference_models", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::methods::Pretrained>();
  reg.add<fusion::methods::Individual>();
}
