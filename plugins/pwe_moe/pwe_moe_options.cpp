// The options of pwe_moe_ls and pwe_moe_epo, declared once: name, member, meaning, range. The order
// is what `fusion describe` shows.
#include "pwe_moe.hpp"

namespace fusion::methods {

void ParetoWeightEnsemblingOptions::bind(Options<ParetoWeightEnsemblingOptions>& o) {
  using O = ParetoWeightEnsemblingOptions;
  o("init_lambda", &O::init_lambda,
    "λ of the task-arithmetic merge of the parameters not upscaled, and the routers' last bias");
  o("router_hidden_layers", &O::router_hidden_layers, "router depth: 1 = Linear(T,T); 2 = Linear(T,2T)→ReLU→Linear(2T,T)")
      .range(1, 2);
  o("upscale", &O::upscale,
    "glob patterns (ending in \".*\") of the parameter groups that get a router, one per module prefix")
      .check(upscale_pattern_problem);
  o("upscale_attn", &O::upscale_attn, "also upscale attention (\"*.self_attn.*\" for CLIP, \"*.attn.*\" for GPT-2)");
}

namespace {

// What is wrong with a list of preference vectors as the config gives it ("" when nothing): the
// entries' signs and sums (finiteness is the binding's check; the length needs the model pool and
// is checked by run()). The text follows the option's name: "method.eval_preferences[1]: ...".
std::string preference_list_problem(const std::vector<std::vector<double>>& prefs) {
  for (size_t i = 0; i < prefs.size(); ++i) {
    if (prefs[i].empty()) continue;  // run() names the length it expects
    const std::string problem = preference_problem(prefs[i]);
    if (!problem.empty()) return "[" + std::to_string(i) + "]: " + problem;
  }
  return "";
}

}  // namespace

void PweMoeOptions::bind(Options<PweMoeOptions>& o) {
  using O = PweMoeOptions;
  o.include(&O::model);
  o("lr", &O::lr, "Adam learning rate of the routers").min(0.0);
  o("num_steps", &O::num_steps, "training steps (cosine annealing to 0.1·lr over them)").min(0);
  o("save_interval", &O::save_interval, "router checkpoint every this many steps").min(1);
  o("batch_size", &O::batch_size, "training batch per task per step").min(1);
  o("alpha", &O::alpha, "Dirichlet concentration of the sampled preference vectors").min(1e-6);
  o("eval_grid", &O::eval_grid, "evaluate the simplex grid (T ≤ 3) or the equal-weight and one-hot points (T > 3)");
  o("eval_grid_m", &O::eval_grid_m, "points per edge of the evaluation grid").range(2, 1000);
  o("eval_random", &O::eval_random, "also evaluate this many Dirichlet(alpha) preference vectors").range(0, 100000);
  o("eval_preferences", &O::eval_preferences,
    "also evaluate these preference vectors (one entry per task, each normalised to sum 1); "
    "with eval_grid = false, instead of the grid")
      .check(preference_list_problem);
  o("export", &O::export_preferences, "preference vectors whose merged models are saved to run_dir/exports/");
  o("resume", &O::resume,
    "continue from the latest checkpoint in run_dir/checkpoints/ (refused when the training options it "
    "records differ; a larger num_steps continues)");
  o("checkpoint_path", &O::checkpoint_path, "router checkpoint to evaluate without training");
  o("epo_eps", &O::epo_eps, "EPO: μ threshold between the balance and dominance LPs").min(0.0);
}

}  // namespace fusion::methods
