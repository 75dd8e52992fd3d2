#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fusion/context.hpp"
#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/options.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::methods {

/// How the Pareto weight-ensembling model is built.
struct ParetoWeightEnsemblingOptions {
  /// λ of the task-arithmetic merge of every parameter that is not upscaled, and the router's
  /// last bias (so g(r) = λ·1 at initialisation). Default 0.3.
  double init_lambda = 0.3;
  /// 1: Linear(T, T); 2: Linear(T, 2T) → ReLU → Linear(2T, T). Default 2.
  int64_t router_hidden_layers = 2;
  /// Glob patterns ending in ".*" that select the upscaled groups: a key belongs to the group
  /// named by its shortest dotted prefix that matches the pattern without its ".*" (so "*.mlp.*"
  /// groups `blocks.3.mlp.fc1.weight` under `blocks.3.mlp`). Default {"*.mlp.*"}.
  std::vector<std::string> upscale = {"*.mlp.*"};
  /// Also upscale attention ("*.self_attn.*"). Default false.
  bool upscale_attn = false;

  /// The options init_lambda, router_hidden_layers, upscale, upscale_attn (pwe_moe_options.cpp).
  static void bind(Options<ParetoWeightEnsemblingOptions>& o);
};

/// What is wrong with the `upscale` patterns ("" when nothing): each must end with ".*". The text
/// follows the option's name in the error ("method.upscale: pattern ...").
std::string upscale_pattern_problem(const std::vector<std::string>& patterns);

/// What is wrong with a preference vector's entries ("" when nothing): "preference entry i is not
/// finite", "preference entry i is negative (v)" or "the preference vector is all zero" (the
/// length is not checked: see ParetoWeightEnsembling::checked_preference).
std::string preference_problem(const std::vector<double>& r);

/// One weight-ensembling module: a group of parameters θ(r) = θ₀ + Σₜ g(r)ₜ τₜ (PWEMoE,
/// arXiv:2406.09770; docs/pwe_moe.md, "The module") with its router g: ℝᵀ → ℝᵀ.
struct WeightEnsemblingGroup {
  std::string prefix;                 ///< "blocks.3.mlp"
  std::vector<std::string> keys;      ///< full parameter names, in the model's order
  std::vector<at::Tensor> base;       ///< θ₀ per key (the pretrained model's tensors)
  std::vector<at::Tensor> task_vectors;  ///< per key, [T, ...shape]: τₜ stacked, frozen
  /// Router weights in order (layer 0 weight, bias[, layer 2 weight, bias]); float32, requires grad.
  std::vector<at::Tensor> router;
  /// The router's parameter names: prefix + ".gate.0.weight", ... (the original module's names).
  std::vector<std::string> router_names;
};

/// The Pareto weight-ensembling model over any fusion::Model (architecture-agnostic): the
/// upscaled groups as WeightEnsemblingGroup, every other floating parameter merged by task
/// arithmetic with init_lambda, integer tensors copied from the pretrained model.
/// Not thread-safe.
class ParetoWeightEnsembling {
 public:
  /// Builds from a pool, streaming the experts one at a time (each `load`ed, its upscaled task
  /// vectors copied into the stacks and its other tensors added to the task-arithmetic sum, then
  /// dropped): peak ≈ pretrained + T × upscaled task vectors + the non-upscaled sum + one expert.
  /// Throws fusion::Error for a pool without experts or a pretrained model, experts whose keys or
  /// shapes differ from the pretrained model, patterns that match nothing, and bad options. (Two
  /// experts at least is the components' requirement, checked by the host: see PweMoeLs::info.)
  /// Routers are initialised from `generator` (N(0, 0.01) weights, see reset_routers).
  static std::unique_ptr<ParetoWeightEnsembling> from_pool(ModelPool& pool, const Context& ctx,
                                                           const ParetoWeightEnsemblingOptions& options,
                                                           const std::string& method = "pwe_moe");
  /// Builds from models in memory (tests): same as from_pool.
  static std::unique_ptr<ParetoWeightEnsembling> from_models(ConstModelPtr pretrained,
                                                             const std::vector<ModelPtr>& experts,
                                                             const std::vector<std::string>& names,
                                                             const ParetoWeightEnsemblingOptions& options,
                                                             at::Generator generator,
                                                             const std::string& method = "pwe_moe");

  int64_t num_tasks() const { return num_tasks_; }
  const std::vector<std::string>& expert_names() const { return expert_names_; }
  const std::vector<WeightEnsemblingGroup>& groups() const { return groups_; }
  const ParetoWeightEnsemblingOptions& options() const { return options_; }
  /// The pretrained model (architecture, config, forward).
  const Model& model() const { return *pretrained_; }

  /// Re-initialises every router as the original module: weights N(0, 0.01); with 2 layers the
  /// first bias 0 and the last init_lambda; with 1 layer the bias init_lambda.
  void reset_routers(at::Generator generator);
  /// Every router parameter, group by group (what the optimizer updates).
  std::vector<at::Tensor> router_parameters() const;
  /// Router parameters by name ("blocks.0.mlp.gate.0.weight", ...), sharing storage.
  StateDict router_state() const;
  /// Copies router weights in (same names and shapes; fusion::Error naming the key otherwise).
  void load_router_state(const StateDict& state, const std::string& origin);
  /// 4T² + 3T per group with 2 layers, T² + T with 1.
  int64_t num_router_parameters() const;

  /// Checks a preference vector (length T, finite, ≥ 0, positive sum; fusion::Error naming
  /// `what` otherwise) and returns it normalised to sum 1.
  std::vector<double> checked_preference(const std::vector<double>& r, const std::string& what) const;
  /// The routers' outputs g(r), one [T] tensor per group, differentiable in the routers. `r` is a
  /// float32 [T] tensor on the model's device.
  std::vector<at::Tensor> route(const at::Tensor& r) const;
  /// The full parameter set for the group weights `g` (from route): the non-upscaled parameters
  /// (shared, frozen) and each group's θ₀ + Σₜ gₜ τₜ. Computed without autograd; the caller makes
  /// the group tensors leaves when it needs their gradients.
  StateDict merge(const std::vector<at::Tensor>& g) const;
  /// merge(route(r)) with autograd from the routers to the merged tensors (the original module's
  /// form; used by tests and small models).
  StateDict merge_differentiable(const at::Tensor& r) const;
  /// The dtype the network's forward and backward passes run in while training: the pretrained
  /// model's by default. A 16-bit dtype (bfloat16; float16 on CUDA) other than that makes training
  /// mixed precision: θ₀, τ, the routers, g(r) and the merged θ(r) with its gradient keep the pool's
  /// dtype (float32), only the copy the forward reads is cast (compute_parameters). from_pool takes
  /// it from ctx.dtype() when that is a 16-bit type. Throws fusion::Error for a non-floating dtype.
  void set_compute_dtype(at::ScalarType dtype);
  at::ScalarType compute_dtype() const { return compute_dtype_; }
  /// The parameters as the forward reads them: `merged` (merge()'s output) itself when
  /// compute_dtype() is the models' dtype; else its upscaled tensors cast to compute_dtype() by a
  /// differentiable cast (so their gradients arrive in merged's dtype) and the non-upscaled ones
  /// from a copy made once by set_compute_dtype.
  StateDict compute_parameters(const StateDict& merged) const;
  /// dL/dg per group from dL/dθ of the group's merged tensors (`grads` keyed like merge()'s
  /// output; absent keys count as zero): (dL/dg)ₜ = Σ_keys ⟨τₜ, dL/dθ⟩.
  std::vector<at::Tensor> group_weight_grads(const StateDict& grads) const;
  /// A plain model with the merged parameters for preference `r` (checked, normalised), detached.
  ModelPtr merge_and_unload(const std::vector<double>& r) const;
  /// merge_and_unload(r) written over `model`, a model merge_and_unload made from this object: each
  /// upscaled group's tensor in model.parameters() is overwritten in place by the same kernel
  /// (bitwise merge_and_unload's values); nothing is allocated, the other tensors are left as they
  /// are. The caller makes sure no one reads those tensors meanwhile. Throws fusion::Error for a
  /// model without a group's key, or with a tensor of another shape, dtype or device.
  void merge_into(const std::vector<double>& r, Model& model) const;

  /// Names of the non-upscaled floating parameters (merged by task arithmetic).
  const std::vector<std::string>& merged_keys() const { return merged_keys_; }
  /// Bytes of the stacked task vectors (T × upscaled groups).
  int64_t task_vector_bytes() const;

 private:
  ParetoWeightEnsembling() = default;
  void plan(ConstModelPtr pretrained);
  void add_expert(size_t t, const Model& expert, const std::string& name);
  void finish(at::Generator generator);

  ParetoWeightEnsemblingOptions options_;
  std::string method_;
  int64_t num_tasks_ = 0;
  std::vector<std::string> expert_names_;
  ConstModelPtr pretrained_;
  StateDict rest_;                         ///< every non-upscaled tensor (merged or copied)
  std::vector<std::string> merged_keys_;   ///< floating non-upscaled keys (in rest_)
  std::vector<WeightEnsemblingGroup> groups_;
  std::vector<std::string> key_order_;     ///< the pretrained model's key order
  at::ScalarType compute_dtype_ = at::kFloat;  ///< set_compute_dtype; the models' dtype by default
  StateDict rest_compute_;                 ///< rest_ in compute_dtype_ (empty when that is rest_'s)
};

/// Matches `name` against a glob `pattern` (`*` any run of characters, `?` one character).
bool glob_match(const std::string& pattern, const std::string& name);

}  // namespace fusion::methods
