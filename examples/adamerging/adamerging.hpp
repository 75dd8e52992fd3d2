#pragma once
// Task-wise AdaMerging (Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning",
// ICLR 2024, arXiv:2310.02575), as FusionBench's `clip_task_wise_adamerging`: an out-of-tree
// fusion plugin built against the installed SDK.
//
//   θ(λ) = θ₀ + Σₜ λₜ τₜ,   τₜ = θₜ − θ₀            (the paper's task-wise merge)
//   L(λ) = Σₖ mean over a test batch of task k of H(softmax(logitsₖ(θ(λ), x)))
//                                                   (the paper's entropy objective, summed over tasks)
//   H(p) = −Σ_c p_c log(p_c + 1e-8)                 (FusionBench's entropy_loss)
//
// λ (one scalar per expert) is the only trainable tensor; it is learnt with Adam (fusion/optim.hpp)
// on unlabeled test batches (Task::test_stream), never reading their labels. The model and the
// heads are whatever the pools provide (a CLIP vision tower and the tasks' frozen zero-shot heads in
// a CLIP run): the method uses only the SDK's Model / Task interfaces.
#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include <fusion/algorithm.hpp>
#include <fusion/component.hpp>
#include <fusion/options.hpp>

namespace adamerging {

/// The [method] table of `task_wise_adamerging`. Names and defaults are FusionBench's
/// (config/method/adamerging/clip.yaml, name = clip_task_wise_adamerging).
struct TaskWiseAdaMergingOptions {
  /// Initial λₜ of every expert. Default 0.3.
  double init_values = 0.3;
  /// Adam's learning rate (constant). Default 1e-3.
  double lr = 1e-3;
  /// Adam steps; each takes one test batch of every task. Default 1000.
  int64_t max_steps = 1000;
  /// Test images per task per step. Default 16.
  int64_t batch_size = 16;
  /// Merge with clamp(λ, 0, 1) (the gradient is zero where λ is outside). Default false.
  bool clamp_weights = false;

  static void bind(fusion::Options<TaskWiseAdaMergingOptions>& o);
};

/// Mean entropy of softmax(logits) over the rows of `logits` [N, C]: mean over n of
/// −Σ_c p_nc log(p_nc + 1e-8), computed in float32. Differentiable in `logits`.
at::Tensor entropy_loss(const at::Tensor& logits);

/// θ₀ + Σₜ wₜ τₜ for every mergeable (floating) tensor of `base`; integer tensors are base's own.
/// `weights` is a 1-D tensor of task_vectors.size() entries (any float dtype, on the tensors'
/// device); the result is differentiable in `weights`. Each τₜ must have base's keys and shapes.
fusion::StateDict merge_task_wise(const fusion::StateDict& base,
                                  const std::vector<fusion::StateDict>& task_vectors,
                                  const at::Tensor& weights);

/// Task-wise AdaMerging. Needs a pretrained model, at least one expert and a task pool whose tasks
/// serve test batches (Task::test_stream). Memory: θ₀ and every τₜ are held at once (T + 1 models)
/// with one merged copy and the autograd graph of one task's batch: fine for small models; a
/// CLIP-ViT-B/32 with 8 tasks needs about 10 × 350 MB.
///
/// Each step: merge with the current λ; for each task of the pool in order, one test batch,
/// its logits through the task's frozen head, entropy_loss, backward (gradients of the tasks add
/// up, as FusionBench's per-task backward does); one Adam step on λ. The returned model, labelled
/// "merged", is θ(λ) at the λ after the last step (clamped when clamp_weights), with metadata
/// {"lambdas": [...]} in expert order. Writes run_dir/train_log.csv (step, loss, each task's
/// entropy, each λ) when the run has a directory.
class TaskWiseAdaMerging : public fusion::Algorithm {
 public:
  using Options = TaskWiseAdaMergingOptions;
  explicit TaskWiseAdaMerging(Options options = {}) : options_(std::move(options)) {}
  static fusion::ComponentInfo info();

  fusion::Result run(fusion::ModelPool& models, fusion::TaskPool* tasks, const fusion::Context& ctx) override;
  const Options& options() const { return options_; }

 private:
  Options options_;
};

}  // namespace adamerging
