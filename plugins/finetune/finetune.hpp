#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

namespace fusion::finetune {

/// The options of `finetune` (FusionBench's clip_finetune defaults where it has them).
struct FinetuneOptions {
  /// The task to fine-tune on (a name in the task pool; required).
  std::string task;
  /// The starting model: "pretrained" or the name of an expert in the model pool. Default
  /// "pretrained".
  std::string from = "pretrained";
  /// Which parameters train: "all", "encoder", "mlp" or "attention" (see is_trainable). Default "all".
  std::string trainable = "all";
  /// Optimizer steps, one batch each. Default 4000.
  int64_t num_steps = 4000;
  /// Images per step. Default 32.
  int64_t batch_size = 32;
  /// Adam's peak learning rate; cosine annealing to min_lr_factor·lr over num_steps. Default 1e-5.
  double lr = 1e-5;
  /// The learning rate at the last step as a fraction of lr. Default 0.
  double min_lr_factor = 0.0;
  /// Adam's L2 weight decay. Default 0.
  double weight_decay = 0.0;
  /// A train_log.csv row every this many steps (and at the last). Default 10.
  int64_t log_interval = 10;
  /// Label of the result (the saved folder's name under models/); "" : the task's name. Default "".
  std::string label;

  static void bind(Options<FinetuneOptions>& o);
};

/// Fine-tunes the model pool's pretrained vision tower (or an expert) on one task's train split,
/// through the task's frozen classification head: cross-entropy, Adam, cosine learning-rate
/// schedule, the run's seed for the data order. Returns the fine-tuned model, labelled by the task,
/// which the host evaluates and saves (run.save_models = true) through the model pool's save —
/// for clip_vision a Hugging Face CLIPVisionModel folder. Writes run_dir/train_log.csv
/// (step, loss, lr, seconds). info: trainable_params, first/last/mean-of-last-10% train loss,
/// train_seconds. Needs a task pool; method.task must have a train split, and `from` = "pretrained"
/// a pretrained model.
class Finetune : public Algorithm {
 public:
  using Options = FinetuneOptions;
  explicit Finetune(FinetuneOptions options);
  static ComponentInfo info();

  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const FinetuneOptions& options() const { return options_; }

 private:
  FinetuneOptions options_;
};

}  // namespace fusion::finetune
