#pragma once
// What finetune and multitask_pretrain share beyond the SDK's Adam and schedules
// (fusion/optim.hpp): choosing the trainable parameters, and the training log.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/optim.hpp"
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
