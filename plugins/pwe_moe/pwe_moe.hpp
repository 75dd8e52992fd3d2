#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/config.hpp"
#include "fusion/optim.hpp"
#include "fusion/plugin.hpp"
#include "fusion/task_pool.hpp"
#include "pareto_weight_ensembling.hpp"

namespace fusion::methods {

/// The options of pwe_moe_ls and pwe_moe_epo (the original code's defaults; reference.md "PWEMoE").
struct PweMoeOptions {
  /// init_lambda, router_hidden_layers, upscale, upscale_attn (see ParetoWeightEnsemblingOptions).
  ParetoWeightEnsemblingOptions model;
  /// Adam's learning rate on the router parameters. Default 1e-2.
  double lr = 1e-2;
  /// Training steps; the learning rate anneals (cosine) to 0.1 × lr over them. Default 2000.
  int64_t num_steps = 2000;
  /// A router checkpoint every this many steps (and at the last step). Default 1000.
  int64_t save_interval = 1000;
  /// Training batch per task per step. Default 16.
  int64_t batch_size = 16;
  /// Dirichlet concentration of the sampled preference vectors. Default 1 (uniform on the simplex).
  double alpha = 1.0;
  /// Evaluate the simplex grid generate_simplex_grid(T, eval_grid_m) for T ≤ 3; for T > 3 the
  /// equal-weight point and the T one-hot points. Default true, m = 11.
  bool eval_grid = true;
  int64_t eval_grid_m = 11;
  /// Also evaluate this many Dirichlet(alpha) preference vectors (from the run's seed). Default 0.
  int64_t eval_random = 0;
  /// Preference vectors whose merged models are saved to run_dir/exports/. Default none.
  std::vector<std::vector<double>> export_preferences;
  /// Continue from the latest checkpoint in run_dir/checkpoints/. Default false.
  bool resume = false;
  /// Router weights to evaluate without training ("" : train). Default "".
  std::string checkpoint_path;
  /// EPO: μ threshold between the balance and dominance LPs. Default 1e-4.
  double epo_eps = 1e-4;

  /// Reads the options from a config checked against the component's schema.
  static PweMoeOptions from_config(const Config& config);
  /// Checks values no schema bound expresses (throws fusion::Error naming the option).
  void validate() const;
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

/// PWEMoE (Tang et al., "Towards Efficient Pareto Set Approximation via Mixture of Experts Based
/// Model Fusion", arXiv:2406.09770): learns one router per upscaled group so that the merged
/// model θ(r) follows the preference r, then returns one merged model per evaluated preference.
/// LS and EPO share everything but how the per-task losses are combined (loss_weights).
class PweMoeAlgorithm : public Algorithm {
 public:
  PweMoeAlgorithm(std::string name, PweMoeOptions options);
  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;

  const PweMoeOptions& options() const { return options_; }
  const std::string& name() const { return name_; }

  /// Trains the routers of `pwe` on `tasks` (one per expert, in order) for options().num_steps,
  /// with checkpoints, train_log.csv and resume in ctx.run_dir(). Returns result information.
  nlohmann::json train(ParetoWeightEnsembling& pwe, const std::vector<Task*>& tasks, const Context& ctx);
  /// One step at preference `r` on one batch per task: merges once, forward/backward per task
  /// (activations of one task alive at a time), router gradients, then `adam.step(lr)`.
  /// Throws fusion::Error when a loss is not finite (`step` names it in the message).
  PweMoeStepStats step(ParetoWeightEnsembling& pwe, Adam& adam, const std::vector<Task*>& tasks,
                       const std::vector<Batch>& batches, const std::vector<double>& r, double lr, int64_t step = 0);

  /// The evaluated preference vectors: the grid (see PweMoeOptions::eval_grid) then eval_random
  /// Dirichlet samples from `seed`.
  std::vector<std::vector<double>> evaluation_preferences(int64_t T, uint64_t seed) const;
  /// The preference vector of training step `step` (1-based): Dirichlet(alpha·1) from a generator
  /// seeded by (seed, step), so a resumed run samples what an uninterrupted one does.
  std::vector<double> sample_preference(int64_t T, uint64_t seed, int64_t step) const;

  /// Writes a router checkpoint (routers, Adam state, step) atomically.
  void save_checkpoint(const std::filesystem::path& path, ParetoWeightEnsembling& pwe, Adam& adam,
                       int64_t step, const Context& ctx) const;
  /// Loads a checkpoint's routers (and, when `adam` is given, its optimizer state); returns the step.
  int64_t load_checkpoint(const std::filesystem::path& path, ParetoWeightEnsembling& pwe, Adam* adam) const;
  /// The checkpoint with the highest step in `dir` ("" when none).
  static std::filesystem::path latest_checkpoint(const std::filesystem::path& dir);

  /// "r=[0.50,0.50]" with `decimals` decimals.
  static std::string preference_label(const std::vector<double>& r, int decimals = 2);

  int64_t lp_failures() const { return lp_failures_; }

 protected:
  /// Whether loss_weights needs C = G Gᵀ of the per-task router gradients (EPO).
  virtual bool needs_task_gradients() const = 0;
  /// The weights wₜ of the step's loss Σₜ wₜ Lₜ (constants: no gradient flows through them).
  /// Without needs_task_gradients() this is called before the losses are known, with `losses`
  /// empty and `C` undefined.
  virtual std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                           const at::Tensor& C, PweMoeStepStats& stats) = 0;

  std::string name_;
  PweMoeOptions options_;
  int64_t lp_failures_ = 0;
};

/// PWEMoE-LS: L = Σₜ rₜ Lₜ (linear scalarisation).
class PweMoeLs : public PweMoeAlgorithm {
 public:
  explicit PweMoeLs(PweMoeOptions options = {});
  static ComponentInfo info();
  static std::unique_ptr<Algorithm> create(const Context& ctx);

 protected:
  bool needs_task_gradients() const override { return false; }
  std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                   const at::Tensor& C, PweMoeStepStats& stats) override;
};

/// PWEMoE-EPO: L = Σₜ T·αₜ Lₜ with α from exact Pareto optimal search's LP (epo.hpp).
class PweMoeEpo : public PweMoeAlgorithm {
 public:
  explicit PweMoeEpo(PweMoeOptions options = {});
  static ComponentInfo info();
  static std::unique_ptr<Algorithm> create(const Context& ctx);

 protected:
  bool needs_task_gradients() const override { return true; }
  std::vector<double> loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                   const at::Tensor& C, PweMoeStepStats& stats) override;
};

/// The options both components accept.
Schema pwe_moe_schema();

}  // namespace fusion::methods
