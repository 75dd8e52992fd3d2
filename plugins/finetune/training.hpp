#pragma once
// What finetune and multitask_pretrain share beyond the SDK's Adam and schedules
// (fusion/optim.hpp) and training log (fusion/train_log.hpp): choosing the trainable parameters,
// and short numbers for progress bars.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "fusion/optim.hpp"
#include "fusion/options.hpp"
#include "fusion/train_log.hpp"

namespace fusion::finetune {

/// Which of a CLIP vision tower's or a GPT-2 body's parameters a fine-tuning run trains (Hugging
/// Face's key names):
///   "all"       every floating-point parameter (FusionBench's full fine-tuning);
///   "encoder"   the transformer blocks only (CLIP `.encoder.layers.`, GPT-2 `transformer.h.`):
///               embeddings and the final layer norm frozen;
///   "mlp"       the blocks' MLPs only (`.mlp.`);
///   "attention" the blocks' self-attention only (CLIP `.self_attn.`, GPT-2 `.attn.`).
/// Integer tensors (position ids) are never trained.
bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset);
/// The subsets is_trainable knows, for the option's choices.
const std::vector<std::string>& trainable_subsets();

/// {name: value} of the given options of `o`, each named by its binding (report.json metadata).
template <class O, class... M>
nlohmann::json option_values(const O& o, M O::*... members) {
  nlohmann::json j = nlohmann::json::object();
  ((j[option_name(members)] = o.*members), ...);
  return j;
}

/// "1.23e-04"-style short numbers for progress postfixes.
std::string short_number(double v);

}  // namespace fusion::finetune
