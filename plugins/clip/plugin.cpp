#include "clip_vision_pool.hpp"
#include "fusion/plugin.hpp"

FUSION_PLUGIN("clip", FUSION_VERSION_STRING, reg) {
  reg.add_model_pool(fusion::clip::ClipVisionPool::info(), fusion::clip::ClipVisionPool::create);
}
