#include "fusion/gpt2/pool.hpp"
#include "fusion/plugin.hpp"

FUSION_PLUGIN("gpt2", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::gpt2::Gpt2Pool>();
}
