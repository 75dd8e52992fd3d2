#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/context.hpp"
#include "fusion/export.hpp"
#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/state_dict.hpp"

/// Streaming building blocks shared by the merging methods (task arithmetic, averaging, TIES, and
/// plugins outside the tree). Every function here reads the experts of a ModelPool one at a time
/// and drops each before loading the next, so a method built on them holds at most a running sum,
/// one expert and (where it needs it) the pretrained model. Tensors are computed on ctx.device().
/// Only mergeable (floating-point) tensors are combined; integer tensors (position ids, counters)
/// are copied, from the pretrained model where there is one. Half-precision tensors (f16, bf16)
/// are accumulated in float32 and cast back when a model is built. Not thread-safe.
namespace fusion {

/// The dtype a running sum of tensors of dtype `t` is kept in: float32 for f16 and bf16, `t`
/// otherwise.
FUSION_SDK_API at::ScalarType accumulation_dtype(at::ScalarType t);

/// The model pool's experts, checked to be non-empty: throws fusion::Error ("the model pool has no
/// experts") otherwise. `method` names the caller in the message. A component that declares
/// Requirements().experts(1) in its ComponentInfo needs no such check: the host makes it first.
FUSION_SDK_API std::vector<std::string> expert_names_checked(const ModelPool& pool,
                                                             const std::string& method);

/// The pretrained model, or fusion::Error ("<method> needs a pretrained model: set
/// modelpool.pretrained") when the pool has none. A component that declares
/// Requirements().pretrained() can call ModelPool::pretrained() directly: the host checks first.
FUSION_SDK_API ConstModelPtr pretrained_checked(ModelPool& pool, const std::string& method);

/// Σₜ wₜ θₜ over the pool's experts in config order (`weights` empty: every wₜ = 1; otherwise one
/// weight per expert, else fusion::Error naming `option` — a dotted name such as "method.weights" —
/// and both counts), streamed: the sum starts
/// as the first expert's own tensors and every further expert is added in place and dropped.
/// Returns the first expert's Model object with its parameters replaced by the sum (so the result
/// keeps the experts' architecture and config); integer tensors are the first expert's, and
/// half-precision tensors are summed in float32 and cast back at the end. Every
/// expert's keys and shapes must equal the first's (fusion::Error naming the key and both shapes).
/// Peak memory: the sum and one expert.
FUSION_SDK_API ModelPtr weighted_sum_of_experts(ModelPool& pool, const Context& ctx,
                                                const std::vector<double>& weights = {},
                                                const std::string& option = "method.weights");

/// Σₜ τₜ = Σₜ (θₜ − θ₀) over the pool's experts, streamed: the experts are summed first (at most
/// the sum and one expert held; the pretrained model is loaded only afterwards) and T·θ₀ is then
/// subtracted in place. Mergeable tensors only (accumulation_dtype); integer tensors are the
/// pretrained model's. Throws fusion::Error when the pool has no pretrained model or no experts, or
/// when an expert's keys or shapes differ from the pretrained model's (naming key and shapes).
FUSION_SDK_API StateDict sum_task_vectors(ModelPool& pool, const Context& ctx);

/// θ₀ + λ·Δ per key of `base`, in each of base's tensors' dtype: keys absent from `delta` and
/// non-mergeable tensors are base's own tensors (shared, not copied). `delta` may hold a subset of
/// base's keys; a key it holds must have base's shape.
FUSION_SDK_API StateDict add_scaled(const StateDict& base, const StateDict& delta, double lambda);

/// Adds to `result` the models θ₀ + λ·Δ, one per λ in `scaling_factors` (at least one; duplicates
/// are refused with fusion::Error naming `option`), each built from `pretrained` by
/// with_parameters and carrying metadata {"scaling_factor": λ}. One λ: labelled "merged", computed
/// eagerly and in place in Δ's storage (peak: θ₀ and Δ). Several λ (a sweep): labelled
/// "scaling_factor=<λ>", each built lazily when the host asks for it, from the Δ kept once.
FUSION_SDK_API void add_scaled_results(Result& result, ConstModelPtr pretrained, StateDict delta,
                                       const std::vector<double>& scaling_factors,
                                       const std::string& option = "method.scaling_factors");

/// The λ values a method with a `scaling_factor` option and an optional `scaling_factors` list
/// should produce: the list when it is given and non-empty, else {scaling_factor}. (Non-finite
/// values are refused when the options are read, by Config::validate.)
FUSION_SDK_API std::vector<double> scaling_factors_of(double scaling_factor,
                                                      const std::vector<double>& scaling_factors);

/// "0.3", "1", "-0.25": a short decimal form of λ for labels.
FUSION_SDK_API std::string format_scalar(double v);

}  // namespace fusion
