#pragma once
#include "fusion/distributed.hpp"
// PWEMoE (Tang et al., "Towards Efficient Pareto Set Approximation via Mixture of Experts Based
// Model Fusion", arXiv:2406.09770): pwe_moe_ls and pwe_moe_epo. The math, with the original code's
// choices where the paper leaves them open, is in docs/pwe_moe.md.
//
// The paper's equations and the functions that compute them:
//
// | equation                                                     | computed by                                   |
// |--------------------------------------------------------------|-----------------------------------------------|
// | task vector τₜ = θₜ − θ₀                                     | ParetoWeightEnsembling::from_pool (add_expert) |
// | not upscaled: θ = θ₀ + λ Σₜ τₜ                               | ParetoWeightEnsembling::from_pool (finish)    |
// | router g(r) = W₂ ReLU(W₁ r + b₁) + b₂ (1 layer: W r + b)     | ParetoWeightEnsembling::route                 |
// | module θ(r) = θ₀ + Σₜ g(r)ₜ τₜ                               | ParetoWeightEnsembling::merge                 |
// | r ~ Dir(α·1)                                                 | PweMoeAlgorithm::sample_preference            |
// | min over the routers of E_r[Σₜ wₜ Lₜ(θ(r))]                  | PweMoeAlgorithm::train                        |
// | LS: wₜ = rₜ                                                  | PweMoeLs::loss_weights                        |
// | EPO: wₜ = T αₜ, α from the LP on (l, r, G Gᵀ)                | PweMoeEpo::loss_weights → epo_weights         |
// | ∂L/∂g(r)ₜ = ⟨τₜ, ∂L/∂θ⟩ (the chain rule through the module)  | ParetoWeightEnsembling::group_weight_grads    |
// | one step on Σₜ wₜ Lₜ                                         | PweMoeAlgorithm::step                         |
// | the Pareto set {θ(r)} over a simplex grid of r               | PweMoeAlgorithm::evaluation_preferences, run  |
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/optim.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"
#include "pareto_weight_ensembling.hpp"

namespace fusion::methods {

/// The options of pwe_moe_ls and pwe_moe_epo (the original code's defaults; docs/pwe_moe.md).
/// Read from [method] through the binding (pwe_moe_options.cpp), which checks every range; a
/// caller that fills the struct in code keeps to the ranges documented here.
struct PweMoeOptions {
  /// init_lambda, router_hidden_layers, upscale, upscale_attn (see ParetoWeightEnsemblingOptions).
  ParetoWeightEnsemblingOptions model;
  /// Adam's learning rate on the router parameters (≥ 0). Default 1e-2.
  double lr = 1e-2;
  /// Training steps (≥ 0); the learning rate anneals (cosine) to 0.1 × lr over them. Default 2000.
  int64_t num_steps = 2000;
  /// A router checkpoint every this many steps (≥ 1) and at the last step. Default 1000.
  int64_t save_interval = 1000;
  /// Training batch per task per step (≥ 1). Default 16.
  int64_t batch_size = 16;
  /// Dirichlet concentration of the sampled preference vectors (> 0). Default 1 (uniform on the
  /// simplex).
  double alpha = 1.0;
  /// Evaluate the simplex grid generate_simplex_grid(T, eval_grid_m) for T ≤ 3; for T > 3 the
  /// equal-weight point and the T one-hot points. Default true, m = 11 (2 ≤ m ≤ 1000).
  bool eval_grid = true;
  int64_t eval_grid_m = 11;
  /// Also evaluate this many Dirichlet(alpha) preference vectors (from the run's seed). Default 0.
  int64_t eval_random = 0;
  /// Also evaluate these preference vectors (one entry per task, finite, ≥ 0, not all zero; each
  /// normalised to sum 1), after the grid; with eval_grid = false, instead of it. Default none.
  std::vector<std::vector<double>> eval_preferences;
  /// Preference vectors whose merged models are saved to run_dir/exports/. Default none.
  std::vector<std::vector<double>> export_preferences;
  /// Continue from the latest checkpoint in run_dir/checkpoints/: refused when the options that
  /// define the training differ from those the checkpoint records (a larger num_steps continues;
  /// docs/pwe_moe.md, "Resuming"). Default false.
  bool resume = false;
  /// Router weights to evaluate without training ("" : train). Default "".
  std::string checkpoint_path;
  /// EPO: μ threshold between the balance and dominance LPs (≥ 0). Default 1e-4.
  double epo_eps = 1e-4;

  static void bind(Options<PweMoeOptions>& o);
};

/// What one training step did.
struct PweMoeStepStats {
  double loss = 0.0;                 ///< Σₜ wₜ Lₜ
  std::vector<double> losses;        ///< Lₜ
  std::vector<double> weights;       ///< wₜ (LS: r; EPO: T·α)
  std::string mode;                  ///< "ls", "balance", "dominance"
  bool lp_failed = false;            ///< EPO fell back to r/Σr
  std::string lp_error;
};

/// A preference vector drawn from Dirichlet(alpha·1) with a generator seeded by `seed`, normalised
/// to sum 1 (uniform when the draw sums to 0).
std::vector<double> dirichlet_preference(int64_t T, double alpha, uint64_t seed);

/// PWEMoE: learns one router per upscaled group so that the merged model θ(r) follows the
/// preference r, then returns one merged model per evaluated preference. LS and EPO share
/// everything but how the per-task losses are combined into the weights of the step's loss
/// (loss_weights).
///
/// Files: pwe_moe.cpp (run: the pipeline; LS and EPO), pwe_moe_options.cpp (the options),
/// training.cpp (step, train), router_checkpoints.cpp, training_record.cpp (what a checkpoint
/// records and how a resume is checked), step_log.cpp (train_log.csv), evaluation.cpp (the
/// preference vectors evaluated and exported).
class PweMoeAlgorithm : public Algorithm {
 public:
  using Options = PweMoeOptions;

  /// Throws fusion::Error for options that contradict each other (resume with checkpoint_path).
  PweMoeAlgorithm(std::string name, PweMoeOptions options);
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;

  const PweMoeOptions& options() const { return options_; }
  const std::string& name() const { return name_; }

  /// Trains the routers of `pwe` on `tasks` (one per expert, in order) for options().num_steps,
  /// with checkpoints, train_log.csv and resume in ctx.run_dir(). Returns result information.
  /// With resume, throws fusion::Error (before writing anything) when the latest checkpoint records
  /// other training options (see resume_point).
  nlohmann::json train(ParetoWeightEnsembling& pwe, const std::vector<Task*>& tasks, const Context& ctx);
  /// The options that define this run's training, as a checkpoint records them
  /// (training_record.hpp): the method's name and training options, ctx's seed and dtype as
  /// run.seed and run.dtype, and `experts` (in order) as modelpool.models.
  nlohmann::json training_record(const std::vector<std::string>& experts, const Context& ctx) const;
  /// One step at preference `r` on one batch per task, then `adam.step(lr)`: θ(r) is merged once;
  /// the per-task losses Lₜ go to loss_weights for the weights wₜ; the routers get the gradient of
  /// Σₜ wₜ Lₜ. Activations of one task are alive at a time. Throws fusion::Error when a loss or a
  /// router gradient is not finite (naming `step`).
  PweMoeStepStats step(ParetoWeightEnsembling& pwe, Adam& adam, const std::vector<Task*>& tasks,
                       const std::vector<Batch>& batches, const std::vector<double>& r, double lr, int64_t step = 0);

  /// The generated preference vectors: the grid (see PweMoeOptions::eval_grid) then eval_random
  /// Dirichlet samples from `seed` (run() evaluates eval_preferences between the two).
  std::vector<std::vector<double>> evaluation_preferences(int64_t T, uint64_t seed) const;
  /// The preference vector of training step `step` (1-based): Dirichlet(alpha·1) from a generator
  /// seeded by (seed, step), so a resumed run samples what an uninterrupted one does.
  std::vector<double> sample_preference(int64_t T, uint64_t seed, int64_t step) const;

  /// "r=[0.50,0.50]" with `decimals` decimals.
  static std::string preference_label(const std::vector<double>& r, int decimals = 2);

  int64_t lp_failures() const { return lp_failures_; }

 protected:
  /// Whether loss_weights reads C = G Gᵀ, the Gram matrix of the per-task router gradients Gₜ
  /// (EPO). When it does not (LS), the weights are known before the losses and step() takes one
  /// backward pass of Σₜ wₜ Lₜ instead of T per-task gradients (docs/pwe_moe.md, "One step").
  virtual bool needs_gradient_gram() const = 0;
  /// The weights wₜ of the step's loss Σₜ wₜ Lₜ (constants: no gradient flows through them).
  /// Without needs_gradient_gram() this is called before the losses are known, with `losses`
  /// empty and `C` undefined.
  virtual std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                           const at::Tensor& C, PweMoeStepStats& stats) = 0;
  /// Adds the component's own options that change the training to the record's "method" object
  /// (EPO: epo_eps). Default: none.
  virtual void add_training_options(nlohmann::json& method) const { (void)method; }

  std::string name_;
  PweMoeOptions options_;
  int64_t lp_failures_ = 0;
  /// Several processes (set by train() from communicator(ctx)): the run's communicator and the
  /// tasks this rank takes (task t on rank t mod world); null: one process, every task here.
  const Communicator* comm_ = nullptr;
  std::vector<bool> owned_;

 private:
  /// Where a resumed training starts: the latest checkpoint, its step and record.
  struct ResumePoint {
    std::filesystem::path checkpoint;              ///< "" when there is none (or resume is off)
    int64_t step = 0;                              ///< the checkpoint's step
    std::optional<nlohmann::json> record;          ///< nullopt: a checkpoint without a record
    std::optional<int64_t> num_steps_changed_from; ///< the record's num_steps, when this run's differs
  };
  /// With resume, the latest checkpoint in run_dir/checkpoints/ and its record compared with this
  /// run's (training_record(experts, ctx)): fusion::Error listing every difference that refuses the
  /// resume (compare_training_records). Reads the checkpoint's header only.
  ResumePoint resume_point(const std::vector<std::string>& experts, const Context& ctx) const;
  /// Checks that every export and eval_preferences entry has one entry per task (fusion::Error
  /// naming method.export[i] or method.eval_preferences[i]): before the model is built.
  void check_preference_sizes(size_t num_tasks) const;
  /// `prefs` (the option `option`) checked (finite, ≥ 0, positive sum) and normalised: before training.
  std::vector<std::vector<double>> checked_preferences(const ParetoWeightEnsembling& pwe,
                                                       const std::vector<std::vector<double>>& prefs,
                                                       const std::string& option) const;
  /// Saves the merged model of each of `exports` to run_dir/exports/r_<r>/.
  void export_models(const ParetoWeightEnsembling& pwe, const std::vector<std::vector<double>>& exports,
                     const ModelPool& models, Result& result, const Context& ctx) const;
  /// Adds one lazily merged model per evaluation preference to `result`: the grid, `chosen` (the
  /// checked eval_preferences), then the random ones.
  void add_pareto_set(std::shared_ptr<const ParetoWeightEnsembling> pwe, const std::vector<std::vector<double>>& chosen,
                      Result& result, uint64_t seed) const;
};

/// PWEMoE-LS: L = Σₜ rₜ Lₜ (linear scalarisation).
class PweMoeLs : public PweMoeAlgorithm {
 public:
  explicit PweMoeLs(PweMoeOptions options = {});
  static ComponentInfo info();

 protected:
  bool needs_gradient_gram() const override { return false; }
  std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                   const at::Tensor& C, PweMoeStepStats& stats) override;
};

/// PWEMoE-EPO: L = Σₜ T·αₜ Lₜ with α from exact Pareto optimal search's LP (epo.hpp).
class PweMoeEpo : public PweMoeAlgorithm {
 public:
  explicit PweMoeEpo(PweMoeOptions options = {});
  static ComponentInfo info();

 protected:
  bool needs_gradient_gram() const override { return true; }
  std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                   const at::Tensor& C, PweMoeStepStats& stats) override;
  void add_training_options(nlohmann::json& method) const override;
};

}  // namespace fusion::methods
