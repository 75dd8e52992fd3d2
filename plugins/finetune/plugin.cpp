#include "finetune.hpp"
#include "fusion/plugin.hpp"
#include "multitask_pretrain.hpp"

FUSION_PLUGIN("finetune", FUSION_VERSION_STRING, reg) {
  reg.add_algorithm(fusion::finetune::Finetune::info(), fusion::finetune::Finetune::create);
  reg.add_algorithm(fusion::finetune::MultitaskPretrain::info(), fusion::finetune::MultitaskPretrain::create);
}
