#include "fusion/plugin.hpp"
#include "image_classification.hpp"

FUSION_PLUGIN("image_classification", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::image_classification::ImageClassificationPool>();
}
