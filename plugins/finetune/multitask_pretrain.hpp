#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

namespace fusion::finetune {

/// The options of `multitask_pretrain`.
struct MultitaskPretrainOptions {
  /// "random": a CLIP vision tower built from `model_config` with Hugging Face's random
  /// initialisation (seeded by the run's seed); "pretrained": the model pool's pretrained model.
  /// Default "random".
  std::string init = "random";
  /// A CLIPVisionModel (or CLIPModel) config.json, or a folder holding one; required with
  /// init = "random". Default "".
  std::string model_config;
  /// The tasks trained on, one head each; empty: every task of the task pool. Default empty.
  std::vector<std::string> tasks;
  /// Width of each head's projection (CLIP's projection_dim). Default 64.
  int64_t projection_dim = 64;
  /// The heads' fixed logit scale (exp of CLIP's logit_scale; CLIP starts at 1/0.07). Default 1/0.07.
  double logit_scale = 1.0 / 0.07;
  /// Optimizer steps; each takes one batch of every task. Default 1000.
  int64_t num_steps = 1000;
  /// Images per task per step. Default 64.
  int64_t batch_size = 64;
  /// Adam's peak learning rate: linear warm-up over warmup_steps, then cosine annealing to
  /// min_lr_factor·lr. Default 1e-3.
  double lr = 1e-3;
  /// Steps of linear warm-up from lr/warmup_steps to lr. Default 0.
  int64_t warmup_steps = 0;
  /// The last step's learning rate as a fraction of lr. Default 0.
  double min_lr_factor = 0.0;
  /// Adam's L2 weight decay. Default 0.
  double weight_decay = 0.0;
  /// A train_log.csv row every this many steps (and at the last). Default 10.
  int64_t log_interval = 10;
  /// Where the heads go, one `<task>.safetensors` each; "" : run_dir/heads. Default "".
  std::string heads_dir;
  /// Label of the resulting model (its folder under models/). Default "pretrained".
  std::string label = "pretrained";

  static void bind(Options<MultitaskPretrainOptions>& o);
};

/// A task's trainable classification head, of the zero-shot head's form (fusion/clip/zero_shot.hpp):
/// logits = logit_scale · normalise(pooled · projectionᵀ) · normalise(class_embeds)ᵀ.
struct TrainableHead {
  at::Tensor projection;    ///< [projection_dim, hidden]
  at::Tensor class_embeds;  ///< [num_classes, projection_dim], normalised in forward
  double logit_scale = 1.0;

  at::Tensor forward(const at::Tensor& pooled) const;
};

/// Writes `head` as a head file the image_classification task pool loads (keys `projection`
/// [proj, hidden], `text_embeds` [C, proj] — the normalised class embeddings — and `logit_scale`,
/// a one-element f32 tensor holding the multiplier), atomically.
void save_head_file(const std::filesystem::path& path, const TrainableHead& head);

/// The demo's shared starting model (no CLIP weights can be had offline): a short multi-task
/// training of a small CLIP-architecture vision transformer, from random initialisation or from
/// the pool's pretrained model, with one trainable head per task on top of the pooled output. The
/// tasks' batches are summed into one loss per step (mean over tasks). Returns the vision tower,
/// labelled `label`, which the host saves through the model pool (run.save_models = true: a
/// CLIPVisionModel folder), and writes each task's head to heads_dir/<task>.safetensors: frozen,
/// these become the tasks' heads for fine-tuning and merging. Writes run_dir/train_log.csv.
class MultitaskPretrain : public Algorithm {
 public:
  using Options = MultitaskPretrainOptions;
  /// Throws fusion::Error naming method.model_config when init = "random" has none.
  explicit MultitaskPretrain(MultitaskPretrainOptions options);
  static ComponentInfo info();

  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const MultitaskPretrainOptions& options() const { return options_; }

 private:
  MultitaskPretrainOptions options_;
};

}  // namespace fusion::finetune
