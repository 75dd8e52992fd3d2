#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  /// GPT-2 only: a safetensors file to which the trained `score.weight` is also written before the
  /// host evaluates (name the same file as taskpool.heads.<task>); "" : none. Default "".
  std::string head_file;
  /// GPT-2 only: the classes' names by index, the expert's id2label (empty: LABEL_0, LABEL_1, ...).
  /// Default empty.
  std::vector<std::string> label_names;
  /// GPT-2 only: the padding id of the task's batches; the classifier pools the token before a
  /// row's first one (FusionBench's pad = eos). Saved as the expert's pad_token_id. Default 50256.
  int64_t pad_token_id = 50256;
  /// GPT-2 only: the standard deviation of the fresh head's normal initialisation (Hugging Face's
  /// initializer_range). Default 0.02.
  double head_init_std = 0.02;
  /// GPT-2 only: the first head_only_steps steps train the fresh head alone on the frozen body (a
  /// linear probe, the body run without gradients); then the `trainable` parameters join. The
  /// cosine schedule runs over the head-only steps, then restarts over the rest. Default 0.
  int64_t head_only_steps = 0;
  /// GPT-2 only: the head's peak learning rate (its schedule follows lr's); 0: lr. Default 0.
  double head_lr = 0.0;

  static void bind(Options<FinetuneOptions>& o);
};

/// Fine-tunes the model pool's pretrained model (or an expert) on one task's train split:
/// cross-entropy, Adam, cosine learning-rate schedule, the run's seed for the data order.
///  - A vision tower (clip_vision) trains through the task's frozen classification head (the task's
///    logits); the result is saved as a Hugging Face CLIPVisionModel folder.
///  - A GPT-2 body (the gpt2 pool) trains together with a fresh sequence-classification head
///    (`score.weight` [classes, n_embd], no bias, N(0, head_init_std)), applied to the last hidden
///    state at the token before each row's first pad_token_id, as GPT2ForSequenceClassification
///    does: the expert of FusionBench's GPT-2 setting. The result is a GPT2ForSequenceClassification
///    model (id2label from label_names, pad_token_id), saved as its Hugging Face folder; head_file,
///    when set, receives the trained head before the host evaluates the model with the task's head.
/// Returns the fine-tuned model, labelled by the task, which the host evaluates and saves
/// (run.save_models = true) through the model pool's save. Writes run_dir/train_log.csv
/// (step, loss, accuracy, lr, seconds). info: trainable_params, first/last/mean-of-last-10% train
/// loss, train_seconds. Needs a task pool; method.task must have a train split, and `from` =
/// "pretrained" a pretrained model.
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
