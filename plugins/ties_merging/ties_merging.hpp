#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

namespace fusion::detail {
class CheckpointStream;
}

namespace fusion::methods {

struct TiesMergingOptions {
  /// K: the percentage of each task vector's entries kept by magnitude, over the whole model.
  /// In [0, 100]; 100 keeps everything. Default 20. (FusionBench also reads values ≤ 1 as fractions;
  /// here the value is always a percentage.)
  double threshold = 20;
  /// How the sign-agreeing trimmed values are combined: "sum" (default), "mean" (divided by how
  /// many are non-zero, at least 1) or "max" (largest magnitude, times the elected sign).
  std::string merge_func = "sum";
  /// Keys left out of the merge (kept as the pretrained model's): each entry is an exact key name
  /// or an ECMAScript regular expression that must match the whole key. Default: none.
  std::vector<std::string> remove_keys;
  /// λ in θ = θ₀ + λ τₘ. Default 0.3.
  double scaling_factor = 0.3;
  /// A λ sweep: one merged model per value (and `scaling_factor` is not used); τₘ is computed once.
  /// Default: absent.
  std::optional<std::vector<double>> scaling_factors;

  static void bind(Options<TiesMergingOptions>& o);
};

/// TIES-merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
/// NeurIPS 2023), in FusionBench's form: each task vector τₜ is flattened over the whole model
/// (floating tensors not in remove_keys); trim keeps |τₜ| ≥ its k-th smallest magnitude,
/// k = d − int(K/100 · d) (ties at the cut kept); elect s = sign(Σₜ τ̂ₜ) with zeros set to
/// sign(Σ s); disjoint merge keeps τ̂ₜ where it agrees with s (where s is still 0, its negative
/// entries, as FusionBench's `where(s > 0, τ > 0, τ < 0)`), combined by merge_func; θ = θ₀ + λ τₘ.
///
/// Integer and bool tensors (CLIP's `position_ids`) are left out of the flattened task vector and
/// kept as the pretrained model's. FusionBench's CLIP pipeline never sees them (transformers keeps
/// such buffers out of `state_dict()`), so this matches its figures; run over a raw state dict,
/// FusionBench's code would count them in d and the cut-off k would shift.
///
/// On the `safetensors` pool (CPU, float32) the merge streams from the files
/// (detail::CheckpointStream) in two passes and holds no model: pass 1 finds every task's threshold
/// exactly by selection (a sample brackets the k-th magnitude, the pass counts below the bracket
/// and collects inside it, a radix select picks it; a missed bracket falls back to the same
/// radix select over the whole task vector), pass 2 trims, elects and merges chunk by chunk into
/// the output. Peak memory: the output and the bracketed candidates. Otherwise it:
/// streams in two passes over the experts, so no more than one task vector is ever held (computed
/// in place in the loaded expert's tensors): pass 1 computes each task's threshold and the trimmed
/// sum Σₜ τ̂ₜ; pass 2 reloads each expert, re-trims it with its stored threshold and adds its
/// sign-agreeing values. Peak memory: θ₀, one expert, the flat accumulator and the elected signs
/// (int8, ¼ model) — plus, for `mean`, an int16 count (½ model). Each expert is read twice.
class TiesMerging : public Algorithm {
 public:
  using Options = TiesMergingOptions;
  explicit TiesMerging(Options options = {});
  static ComponentInfo info();
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const Options& options() const { return options_; }

  /// Whether `key` is matched by an entry of remove_keys.
  bool removed(const std::string& key) const;

 private:
  /// run() when the pool's models can be streamed from their files (detail::CheckpointStream).
  Result run_streamed(ModelPool& models, const Context& ctx, const std::vector<double>& lambdas,
                      std::shared_ptr<const detail::CheckpointStream> stream) const;

  Options options_;
  struct Matchers;
  std::shared_ptr<const Matchers> matchers_;
};

/// The k-th smallest (1-based, 1 ≤ k ≤ total numel) of |x| over 1-D tensors taken together, as
/// torch.kthvalue(cat(parts).abs(), k) returns it. When every part is a contiguous float32 CPU
/// tensor it uses a two-pass radix select over the bit patterns that copies nothing; otherwise
/// at::kthvalue on the concatenated magnitudes.
double kth_smallest_magnitude(const std::vector<at::Tensor>& parts, int64_t k);
/// The same over one 1-D tensor.
double kth_smallest_magnitude(const at::Tensor& x, int64_t k);

/// The streamed merge's hand-written kernels (pass A's scan, pass B's fused merge): every form gives
/// the same bits.
enum class TiesKernels {
  Best,      ///< the CPU's best: AVX-512, else AVX2, else portable (the default)
  Avx2,      ///< AVX2 where the CPU has it, else portable
  Portable,  ///< the form a CPU without AVX2 runs
};
/// For tests: the kernels the streamed merge runs. Set it while no merge runs.
void ties_use_kernels(TiesKernels kernels);
/// For tests: ties_use_kernels(Portable) (`true`) or (Best) (`false`).
void ties_use_portable_kernels(bool portable);

}  // namespace fusion::methods
