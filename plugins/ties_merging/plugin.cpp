#include "fusion/plugin.hpp"
#include "ties_merging.hpp"

FUSION_PLUGIN("ties_merging", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::methods::TiesMerging>();
}
