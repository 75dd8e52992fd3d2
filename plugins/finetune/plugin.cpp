#include "finetune.hpp"
#include "fusion/plugin.hpp"
#include "lm_pretrain.hpp"
#include "multitask_pretrain.hpp"

FUSION_PLUGIN("finetune", FUSION_VERSION_STRING, reg) {
  reg.add<fusion::finetune::Finetune>();
  reg.add<fusion::finetune::MultitaskPretrain>();
  reg.add<fusion::finetune::LmPretrain>();
}
