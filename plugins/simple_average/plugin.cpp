#include "fusion/plugin.hpp"
#include "simple_average.hpp"
#include "weighted_average.hpp"

FUSION_PLUGIN("simple_average", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::methods::SimpleAverage>();
  reg.add<fusion::methods::WeightedAverage>();
}
