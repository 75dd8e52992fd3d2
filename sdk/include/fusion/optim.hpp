#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "fusion/export.hpp"

/// What methods that train something share: Adam and the cosine learning-rate schedule, with the
/// numerics of torch.optim (so that a Python reference run and a fusion run agree step for step).
/// LibTorch's own torch::optim is not used: it pulls in the whole C++ frontend (<torch/torch.h>,
/// minutes of compile time per translation unit) and its schedulers step one off from Python's.
namespace fusion {

/// Adam as torch.optim.Adam with amsgrad = False and maximize = False (the single-tensor update):
///   g ← grad + weight_decay·θ            (L2 weight decay added to the gradient, as PyTorch does)
///   m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²
///   θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
/// with β = (0.9, 0.999) and ε = 1e-8, on a fixed list of leaf tensors that require grad (the state
/// m, v lives on each tensor's device and dtype). A tensor without a grad after backward is
/// skipped, as in PyTorch. The state is exposed so that a method can checkpoint and resume it.
/// Not thread-safe.
class FUSION_SDK_API Adam {
 public:
  /// Throws fusion::Error when a tensor does not require grad or weight_decay is negative.
  explicit Adam(std::vector<at::Tensor> params, double weight_decay = 0.0);

  /// Clears every parameter's grad (set to an undefined tensor, as zero_grad(set_to_none=True)).
  void zero_grad();
  /// One update with learning rate `lr` from each parameter's .grad; counts one step.
  void step(double lr);

  /// Updates taken so far (the t of the bias corrections).
  int64_t steps() const { return step_; }
  /// Sets the step count, for a resumed run whose m and v were restored.
  void set_steps(int64_t steps) { step_ = steps; }
  /// First and second moment estimates, one per parameter in construction order; writable so that
  /// a checkpoint can be restored into them (copy_ into the tensors, keep their device and dtype).
  std::vector<at::Tensor>& exp_avg() { return m_; }
  std::vector<at::Tensor>& exp_avg_sq() { return v_; }
  const std::vector<at::Tensor>& params() const { return params_; }

 private:
  std::vector<at::Tensor> params_, m_, v_;
  double weight_decay_;
  int64_t step_ = 0;
};

/// Cosine annealing as torch.optim.lr_scheduler.CosineAnnealingLR(T_max = total, eta_min =
/// min_factor·lr) when scheduler.step() follows optimizer.step(), as in PyTorch's idiom: 1-based
/// training step `step` uses eta_min + (lr − eta_min)(1 + cos(π k / total)) / 2 with
/// k = clamp(step − 1, 0, total), so step 1 uses the peak lr and steps past `total` keep eta_min.
/// total ≤ 0 gives lr.
FUSION_SDK_API double cosine_lr(double lr, int64_t step, int64_t total, double min_factor);

/// Linear warm-up for `warmup` steps (step s ≤ warmup uses lr·s/warmup), then cosine_lr over the
/// remaining total − warmup steps. warmup ≤ 0 is cosine_lr itself.
FUSION_SDK_API double warmup_cosine_lr(double lr, int64_t step, int64_t warmup, int64_t total,
                                       double min_factor);

}  // namespace fusion
