#include "fusion/plugin.hpp"
#include "text_classification.hpp"

FUSION_PLUGIN("text_classification", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::text_classification::TextClassificationPool>();
}
