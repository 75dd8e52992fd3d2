#include "fusion/plugin.hpp"
#include "simple_average.hpp"
#include "weighted_average.hpp"

FUSION_PLUGIN("simple_average", FUSION_VERSION_STRING, reg) {
  reg.add_algorithm(fusion::methods::SimpleAverage::info(), fusion::methods::SimpleAverage::create);
  reg.add_algorithm(fusion::methods::WeightedAverage::info(), fusion::methods::WeightedAverage::create);
}
