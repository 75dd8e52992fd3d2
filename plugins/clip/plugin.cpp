#include "fusion/clip/vision_pool.hpp"
#include "fusion/plugin.hpp"

FUSION_PLUGIN("clip", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::clip::ClipVisionPool>();
}
