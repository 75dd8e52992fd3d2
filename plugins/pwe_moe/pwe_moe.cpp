#include "pwe_moe.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include "epo.hpp"
#include "fusion/error.hpp"
#include "fusion/pareto.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::methods {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Options

Schema pwe_moe_schema() {
  Schema s;
  s.add("init_lambda", 0.3, "λ of the task-arithmetic merge of the parameters not upscaled, and the "
                            "routers' last bias");
  s.add("router_hidden_layers", int64_t{2}, "router depth: 1 = Linear(T,T); 2 = Linear(T,2T)→ReLU→Linear(2T,T)")
      .range(1, 2);
  s.add("upscale", std::vector<std::string>{"*.mlp.*"},
        "glob patterns (ending in \".*\") of the parameter groups that get a router, one per module prefix");
  s.add("upscale_attn", false, "also upscale attention (\"*.self_attn.*\")");
  s.add("lr", 1e-2, "Adam learning rate of the routers").range(0.0, std::nullopt);
  s.add("num_steps", int64_t{2000}, "training steps (cosine annealing to 0.1·lr over them)").range(0, std::nullopt);
  s.add("save_interval", int64_t{1000}, "router checkpoint every this many steps").range(1, std::nullopt);
  s.add("batch_size", int64_t{16}, "training batch per task per step").range(1, std::nullopt);
  s.add("alpha", 1.0, "Dirichlet concentration of the sampled preference vectors").range(1e-6, std::nullopt);
  s.add("eval_grid", true, "evaluate the simplex grid (T ≤ 3) or the equal-weight and one-hot points (T > 3)");
  s.add("eval_grid_m", int64_t{11}, "points per edge of the evaluation grid").range(2, 1000);
  s.add("eval_random", int64_t{0}, "also evaluate this many Dirichlet(alpha) preference vectors").range(0, 100000);
  s.add("export", std::vector<std::vector<double>>{},
        "preference vectors whose merged models are saved to run_dir/exports/");
  s.add("resume", false, "continue from the latest checkpoint in run_dir/checkpoints/");
  s.add("checkpoint_path", std::string(""), "router checkpoint to evaluate without training");
  s.add("epo_eps", 1e-4, "EPO: μ threshold between the balance and dominance LPs").range(0.0, std::nullopt);
  return s;
}

PweMoeOptions PweMoeOptions::from_config(const Config& c) {
  PweMoeOptions o;
  o.model.init_lambda = c.get<double>("init_lambda");
  o.model.router_hidden_layers = c.get<int64_t>("router_hidden_layers");
  o.model.upscale = c.get<std::vector<std::string>>("upscale");
  o.model.upscale_attn = c.get<bool>("upscale_attn");
  o.lr = c.get<double>("lr");
  o.num_steps = c.get<int64_t>("num_steps");
  o.save_interval = c.get<int64_t>("save_interval");
  o.batch_size = c.get<int64_t>("batch_size");
  o.alpha = c.get<double>("alpha");
  o.eval_grid = c.get<bool>("eval_grid");
  o.eval_grid_m = c.get<int64_t>("eval_grid_m");
  o.eval_random = c.get<int64_t>("eval_random");
  o.export_preferences = c.get<std::vector<std::vector<double>>>("export");
  o.resume = c.get<bool>("resume");
  o.checkpoint_path = c.get<std::string>("checkpoint_path");
  o.epo_eps = c.get<double>("epo_eps");
  o.validate();
  return o;
}

void PweMoeOptions::validate() const {
  FUSION_ENSURE(std::isfinite(lr) && lr >= 0, "method.lr = ", lr, ": must be a finite non-negative number");
  FUSION_ENSURE(std::isfinite(alpha) && alpha > 0, "method.alpha = ", alpha, ": must be positive");
  FUSION_ENSURE(num_steps >= 0, "method.num_steps = ", num_steps, ": must not be negative");
  FUSION_ENSURE(save_interval >= 1, "method.save_interval = ", save_interval, ": must be at least 1");
  FUSION_ENSURE(batch_size >= 1, "method.batch_size = ", batch_size, ": must be at least 1");
  FUSION_ENSURE(eval_grid_m >= 2, "method.eval_grid_m = ", eval_grid_m, ": must be at least 2");
  FUSION_ENSURE(model.router_hidden_layers == 1 || model.router_hidden_layers == 2,
                "method.router_hidden_layers = ", model.router_hidden_layers, ": must be 1 or 2");
  FUSION_ENSURE(!(resume && !checkpoint_path.empty()),
                "method.resume and method.checkpoint_path are both set: resume continues training, "
                "checkpoint_path evaluates without training");
}

// ---------------------------------------------------------------------------------------------
// Helpers

namespace {

// The original code anneals the routers' lr to eta_min = 0.1·lr (CosineAnnealingLR).
constexpr double kMinLrFactor = 0.1;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
  return splitmix64(splitmix64(splitmix64(seed) ^ a) ^ (b * 0xD1B54A32D192ED03ull));
}

std::vector<double> dirichlet(int64_t T, double alpha, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor conc = at::full({T}, alpha, at::TensorOptions().dtype(at::kDouble));
  at::Tensor s = at::_sample_dirichlet(conc, gen);
  std::vector<double> out(static_cast<size_t>(T));
  double sum = 0.0;
  for (int64_t i = 0; i < T; ++i) sum += (out[static_cast<size_t>(i)] = s[i].item<double>());
  if (!(sum > 0)) out.assign(static_cast<size_t>(T), 1.0 / static_cast<double>(T));
  else
    for (double& v : out) v /= sum;
  return out;
}

std::string fmt(double v, int prec = 4) {
  std::ostringstream o;
  o << std::setprecision(prec) << v;
  return o.str();
}

std::string short_name(const std::string& s) { return s.size() <= 8 ? s : s.substr(0, 8); }

// One stream per task, re-seeded at every save_interval boundary (a "segment"), so a run resumed
// from a checkpoint sees the batches an uninterrupted run sees without replaying the data.
struct Streams {
  std::vector<std::unique_ptr<BatchStream>> streams;
  int64_t segment = -1;
};

}  // namespace

std::string PweMoeAlgorithm::preference_label(const std::vector<double>& r, int decimals) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(decimals) << "r=[";
  for (size_t i = 0; i < r.size(); ++i) o << (i ? "," : "") << r[i];
  o << "]";
  return o.str();
}

std::vector<double> PweMoeAlgorithm::sample_preference(int64_t T, uint64_t seed, int64_t step) const {
  return dirichlet(T, options_.alpha, derive_seed(seed, 0x7072656675ull, static_cast<uint64_t>(step)));
}

std::vector<std::vector<double>> PweMoeAlgorithm::evaluation_preferences(int64_t T, uint64_t seed) const {
  std::vector<std::vector<double>> out;
  if (options_.eval_grid) {
    if (T <= 3) {
      out = generate_simplex_grid(static_cast<int>(T), static_cast<int>(options_.eval_grid_m));
    } else {
      out.emplace_back(static_cast<size_t>(T), 1.0 / static_cast<double>(T));
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> e(static_cast<size_t>(T), 0.0);
        e[static_cast<size_t>(t)] = 1.0;
        out.push_back(std::move(e));
      }
    }
  }
  for (int64_t i = 0; i < options_.eval_random; ++i)
    out.push_back(dirichlet(T, options_.alpha, derive_seed(seed, 0x6576616cull, static_cast<uint64_t>(i))));
  return out;
}

PweMoeAlgorithm::PweMoeAlgorithm(std::string name, PweMoeOptions options)
    : name_(std::move(name)), options_(std::move(options)) {
  options_.validate();
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

void PweMoeAlgorithm::save_checkpoint(const fs::path& path, ParetoWeightEnsembling& pwe, Adam& adam,
                                      int64_t step, const Context& ctx) const {
  StateDict sd = pwe.router_state().detach();
  const StateDict routers = pwe.router_state();
  size_t i = 0;
  for (const auto& [name, t] : routers) {
    sd.set("optimizer." + name + ".exp_avg", adam.exp_avg()[i]);
    sd.set("optimizer." + name + ".exp_avg_sq", adam.exp_avg_sq()[i]);
    ++i;
  }
  std::string tasks;
  for (size_t k = 0; k < pwe.expert_names().size(); ++k) tasks += (k ? "," : "") + pwe.expert_names()[k];
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  save_safetensors(path, sd,
                   {{"format", "pt"},
                    {"method", name_},
                    {"step", std::to_string(step)},
                    {"optimizer_steps", std::to_string(adam.steps())},
                    {"num_tasks", std::to_string(pwe.num_tasks())},
                    {"tasks", tasks},
                    {"seed", std::to_string(ctx.seed())},
                    {"router_hidden_layers", std::to_string(pwe.options().router_hidden_layers)}});
}

int64_t PweMoeAlgorithm::load_checkpoint(const fs::path& path, ParetoWeightEnsembling& pwe, Adam* adam) const {
  FUSION_ENSURE(fs::exists(path), path.string(), ": router checkpoint not found");
  SafetensorsFile file(path);
  const auto& meta = file.metadata();
  auto it = meta.find("num_tasks");
  if (it != meta.end())
    FUSION_ENSURE(it->second == std::to_string(pwe.num_tasks()), path.string(), ": the checkpoint has routers for ",
                  it->second, " tasks, the model pool has ", pwe.num_tasks());
  StateDict sd = file.read_all(pwe.router_parameters().front().device(), at::kFloat);
  pwe.load_router_state(sd, path.string());
  int64_t step = 0;
  if ((it = meta.find("step")) != meta.end()) step = std::stoll(it->second);
  if (adam != nullptr) {
    const StateDict routers = pwe.router_state();
    size_t i = 0;
    c10::NoGradGuard no_grad;
    for (const auto& [name, t] : routers) {
      const at::Tensor* m = sd.find("optimizer." + name + ".exp_avg");
      const at::Tensor* v = sd.find("optimizer." + name + ".exp_avg_sq");
      FUSION_ENSURE(m && v, path.string(), ": optimizer state of '", name, "' is missing; cannot resume");
      adam->exp_avg()[i].copy_(*m);
      adam->exp_avg_sq()[i].copy_(*v);
      ++i;
    }
    int64_t opt_steps = step;
    if ((it = meta.find("optimizer_steps")) != meta.end()) opt_steps = std::stoll(it->second);
    adam->set_steps(opt_steps);
  }
  return step;
}

fs::path PweMoeAlgorithm::latest_checkpoint(const fs::path& dir) {
  fs::path best;
  int64_t best_step = -1;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return best;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string pre = "routers_step=", post = ".safetensors";
    if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
        name.compare(name.size() - post.size(), post.size(), post) != 0)
      continue;
    const std::string num = name.substr(pre.size(), name.size() - pre.size() - post.size());
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t s = std::stoll(num);
    if (s > best_step) {
      best_step = s;
      best = entry.path();
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Training

PweMoeStepStats PweMoeAlgorithm::step(ParetoWeightEnsembling& pwe, Adam& adam, const std::vector<Task*>& tasks,
                                      const std::vector<Batch>& batches, const std::vector<double>& r, double lr,
                                      int64_t step_index) {
  const int64_t T = pwe.num_tasks();
  FUSION_ENSURE(static_cast<int64_t>(tasks.size()) == T && static_cast<int64_t>(batches.size()) == T, name_,
                ": one task and one batch per expert expected");
  PweMoeStepStats stats;
  const std::vector<at::Tensor> router = pwe.router_parameters();
  for (const at::Tensor& p : router) {
    at::Tensor& g = const_cast<at::Tensor&>(p).mutable_grad();
    if (g.defined()) g.zero_();
  }
  const at::Device device = router.front().device();
  const at::Tensor rt =
      at::tensor(std::vector<float>(r.begin(), r.end()), at::TensorOptions().dtype(at::kFloat)).to(device);

  // θ(r) = θ₀ + Σₜ g(r)ₜ τₜ merged once per preference vector, reused for every task's batch.
  const std::vector<at::Tensor> g = pwe.route(rt);
  StateDict params = pwe.merge(g);
  std::vector<std::string> leaf_keys;
  for (const auto& grp : pwe.groups())
    for (const auto& k : grp.keys) {
      params.at(k).requires_grad_(true);
      leaf_keys.push_back(k);
    }
  auto leaf_grads = [&]() {
    StateDict grads;
    for (const auto& k : leaf_keys) grads.set(k, params.at(k).grad());
    return grads;
  };
  auto task_loss = [&](size_t t) {
    at::Tensor loss = tasks[t]->loss(pwe.model(), params, batches[t]);
    const double v = loss.item<double>();
    if (!std::isfinite(v))
      FUSION_FAIL(name_, ": the loss of task '", tasks[t]->name(), "' is ", v, " at step ", step_index,
                  "; training stopped");
    stats.losses.push_back(v);
    return loss;
  };

  if (!needs_task_gradients()) {
    stats.weights = loss_weights({}, r, at::Tensor(), stats);
    // Σₜ wₜ ∂Lₜ/∂θ accumulates in the merged tensors' .grad, one task's activations at a time.
    for (size_t t = 0; t < static_cast<size_t>(T); ++t) {
      at::Tensor loss = task_loss(t);
      (loss * stats.weights[t]).backward();
    }
    const std::vector<at::Tensor> dg = pwe.group_weight_grads(leaf_grads());
    torch::autograd::backward(g, dg);
  } else {
    // Per-task router gradients Gₜ (the chain through the merge is explicit: ∂L/∂g = ⟨τ, ∂L/∂θ⟩).
    std::vector<at::Tensor> G;
    for (size_t t = 0; t < static_cast<size_t>(T); ++t) {
      for (const auto& k : leaf_keys) {
        at::Tensor& gr = params.at(k).mutable_grad();
        if (gr.defined()) gr.zero_();
      }
      at::Tensor loss = task_loss(t);
      loss.backward();
      const std::vector<at::Tensor> dg = pwe.group_weight_grads(leaf_grads());
      std::vector<at::Tensor> grads = torch::autograd::grad(g, router, dg, /*retain_graph=*/true, false, true);
      std::vector<at::Tensor> flat;
      for (size_t i = 0; i < grads.size(); ++i)
        flat.push_back(grads[i].defined() ? grads[i].reshape({-1}) : at::zeros({router[i].numel()}, router[i].options()));
      G.push_back(at::cat(flat).to(at::kDouble));
    }
    at::Tensor Gm = at::stack(G);
    at::Tensor C = at::mm(Gm, Gm.t()).cpu();
    stats.weights = loss_weights(stats.losses, r, C, stats);
    // ∂(Σ wₜ Lₜ)/∂router = Σ wₜ Gₜ, the gradient autograd would give for the weighted loss.
    at::Tensor w = at::tensor(stats.weights, at::TensorOptions().dtype(at::kDouble)).to(Gm.device());
    at::Tensor total = at::mv(Gm.t(), w).to(at::kFloat);
    int64_t off = 0;
    c10::NoGradGuard no_grad;
    for (const at::Tensor& p : router) {
      at::Tensor gp = total.narrow(0, off, p.numel()).view(p.sizes()).clone();
      const_cast<at::Tensor&>(p).mutable_grad() = gp;
      off += p.numel();
    }
  }
  stats.loss = 0.0;
  for (size_t t = 0; t < stats.losses.size(); ++t) stats.loss += stats.weights[t] * stats.losses[t];
  for (const at::Tensor& p : router)
    if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>())
      FUSION_FAIL(name_, ": a router gradient is not finite at step ", step_index, "; training stopped");
  adam.step(lr);
  return stats;
}

nlohmann::json PweMoeAlgorithm::train(ParetoWeightEnsembling& pwe, const std::vector<Task*>& tasks,
                                      const Context& ctx) {
  const int64_t T = pwe.num_tasks();
  const fs::path ckpt_dir = ctx.run_dir() / "checkpoints";
  const fs::path log_path = ctx.run_dir() / "train_log.csv";
  Adam adam(pwe.router_parameters());
  int64_t start = 0;
  fs::path last_good;
  if (options_.resume) {
    last_good = latest_checkpoint(ckpt_dir);
    if (last_good.empty()) {
      ctx.log().warn(name_ + ": resume = true but " + ckpt_dir.string() + " holds no checkpoint; starting at step 0");
    } else {
      start = load_checkpoint(last_good, pwe, &adam);
      ctx.log().info(name_ + ": resuming from " + last_good.string() + " (step " + std::to_string(start) + ")");
      const std::map<std::string, std::string> meta = SafetensorsFile(last_good).metadata();
      auto it = meta.find("seed");
      if (it != meta.end() && it->second != std::to_string(ctx.seed()))
        ctx.log().warn(name_ + ": " + last_good.string() + " was written by a run with seed " + it->second +
                       ", this run has seed " + std::to_string(ctx.seed()) +
                       ": the resumed run will not equal an uninterrupted one");
      if ((it = meta.find("method")) != meta.end() && it->second != name_)
        ctx.log().warn(name_ + ": " + last_good.string() + " was written by " + it->second);
    }
  }
  // train_log.csv: a header, then one row per step; on resume the rows after the checkpoint go.
  {
    std::vector<std::string> kept;
    if (start > 0) {
      std::ifstream in(log_path);
      std::string line;
      bool first = true;
      while (std::getline(in, line)) {
        if (first) {
          first = false;
          continue;
        }
        const auto comma = line.find(',');
        if (comma == std::string::npos) continue;
        try {
          if (std::stoll(line.substr(0, comma)) <= start) kept.push_back(line);
        } catch (...) {
        }
      }
    }
    std::ofstream out(log_path, std::ios::trunc);
    FUSION_ENSURE(out.good(), name_, ": cannot write ", log_path.string());
    out << "step,loss,lr,mode,lp_failed";
    for (int64_t t = 0; t < T; ++t) out << ",r_" << pwe.expert_names()[static_cast<size_t>(t)];
    for (int64_t t = 0; t < T; ++t) out << ",loss_" << pwe.expert_names()[static_cast<size_t>(t)];
    for (int64_t t = 0; t < T; ++t) out << ",weight_" << pwe.expert_names()[static_cast<size_t>(t)];
    out << ",seconds\n";
    for (const auto& l : kept) out << l << "\n";
  }
  std::ofstream log(log_path, std::ios::app);
  log << std::setprecision(8);

  Streams streams;
  auto open_streams = [&](int64_t segment, int64_t skip) {
    streams.streams.clear();
    for (int64_t t = 0; t < T; ++t) {
      streams.streams.push_back(tasks[static_cast<size_t>(t)]->train_stream(
          options_.batch_size, derive_seed(ctx.seed(), 0x64617461ull + static_cast<uint64_t>(t),
                                           static_cast<uint64_t>(segment))));
      for (int64_t k = 0; k < skip; ++k) streams.streams.back()->next();
    }
    streams.segment = segment;
  };

  auto progress = ctx.progress(name_ + " training", options_.num_steps);
  progress->set(start);
  const auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, int64_t> modes;
  PweMoeStepStats last;
  int64_t failures_before = lp_failures_;
  for (int64_t s = start + 1; s <= options_.num_steps; ++s) {
    const int64_t segment = (s - 1) / options_.save_interval;
    if (segment != streams.segment) open_streams(segment, (s - 1) - segment * options_.save_interval);
    const std::vector<double> r = sample_preference(T, ctx.seed(), s);
    std::vector<Batch> batches;
    for (auto& st : streams.streams) batches.push_back(st->next());
    const double lr = cosine_lr(options_.lr, s, options_.num_steps, kMinLrFactor);
    try {
      last = step(pwe, adam, tasks, batches, r, lr, s);
    } catch (const Error& e) {
      progress->finish();
      FUSION_FAIL(e.what(), (last_good.empty() ? "; no checkpoint was written yet"
                                               : "; the last good checkpoint is " + last_good.string()));
    }
    ++modes[last.mode];
    if (last.lp_failed) {
      const int64_t n = lp_failures_ - failures_before;
      if (n <= 10 || n % 100 == 0)
        ctx.log().warn(name_ + ": EPO's LP failed at step " + std::to_string(s) + " (" + last.lp_error +
                       "); using r/Σr (" + std::to_string(n) + " failures so far" + (n == 10 ? ", logging every 100th" : "") + ")");
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log << s << "," << last.loss << "," << lr << "," << last.mode << "," << (last.lp_failed ? 1 : 0);
    for (double v : r) log << "," << v;
    for (double v : last.losses) log << "," << v;
    for (double v : last.weights) log << "," << v;
    log << "," << secs << "\n";
    log.flush();
    std::string post = "loss=" + fmt(last.loss) + " lr=" + fmt(lr, 3);
    for (int64_t t = 0; t < T; ++t)
      post += " " + short_name(pwe.expert_names()[static_cast<size_t>(t)]) + "=" + fmt(last.losses[static_cast<size_t>(t)], 3);
    if (lp_failures_ > 0) post += " lp_fail=" + std::to_string(lp_failures_);
    progress->set_postfix(post);
    progress->advance();
    if (s % options_.save_interval == 0 || s == options_.num_steps) {
      const fs::path p = ckpt_dir / ("routers_step=" + std::to_string(s) + ".safetensors");
      save_checkpoint(p, pwe, adam, s, ctx);
      last_good = p;
    }
  }
  progress->finish();
  nlohmann::json info = {{"start_step", start},
                         {"steps", options_.num_steps},
                         {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
                         {"modes", modes},
                         {"lp_failures", lp_failures_ - failures_before},
                         {"checkpoint", last_good.string()}};
  if (!last.losses.empty()) info["final_loss"] = last.loss;
  return info;
}

// ---------------------------------------------------------------------------------------------
// run

Result PweMoeAlgorithm::run(ModelPool& models, TaskPool* tasks, const Context& ctx) {
  const bool train_routers = options_.checkpoint_path.empty();
  std::vector<Task*> task_list;
  const std::vector<std::string> names = models.expert_names();
  FUSION_ENSURE(names.size() >= 2, name_, " needs at least 2 experts (tasks), the model pool has ", names.size());
  if (train_routers) {
    FUSION_ENSURE(tasks != nullptr, name_, " trains its routers on the tasks' train splits: add a [taskpool], "
                                          "or set method.checkpoint_path to evaluate trained routers");
    const std::vector<std::string> tnames = tasks->task_names();
    for (const std::string& n : names) {
      bool found = false;
      for (const auto& tn : tnames) found = found || tn == n;
      std::string all;
      for (size_t i = 0; i < tnames.size(); ++i) all += (i ? ", " : "") + tnames[i];
      FUSION_ENSURE(found, name_, ": expert '", n, "' has no task of the same name in the task pool (tasks: ", all, ")");
      Task& t = tasks->task(n);
      FUSION_ENSURE(t.has_train_split(), name_, ": task '", n, "' has no train split, which training needs");
      task_list.push_back(&t);
    }
  }
  // Export preferences are checked before the (long) setup and training.
  for (size_t i = 0; i < options_.export_preferences.size(); ++i) {
    const auto& r = options_.export_preferences[i];
    FUSION_ENSURE(r.size() == names.size(), "method.export[", i, "]: the preference vector has ", r.size(),
                  " entries, expected one per task (T = ", names.size(), ")");
  }

  const auto t_setup = std::chrono::steady_clock::now();
  std::shared_ptr<ParetoWeightEnsembling> pwe = ParetoWeightEnsembling::from_pool(models, ctx, options_.model, name_);
  std::vector<std::vector<double>> exports;
  for (size_t i = 0; i < options_.export_preferences.size(); ++i)
    exports.push_back(pwe->checked_preference(options_.export_preferences[i], "method.export[" + std::to_string(i) + "]"));
  const double setup_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count();
  ctx.log().info(name_ + ": " + std::to_string(pwe->groups().size()) + " upscaled groups, " +
                 std::to_string(pwe->num_router_parameters()) + " router parameters, task vectors " +
                 fmt(static_cast<double>(pwe->task_vector_bytes()) / (1 << 20), 4) + " MiB");

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
    if (needs_task_gradients()) result.info["lp_failures"] = lp_failures_;
  } else {
    load_checkpoint(options_.checkpoint_path, *pwe, nullptr);
    result.info["checkpoint_path"] = options_.checkpoint_path;
    ctx.log().info(name_ + ": routers from " + options_.checkpoint_path + " (no training)");
  }

  for (size_t i = 0; i < exports.size(); ++i) {
    ModelPtr m = pwe->merge_and_unload(exports[i]);
    std::string dir = preference_label(exports[i], 4).substr(2);  // "[0.5000,0.5000]"
    for (char& c : dir)
      if (c == '[' || c == ']' || c == ',') c = '_';
    const fs::path out = ctx.run_dir() / "exports" / ("r" + dir);
    std::error_code ec;
    fs::create_directories(out.parent_path(), ec);
    models.save(*m, out);
    ctx.log().info(name_ + ": exported " + preference_label(exports[i]) + " to " + out.string());
    result.info["exports"].push_back({{"preference", exports[i]}, {"path", out.string()}});
  }

  const auto prefs = evaluation_preferences(pwe->num_tasks(), ctx.seed());
  std::set<std::string> labels;
  const size_t n_grid = prefs.size() - static_cast<size_t>(options_.eval_random);
  // Over two tasks the grid runs along one line, r = (1 − t, t); over more it fills a simplex, and
  // random preferences are not in order: only the first is a curve to draw as one.
  result.sweep = pwe->num_tasks() == 2 && options_.eval_random == 0;
  for (size_t i = 0; i < prefs.size(); ++i) {
    std::string label = preference_label(prefs[i]);
    if (labels.count(label)) label = preference_label(prefs[i], 4);
    if (labels.count(label)) label += "#" + std::to_string(i);
    labels.insert(label);
    const std::vector<double> r = prefs[i];
    result.add_lazy(label, [pwe, r]() { return pwe->merge_and_unload(r); },
                    {{"preference", r}, {"source", i < n_grid ? "grid" : "random"}});
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// LS and EPO

PweMoeLs::PweMoeLs(PweMoeOptions options) : PweMoeAlgorithm("pwe_moe_ls", std::move(options)) {}

ComponentInfo PweMoeLs::info() {
  ComponentInfo info;
  info.name = "pwe_moe_ls";
  info.summary = "PWEMoE with linear scalarisation: routers from preference vectors to task-vector weights, "
                 "trained on Σ rₜ Lₜ; returns the Pareto set";
  info.reference = "https://arxiv.org/abs/2406.09770";
  info.schema = pwe_moe_schema();
  return info;
}

std::unique_ptr<Algorithm> PweMoeLs::create(const Context& ctx) {
  return std::make_unique<PweMoeLs>(PweMoeOptions::from_config(ctx.config()));
}

std::vector<double> PweMoeLs::loss_weights(const std::vector<double>&, const std::vector<double>& r,
                                           const at::Tensor&, PweMoeStepStats& stats) {
  stats.mode = "ls";
  return r;  // L = Σₜ rₜ Lₜ
}

PweMoeEpo::PweMoeEpo(PweMoeOptions options) : PweMoeAlgorithm("pwe_moe_epo", std::move(options)) {}

ComponentInfo PweMoeEpo::info() {
  ComponentInfo info;
  info.name = "pwe_moe_epo";
  info.summary = "PWEMoE with exact Pareto optimal search: routers trained on EPO's LP-weighted losses "
                 "(GLPK); returns the Pareto set";
  info.reference = "https://arxiv.org/abs/2406.09770";
  info.schema = pwe_moe_schema();
  return info;
}

std::unique_ptr<Algorithm> PweMoeEpo::create(const Context& ctx) {
  return std::make_unique<PweMoeEpo>(PweMoeOptions::from_config(ctx.config()));
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
