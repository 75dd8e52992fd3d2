#pragma once
// What finetune and multitask_pretrain share: choosing the trainable parameters, Adam with a
// cosine schedule, and the training log.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/state_dict.hpp"

namespace fusion::finetune {

/// Which of a CLIP vision tower's parameters a fine-tuning run trains (Hugging Face's key names):
///   "all"       every floating-point parameter (FusionBench's full fine-tuning);
///   "encoder"   the transformer blocks only (`.encoder.layers.`): embeddings and layer norms frozen;
///   "mlp"       the blocks' MLPs only (`.mlp.`);
///   "attention" the blocks' self-attention only (`.self_attn.`).
/// Integer tensors (position ids) are never trained.
bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset);
/// The subsets is_trainable knows, for the option's choices.
const std::vector<std::string>& trainable_subsets();

/// Cosine annealing as torch.optim.lr_scheduler.CosineAnnealingLR(T_max = total, eta_min =
/// min_factor·lr) stepped after each optimizer step: 1-based step `step` uses
/// eta_min + (lr − eta_min)(1 + cos(π (step − 1) / total)) / 2.
double cosine_lr(double lr, int64_t step, int64_t total, double min_factor = 0.0);

/// Adam (torch.optim.Adam: β = (0.9, 0.999), ε = 1e-8, L2 weight decay added to the gradient as
/// PyTorch does) on a fixed list of leaf tensors that require grad. Tensors without a grad after
/// backward are skipped. Not thread-safe.
class Adam {
 public:
  Adam(std::vector<at::Tensor> params, double weight_decay = 0.0);
  /// Clears every parameter's grad.
  void zero_grad();
  /// One update with learning rate `lr` from each parameter's .grad.
  void step(double lr);
  int64_t steps() const { return step_; }

 private:
  std::vector<at::Tensor> params_, m_, v_;
  double weight_decay_;
  int64_t step_ = 0;
};

/// Rows of a training log, written as CSV (header first) atomically by save().
class TrainLog {
 public:
  explicit TrainLog(std::vector<std::string> columns);
  void add(const std::vector<double>& row);
  /// Writes `path` atomically. Does nothing when `path` is empty.
  void save(const std::filesystem::path& path) const;
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<double>> rows_;
};

/// "1.23e-04"-style short numbers for progress postfixes.
std::string short_number(double v);

}  // namespace fusion::finetune
