// PWEMoE's run, top-down: the tasks to train on, the Pareto weight-ensembling model, its routers
// (trained, or read from a checkpoint), the exported models and the Pareto set (with the chosen
// eval_preferences); then how LS and EPO weight the per-task losses. docs/pwe_moe.md has the math.
#include "pwe_moe.hpp"

#include <chrono>
#include <iomanip>
#include <sstream>
#include <utility>

#include "epo.hpp"
#include "fusion/error.hpp"
#include "router_checkpoints.hpp"

namespace fusion::methods {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// What both components need from every run (checked by the host before any weight is read). The task
// pool is needed only to train the routers (not to evaluate trained ones with checkpoint_path, which
// may also just export merged models), so run() checks it when it trains.
Requirements pwe_moe_requirements() { return Requirements().pretrained().experts(2); }

// The task of each expert, by name, in the experts' order: the data training needs.
std::vector<Task*> training_tasks(const std::string& method, const std::vector<std::string>& experts, TaskPool& pool) {
  const std::vector<std::string> names = pool.task_names();
  std::string all;
  for (size_t i = 0; i < names.size(); ++i) all += (i ? ", " : "") + names[i];
  std::vector<Task*> out;
  for (const std::string& n : experts) {
    bool found = false;
    for (const auto& tn : names) found = found || tn == n;
    FUSION_ENSURE(found, method, ": expert '", n, "' has no task of the same name in the task pool (tasks: ", all, ")");
    Task& t = pool.task(n);
    FUSION_ENSURE(t.has_train_split(), method, ": task '", n, "' has no train split, which training needs");
    out.push_back(&t);
  }
  return out;
}

}  // namespace

PweMoeAlgorithm::PweMoeAlgorithm(std::string name, PweMoeOptions options)
    : name_(std::move(name)), options_(std::move(options)) {
  const std::string resume = option_name(&PweMoeOptions::resume);
  const std::string checkpoint = option_name(&PweMoeOptions::checkpoint_path);
  FUSION_ENSURE(!(options_.resume && !options_.checkpoint_path.empty()), "method.", resume, " and method.", checkpoint,
                " are both set: ", resume, " continues training, ", checkpoint, " evaluates without training");
}

// The host has checked info().requirements: a pretrained model, two experts or more.
Result PweMoeAlgorithm::run(ModelPool& models, TaskPool* tasks, const Context& ctx) {
  const bool train_routers = options_.checkpoint_path.empty();
  const std::vector<std::string> experts = models.expert_names();
  std::vector<Task*> task_list;
  if (train_routers) {
    FUSION_ENSURE(tasks != nullptr, name_, " trains its routers on the tasks' train splits: add a [taskpool], "
                  "or set method.", option_name(&PweMoeOptions::checkpoint_path), " to evaluate trained routers");
    task_list = training_tasks(name_, experts, *tasks);
  }
  check_preference_sizes(experts.size());  // before the (long) setup and training
  if (train_routers) resume_point(experts, ctx);  // a resume with other options: refused before the setup

  const auto t_setup = std::chrono::steady_clock::now();
  std::shared_ptr<ParetoWeightEnsembling> pwe = ParetoWeightEnsembling::from_pool(models, ctx, options_.model, name_);
  const std::vector<std::vector<double>> exports =
      checked_preferences(*pwe, options_.export_preferences, option_name(&PweMoeOptions::export_preferences));
  const std::vector<std::vector<double>> chosen =
      checked_preferences(*pwe, options_.eval_preferences, option_name(&PweMoeOptions::eval_preferences));
  const double setup_seconds = seconds_since(t_setup);
  std::ostringstream mib;
  mib << std::setprecision(4) << static_cast<double>(pwe->task_vector_bytes()) / (1 << 20);
  ctx.log().info(name_ + ": " + std::to_string(pwe->groups().size()) + " upscaled groups, " +
                 std::to_string(pwe->num_router_parameters()) + " router parameters, task vectors " + mib.str() +
                 " MiB");

  Result result;
  result.info = {{"method", name_},
                 {"num_tasks", pwe->num_tasks()},
                 {"tasks", pwe->expert_names()},
                 {"trainable_params", pwe->num_router_parameters()},
                 {"upscaled_groups", pwe->groups().size()},
                 {"task_vector_bytes", pwe->task_vector_bytes()},
                 {"setup_seconds", setup_seconds}};
  if (train_routers) {
    result.info["training"] = train(*pwe, task_list, ctx);
    if (needs_gradient_gram()) result.info["lp_failures"] = lp_failures_;
  } else {
    load_router_checkpoint(options_.checkpoint_path, *pwe, nullptr);
    result.info[option_name(&PweMoeOptions::checkpoint_path)] = options_.checkpoint_path;
    ctx.log().info(name_ + ": routers from " + options_.checkpoint_path + " (no training)");
  }
  export_models(*pwe, exports, models, result, ctx);
  add_pareto_set(pwe, chosen, result, ctx.seed());
  return result;
}

// ---------------------------------------------------------------------------------------------
// LS and EPO: the weights wₜ of the step's loss Σₜ wₜ Lₜ

PweMoeLs::PweMoeLs(PweMoeOptions options) : PweMoeAlgorithm("pwe_moe_ls", std::move(options)) {}

ComponentInfo PweMoeLs::info() {
  return {"pwe_moe_ls",
          "PWEMoE with linear scalarisation: routers from preference vectors to task-vector weights, "
          "trained on Σ rₜ Lₜ; returns the Pareto set",
          "https://arxiv.org/abs/2406.09770", {}, pwe_moe_requirements()};
}

std::vector<double> PweMoeLs::loss_weights(const std::vector<double>&, const std::vector<double>& r,
                                           const at::Tensor&, PweMoeStepStats& stats) {
  stats.mode = "ls";
  return r;  // L = Σₜ rₜ Lₜ
}

PweMoeEpo::PweMoeEpo(PweMoeOptions options) : PweMoeAlgorithm("pwe_moe_epo", std::move(options)) {}

ComponentInfo PweMoeEpo::info() {
  return {"pwe_moe_epo",
          "PWEMoE with exact Pareto optimal search: routers trained on EPO's LP-weighted losses "
          "(GLPK); returns the Pareto set",
          "https://arxiv.org/abs/2406.09770", {}, pwe_moe_requirements()};
}

std::vector<double> PweMoeEpo::loss_weights(const std::vector<double>& losses, const std::vector<double>& r,
                                            const at::Tensor& C, PweMoeStepStats& stats) {
  const int64_t T = static_cast<int64_t>(r.size());
  at::Tensor Cc = C.to(at::kDouble).contiguous();
  std::vector<double> c(Cc.data_ptr<double>(), Cc.data_ptr<double>() + T * T);
  EpoSolution sol = epo_weights(losses, r, c, options_.epo_eps);
  stats.mode = sol.mode.empty() ? "fallback" : sol.mode;
  if (!sol.ok) {
    stats.lp_failed = true;
    stats.lp_error = sol.error;
    ++lp_failures_;
  }
  std::vector<double> w(sol.alpha);
  for (double& v : w) v *= static_cast<double>(T);  // the original returns α · T
  return w;
}

}  // namespace fusion::methods
