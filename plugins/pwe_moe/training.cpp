// PWEMoE training (docs/pwe_moe.md, "Training" and "One step"): sample r ~ Dir(α·1), take one
// batch per task, step the routers on Σₜ wₜ Lₜ(θ(r)); checkpoints, train_log.csv and resume
// (checked against the checkpoint's training record: "Resuming").
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cmath>
#include <iomanip>
#include <map>
#include <optional>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/seed.hpp"
#include "pwe_moe.hpp"
#include "router_checkpoints.hpp"
#include "step_log.hpp"
#include "training_record.hpp"

namespace fusion::methods {

namespace fs = std::filesystem;

namespace {

// The original code anneals the routers' lr to eta_min = 0.1·lr (CosineAnnealingLR).
constexpr double kMinLrFactor = 0.1;

// Tags of the run's random streams (fusion::derive_seed): training preferences and data.
constexpr uint64_t kPreferenceStream = 0x7072656675ull, kDataStream = 0x64617461ull;

std::string fmt(double v, int prec = 4) {
  std::ostringstream o;
  o << std::setprecision(prec) << v;
  return o.str();
}

std::string short_name(const std::string& s) { return s.size() <= 8 ? s : s.substr(0, 8); }

// The merged parameters θ(r) of one step: every group's tensors are leaves whose .grad collects
// ∂L/∂θ, so one task's activations are alive at a time and the chain to the routers is explicit.
// Mixed precision (pwe.compute_dtype() 16-bit): the leaves stay float32, so ∂L/∂θ accumulates over
// the tasks in float32; the forward reads their 16-bit copy, cast once per step.
class MergedParameters {
 public:
  MergedParameters(const ParetoWeightEnsembling& pwe, const std::vector<at::Tensor>& g) : pwe_(pwe), params_(pwe.merge(g)) {
    for (const auto& grp : pwe.groups())
      for (const auto& k : grp.keys) {
        params_.at(k).requires_grad_(true);
        leaf_keys_.push_back(k);
      }
    compute_ = pwe.compute_parameters(params_);
  }
  // Lₜ on task t's batch (a scalar tensor with the graph to the leaves), in float32 at least.
  at::Tensor loss(Task& task, const Batch& batch) const {
    at::Tensor l = task.loss(pwe_.model(), compute_, batch);
    return l.scalar_type() == at::kBFloat16 || l.scalar_type() == at::kHalf ? l.to(at::kFloat) : l;
  }
  // ∂L/∂g per group from the leaves' gradients: (∂L/∂g)ₜ = ⟨τₜ, ∂L/∂θ⟩.
  std::vector<at::Tensor> group_weight_grads() {
    StateDict grads;
    for (const auto& k : leaf_keys_) grads.set(k, params_.at(k).grad());
    return pwe_.group_weight_grads(grads);
  }
  void zero_grads() {
    for (const auto& k : leaf_keys_) {
      at::Tensor& gr = params_.at(k).mutable_grad();
      if (gr.defined()) gr.zero_();
    }
  }

 private:
  const ParetoWeightEnsembling& pwe_;
  StateDict params_;
  StateDict compute_;  ///< params_ as the forward reads them (params_ itself without mixed precision)
  std::vector<std::string> leaf_keys_;
};

// float16 gradients underflow where bfloat16's (float32's exponent range) do not: with a float16
// compute dtype the losses are scaled by this before backward and ∂L/∂θ unscaled after (a static
// loss scale; a non-finite gradient stops the step as any other does).
double loss_scale(at::ScalarType compute) { return compute == at::kHalf ? 1024.0 : 1.0; }

// The router gradient for ∂L/∂g = `dg` (one [T] tensor per group), flattened in router_parameters()
// order, in float64.
at::Tensor router_gradient(const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& router,
                           const std::vector<at::Tensor>& dg) {
  std::vector<at::Tensor> grads = torch::autograd::grad(g, router, dg, /*retain_graph=*/true, false, true);
  std::vector<at::Tensor> flat;
  for (size_t i = 0; i < grads.size(); ++i)
    flat.push_back(grads[i].defined() ? grads[i].reshape({-1}) : at::zeros({router[i].numel()}, router[i].options()));
  return at::cat(flat).to(at::kDouble);
}

// Sets the routers' .grad from the flat float64 gradient `total` (router_parameters() order).
void set_router_grads(const std::vector<at::Tensor>& router, const at::Tensor& total) {
  const at::Tensor flat = total.to(at::kFloat);
  int64_t off = 0;
  c10::NoGradGuard no_grad;
  for (const at::Tensor& p : router) {
    const_cast<at::Tensor&>(p).mutable_grad() = flat.narrow(0, off, p.numel()).view(p.sizes()).clone();
    off += p.numel();
  }
}

// Σ over the ranks of `t`, added in rank order, so that every rank holds the same bits (a tensor with
// zeros where a rank has nothing sums exactly to the values of the rank that has them).
at::Tensor sum_over_ranks(const Communicator& comm, const at::Tensor& t) {
  std::vector<at::Tensor> parts = comm.all_gather(t);
  at::Tensor sum = parts[0].clone();
  for (size_t r = 1; r < parts.size(); ++r) sum.add_(parts[r]);
  return sum;
}

}  // namespace

std::vector<double> dirichlet_preference(int64_t T, double alpha, uint64_t seed) {
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

std::vector<double> PweMoeAlgorithm::sample_preference(int64_t T, uint64_t seed, int64_t step) const {
  return dirichlet_preference(T, options_.alpha, derive_seed(seed, kPreferenceStream, static_cast<uint64_t>(step)));
}

// ---------------------------------------------------------------------------------------------
// One step: losses → weights → the routers' gradient of Σₜ wₜ Lₜ → Adam

PweMoeStepStats PweMoeAlgorithm::step(ParetoWeightEnsembling& pwe, Adam& adam, const std::vector<Task*>& tasks,
                                      const std::vector<Batch>& batches, const std::vector<double>& r, double lr,
                                      int64_t step_index) {
  const int64_t T = pwe.num_tasks();
  FUSION_ENSURE(static_cast<int64_t>(tasks.size()) == T && static_cast<int64_t>(batches.size()) == T, name_,
                ": one task and one batch per expert expected");
  const std::vector<at::Tensor> router = pwe.router_parameters();
  for (const at::Tensor& p : router) {
    at::Tensor& g = const_cast<at::Tensor&>(p).mutable_grad();
    if (g.defined()) g.zero_();
  }
  const at::Tensor rt =
      at::tensor(std::vector<float>(r.begin(), r.end()), at::TensorOptions().dtype(at::kFloat)).to(router.front().device());

  // θ(r) = θ₀ + Σₜ g(r)ₜ τₜ, merged once for every task's batch.
  const std::vector<at::Tensor> g = pwe.route(rt);
  MergedParameters theta(pwe, g);
  const double scale = loss_scale(pwe.compute_dtype());
  PweMoeStepStats stats;
  auto task_loss = [&](size_t t) {
    at::Tensor loss = theta.loss(*tasks[t], batches[t]);
    const double v = loss.item<double>();
    if (!std::isfinite(v))
      FUSION_FAIL(name_, ": the loss of task '", tasks[t]->name(), "' is ", v, " at step ", step_index,
                  "; training stopped");
    stats.losses.push_back(v);
    return loss;
  };

  if (comm_ != nullptr && comm_->distributed()) {
    // Several processes: this rank's tasks only (owned_); what the others computed comes through
    // the communicator, summed in rank order, so every rank holds the same gradient and steps Adam alike.
    const int64_t P = pwe.num_router_parameters();
    at::Tensor losses = at::zeros({T}, at::kDouble);
    auto own_loss = [&](size_t t) {
      at::Tensor loss = theta.loss(*tasks[t], batches[t]);
      const double v = loss.item<double>();
      if (!std::isfinite(v))
        FUSION_FAIL(name_, ": the loss of task '", tasks[t]->name(), "' is ", v, " at step ", step_index,
                    "; training stopped");
      losses[static_cast<int64_t>(t)] = v;
      return loss;
    };
    if (!needs_gradient_gram()) {
      // LS: the router gradient of Σ_{t here} rₜ Lₜ, then all-reduced.
      const std::vector<double> w = loss_weights({}, r, at::Tensor(), stats);
      for (size_t t = 0; t < static_cast<size_t>(T); ++t)
        if (owned_[t]) (own_loss(t) * (w[t] * scale)).backward();
      std::vector<at::Tensor> dg = theta.group_weight_grads();
      std::vector<at::Tensor> flat;
      for (at::Tensor& d : dg) {
        if (scale != 1.0) d.div_(scale);
        flat.push_back(d.reshape({-1}).to(at::kCPU, at::kDouble));
      }
      const at::Tensor total = sum_over_ranks(*comm_, at::cat(flat));
      int64_t off = 0;
      for (at::Tensor& d : dg) {
        d = total.narrow(0, off, d.numel()).view(d.sizes()).to(d.device(), d.scalar_type());
        off += d.numel();
      }
      torch::autograd::backward(g, dg);
      const at::Tensor all_losses = sum_over_ranks(*comm_, losses);
      stats.losses.assign(all_losses.data_ptr<double>(), all_losses.data_ptr<double>() + T);
      stats.weights = w;
    } else {
      // EPO: this rank's rows of G and of the losses, gathered (zeros elsewhere: the sum is exact),
      // then every rank solves the same LP on the same C = G Gᵀ.
      at::Tensor Gm = at::zeros({T, P}, at::kDouble);
      for (size_t t = 0; t < static_cast<size_t>(T); ++t) {
        if (!owned_[t]) continue;
        theta.zero_grads();
        (scale != 1.0 ? own_loss(t) * scale : own_loss(t)).backward();
        std::vector<at::Tensor> dg = theta.group_weight_grads();
        if (scale != 1.0)
          for (at::Tensor& d : dg) d.div_(scale);
        Gm[static_cast<int64_t>(t)] = router_gradient(g, router, dg).cpu();
      }
      Gm = sum_over_ranks(*comm_, Gm);
      const at::Tensor all_losses = sum_over_ranks(*comm_, losses);
      stats.losses.assign(all_losses.data_ptr<double>(), all_losses.data_ptr<double>() + T);
      Gm = Gm.to(router.front().device());
      stats.weights = loss_weights(stats.losses, r, at::mm(Gm, Gm.t()).cpu(), stats);
      const at::Tensor w = at::tensor(stats.weights, at::TensorOptions().dtype(at::kDouble)).to(Gm.device());
      set_router_grads(router, at::mv(Gm.t(), w));
    }
  } else if (!needs_gradient_gram()) {
    // The weights do not depend on the losses (LS: w = r): one backward pass of Σₜ wₜ Lₜ, taken
    // task by task into the merged parameters' .grad, then through the module to the routers.
    stats.weights = loss_weights({}, r, at::Tensor(), stats);
    for (size_t t = 0; t < static_cast<size_t>(T); ++t) (task_loss(t) * (stats.weights[t] * scale)).backward();
    std::vector<at::Tensor> dg = theta.group_weight_grads();
    if (scale != 1.0)
      for (at::Tensor& d : dg) d.div_(scale);
    torch::autograd::backward(g, dg);
  } else {
    // The weights need C = G Gᵀ (EPO): the per-task router gradients Gₜ = ∂Lₜ/∂φ first, then the
    // gradient of Σₜ wₜ Lₜ is Σₜ wₜ Gₜ.
    std::vector<at::Tensor> G;
    for (size_t t = 0; t < static_cast<size_t>(T); ++t) {
      theta.zero_grads();
      (scale != 1.0 ? task_loss(t) * scale : task_loss(t)).backward();
      std::vector<at::Tensor> dg = theta.group_weight_grads();
      if (scale != 1.0)
        for (at::Tensor& d : dg) d.div_(scale);
      G.push_back(router_gradient(g, router, dg));
    }
    const at::Tensor Gm = at::stack(G);
    stats.weights = loss_weights(stats.losses, r, at::mm(Gm, Gm.t()).cpu(), stats);
    const at::Tensor w = at::tensor(stats.weights, at::TensorOptions().dtype(at::kDouble)).to(Gm.device());
    set_router_grads(router, at::mv(Gm.t(), w));
  }
  stats.loss = 0.0;
  for (size_t t = 0; t < stats.losses.size(); ++t) stats.loss += stats.weights[t] * stats.losses[t];
  for (const at::Tensor& p : router)
    if (p.grad().defined() && !at::isfinite(p.grad()).all().item<bool>())
      FUSION_FAIL(name_, ": a router gradient is not finite at step ", step_index, "; training stopped");
  adam.step(lr);
  return stats;
}

// ---------------------------------------------------------------------------------------------
// The training loop

nlohmann::json PweMoeAlgorithm::train(ParetoWeightEnsembling& pwe, const std::vector<Task*>& tasks,
                                      const Context& ctx) {
  const int64_t T = pwe.num_tasks();
  const fs::path ckpt_dir = ctx.run_dir() / "checkpoints";
  // Several processes: task t is trained on rank t mod world (its data read there only); rank 0
  // writes the checkpoints and train_log.csv.
  const Communicator& comm = communicator(ctx);
  comm_ = comm.distributed() ? &comm : nullptr;
  owned_.assign(static_cast<size_t>(T), !comm.distributed());
  if (comm.distributed()) {
    FUSION_ENSURE(comm.world_size() <= T, name_, ": ", comm.world_size(), " processes for ", T,
                  " tasks: run with at most one process per task");
    for (int64_t t : items_of_rank(T, comm.rank(), comm.world_size())) owned_[static_cast<size_t>(t)] = true;
  }
  Adam adam(pwe.router_parameters());
  int64_t start = 0;
  fs::path last_good;
  // What the checkpoints of this run record; with resume, first checked against the latest
  // checkpoint's record (a difference throws here, before anything is written).
  nlohmann::json record = training_record(pwe.expert_names(), ctx);
  const std::string num_steps_key = "method." + option_name(&PweMoeOptions::num_steps);
  if (options_.resume) {
    const ResumePoint point = resume_point(pwe.expert_names(), ctx);
    last_good = point.checkpoint;
    if (last_good.empty()) {
      ctx.log().warn(name_ + ": " + option_name(&PweMoeOptions::resume) + " = true but " + ckpt_dir.string() +
                     " holds no checkpoint; starting at step 0");
    } else {
      start = load_router_checkpoint(last_good, pwe, &adam);
      ctx.log().info(name_ + ": resuming from " + last_good.string() + " (step " + std::to_string(start) + ")");
      nlohmann::json schedule = nlohmann::json::array();
      if (!point.record) {
        ctx.log().warn(name_ + ": " + last_good.string() +
                       " records no training options (it was written before they were recorded): resuming without "
                       "checking that this run's options are those it was trained with");
        const std::map<std::string, std::string> meta = router_checkpoint_metadata(last_good);
        auto it = meta.find("seed");
        if (it != meta.end() && it->second != std::to_string(ctx.seed()))
          ctx.log().warn(name_ + ": " + last_good.string() + " was written by a run with seed " + it->second +
                         ", this run has seed " + std::to_string(ctx.seed()) +
                         ": the resumed run will not equal an uninterrupted one");
        if ((it = meta.find("method")) != meta.end() && it->second != name_)
          ctx.log().warn(name_ + ": " + last_good.string() + " was written by " + it->second);
      } else {
        const nlohmann::json& recorded = point.record->value("lr_schedule", nlohmann::json::array());
        if (recorded.is_array()) schedule = recorded;
      }
      if (schedule.empty() || point.num_steps_changed_from)
        schedule.push_back({{"from_step", start}, {option_name(&PweMoeOptions::num_steps), options_.num_steps}});
      record["lr_schedule"] = schedule;
      if (point.num_steps_changed_from) {
        const int64_t was = *point.num_steps_changed_from, now = options_.num_steps;
        std::string what;
        if (now == start) {
          what = "the checkpoint's step is the last: no step is trained";
        } else {
          what = "training continues from step " + std::to_string(start) + " to " + std::to_string(now) +
                 " with the learning rates of a " + std::to_string(now) + "-step cosine schedule from step " +
                 std::to_string(start + 1) + " on (" + fmt(cosine_lr(options_.lr, start + 1, now, kMinLrFactor)) +
                 "; the checkpoint's step " + std::to_string(start) + " used " +
                 fmt(cosine_lr(options_.lr, start, was, kMinLrFactor)) + "), so the routers will be those of neither "
                 "an uninterrupted " + std::to_string(was) + "-step nor " + std::to_string(now) + "-step run";
        }
        ctx.log().warn(name_ + ": " + num_steps_key + " = " + std::to_string(now) + ", the checkpoint's training had " +
                       std::to_string(was) + ": " + what);
      }
    }
  }
  std::optional<StepLog> log;
  if (comm.is_main()) log.emplace(ctx.run_dir() / "train_log.csv", pwe.expert_names(), start);

  // One stream per task, re-seeded at every save_interval boundary (a "segment"), so a run resumed
  // from a checkpoint sees the batches an uninterrupted run sees without replaying the data.
  std::vector<std::unique_ptr<BatchStream>> streams;
  int64_t segment_open = -1;
  auto open_streams = [&](int64_t segment, int64_t skip) {
    streams.clear();
    for (int64_t t = 0; t < T; ++t) {
      if (comm_ != nullptr && !owned_[static_cast<size_t>(t)]) {
        streams.push_back(nullptr);  // another rank's task
        continue;
      }
      streams.push_back(tasks[static_cast<size_t>(t)]->train_stream(
          options_.batch_size,
          derive_seed(ctx.seed(), kDataStream + static_cast<uint64_t>(t), static_cast<uint64_t>(segment))));
      for (int64_t k = 0; k < skip; ++k) streams.back()->next();
    }
    segment_open = segment;
  };

  auto progress = ctx.progress(name_ + " training", options_.num_steps);
  progress->set(start);
  const auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, int64_t> modes;
  PweMoeStepStats last;
  const int64_t failures_before = lp_failures_;
  for (int64_t s = start + 1; s <= options_.num_steps; ++s) {
    const int64_t segment = (s - 1) / options_.save_interval;
    if (segment != segment_open) open_streams(segment, (s - 1) - segment * options_.save_interval);
    const std::vector<double> r = sample_preference(T, ctx.seed(), s);
    std::vector<Batch> batches;
    for (auto& st : streams) batches.push_back(st ? st->next() : Batch{});
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
    if (log) log->add(s, lr, r, last, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::string post = "loss=" + fmt(last.loss) + " lr=" + fmt(lr, 3);
    for (int64_t t = 0; t < T; ++t)
      post += " " + short_name(pwe.expert_names()[static_cast<size_t>(t)]) + "=" + fmt(last.losses[static_cast<size_t>(t)], 3);
    if (lp_failures_ > 0) post += " lp_fail=" + std::to_string(lp_failures_);
    progress->set_postfix(post);
    progress->advance();
    if (s % options_.save_interval == 0 || s == options_.num_steps) {
      const fs::path p = router_checkpoint_path(ckpt_dir, s);
      if (comm.is_main()) save_router_checkpoint(p, pwe, adam, s, name_, ctx.seed(), record);
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
  if (record.at("lr_schedule").size() > 1) info["lr_schedule"] = record.at("lr_schedule");
  return info;
}

PweMoeAlgorithm::ResumePoint PweMoeAlgorithm::resume_point(const std::vector<std::string>& experts,
                                                            const Context& ctx) const {
  ResumePoint point;
  if (!options_.resume) return point;
  point.checkpoint = latest_router_checkpoint(ctx.run_dir() / "checkpoints");
  if (point.checkpoint.empty()) return point;
  const std::map<std::string, std::string> meta = router_checkpoint_metadata(point.checkpoint);
  auto it = meta.find("step");
  if (it != meta.end()) point.step = std::stoll(it->second);
  point.record = training_record_of(meta, point.checkpoint.string());
  if (!point.record) return point;
  const TrainingComparison cmp = compare_training_records(*point.record, training_record(experts, ctx), point.step);
  if (!cmp.refused.empty()) {
    std::string list;
    for (size_t i = 0; i < cmp.refused.size(); ++i) list += (i ? "; " : "") + cmp.refused[i];
    FUSION_FAIL(name_, ": method.", option_name(&PweMoeOptions::resume), " = true, but ", point.checkpoint.string(),
                " was trained with other options: ", list,
                ". Set them back to continue it, or train anew in another run.out_dir");
  }
  point.num_steps_changed_from = cmp.num_steps_changed_from;
  return point;
}

}  // namespace fusion::methods
