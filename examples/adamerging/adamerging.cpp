#include "adamerging.hpp"

#include <fusion/clip/vision.hpp>
#include <fusion/error.hpp>
#include <fusion/optim.hpp>
#include <fusion/seed.hpp>
#include <fusion/state_dict.hpp>
#include <fusion/task_pool.hpp>
#include <fusion/train_log.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

namespace adamerging {

namespace {

// The tag of the test-batch streams among the run's random streams (fusion::derive_seed): "adat".
constexpr uint64_t kTestStream = 0x61646174ull;

std::string short_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

std::string vector_text(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + short_number(v[i]);
  return s + "]";
}

std::vector<double> values_of(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

void TaskWiseAdaMergingOptions::bind(fusion::Options<TaskWiseAdaMergingOptions>& o) {
  using O = TaskWiseAdaMergingOptions;
  o("init_values", &O::init_values, "initial λₜ of every expert in θ₀ + Σₜ λₜ τₜ");
  o("lr", &O::lr, "Adam's learning rate (constant)").check([](double lr) {
    return lr > 0.0 ? std::string() : "must be positive, got " + short_number(lr);
  });
  o("max_steps", &O::max_steps, "Adam steps, one unlabeled test batch of every task each").min(1);
  o("batch_size", &O::batch_size, "test images per task per step").min(1);
  o("clamp_weights", &O::clamp_weights, "merge with λ clamped to [0, 1]");
}

fusion::ComponentInfo TaskWiseAdaMerging::info() {
  return {"task_wise_adamerging",
          "Task-wise AdaMerging: one λ per task vector in θ₀ + Σₜ λₜ τₜ, learnt by minimising the entropy "
          "of the merged model's predictions on unlabeled test batches (holds θ₀ and every τₜ in memory)",
          "https://arxiv.org/abs/2310.02575",
          {},
          fusion::Requirements().pretrained().experts(1).task_pool()};
}

at::Tensor entropy_loss(const at::Tensor& logits) {
  FUSION_ENSURE(logits.dim() == 2, "entropy_loss: expected logits [batch, classes], got ", logits.dim(),
                " dimensions");
  const at::Tensor p = at::softmax(logits.to(at::kFloat), -1);
  return -(p * at::log(p + 1e-8)).sum(-1).mean();
}

fusion::StateDict merge_task_wise(const fusion::StateDict& base, const std::vector<fusion::StateDict>& task_vectors,
                                  const at::Tensor& weights) {
  FUSION_ENSURE(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(task_vectors.size()),
                "merge_task_wise: ", task_vectors.size(), " task vectors but weights of shape ", weights.sizes());
  const std::vector<at::Tensor> w = weights.unbind(0);
  fusion::StateDict merged;
  for (const auto& [key, theta0] : base) {
    if (!fusion::is_mergeable(theta0)) {
      merged.set(key, theta0);
      continue;
    }
    at::Tensor acc = theta0;
    for (size_t t = 0; t < task_vectors.size(); ++t) acc = acc + task_vectors[t].at(key) * w[t];
    merged.set(key, acc);
  }
  return merged;
}

fusion::Result TaskWiseAdaMerging::run(fusion::ModelPool& models, fusion::TaskPool* tasks,
                                       const fusion::Context& ctx) {
  using O = TaskWiseAdaMergingOptions;
  const Options& o = options_;
  // Requirements (a pretrained model, >= 1 expert, a task pool) are checked by the host before run().
  const std::vector<std::string> task_names = tasks->task_names();
  FUSION_ENSURE(!task_names.empty(), "task_wise_adamerging: the task pool has no task");
  // The test streams first: a task pool without test batches is refused before any weight is read.
  std::vector<fusion::Task*> task_list;
  std::vector<std::unique_ptr<fusion::BatchStream>> streams;
  for (size_t k = 0; k < task_names.size(); ++k) {
    fusion::Task& task = tasks->task(task_names[k]);
    task_list.push_back(&task);
    streams.push_back(task.test_stream(o.batch_size, fusion::derive_seed(ctx.seed(), kTestStream, k)));
  }

  const fusion::ConstModelPtr pretrained = models.pretrained();
  const fusion::StateDict& theta0 = pretrained->parameters();
  if (const auto* clip = dynamic_cast<const fusion::clip::ClipVisionModel*>(pretrained.get())) {
    const fusion::clip::VisionConfig& c = clip->vision_config();
    ctx.log().info("task_wise_adamerging: CLIP vision tower, " + std::to_string(c.num_hidden_layers) +
                   " layers of width " + std::to_string(c.hidden_size) + ", " + std::to_string(c.image_size) +
                   " px images");
  }
  const std::vector<std::string> experts = models.expert_names();
  std::vector<fusion::StateDict> task_vectors;
  task_vectors.reserve(experts.size());
  for (const std::string& name : experts) {
    fusion::ModelPtr expert = models.load(name);
    fusion::check_same_layout(theta0, expert->parameters(), "pretrained", "expert '" + name + "'");
    task_vectors.push_back(fusion::subtract(expert->parameters(), theta0).detach());
  }  // each expert is dropped once its task vector is made

  const auto T = static_cast<int64_t>(experts.size());
  at::Tensor lambda = at::full({T}, o.init_values, at::TensorOptions().dtype(at::kFloat).device(ctx.device()))
                          .set_requires_grad(true);
  auto effective = [&]() { return o.clamp_weights ? lambda.clamp(0.0, 1.0) : lambda; };
  fusion::Adam adam({lambda});

  std::vector<std::string> columns = {"step", "loss"};
  for (const auto& t : task_names) columns.push_back("entropy_" + t);
  for (const auto& e : experts) columns.push_back("lambda_" + e);
  columns.push_back("seconds");
  fusion::TrainLog log(ctx.run_dir().empty() ? std::filesystem::path() : ctx.run_dir() / "train_log.csv", columns);
  ctx.log().info("task_wise_adamerging: " + std::to_string(T) + " λ (init " + short_number(o.init_values) + "), " +
                 std::to_string(task_names.size()) + " tasks, " + std::to_string(o.max_steps) + " steps of " +
                 std::to_string(o.batch_size) + " test images per task, lr " + short_number(o.lr));

  auto progress = ctx.progress("adamerging", o.max_steps);
  const auto t0 = std::chrono::steady_clock::now();
  double first_loss = NAN, last_loss = NAN;
  std::vector<double> last_entropies(task_names.size(), NAN);
  for (int64_t step = 1; step <= o.max_steps; ++step) {
    adam.zero_grad();
    // θ(λ) once per step; each task's backward adds its gradient to λ.grad through it.
    const fusion::StateDict merged = merge_task_wise(theta0, task_vectors, effective());
    double loss = 0.0;
    for (size_t k = 0; k < task_list.size(); ++k) {
      const at::Tensor inputs = streams[k]->next().inputs;  // the labels are never read
      at::Tensor h = entropy_loss(task_list[k]->logits(*pretrained, merged, inputs));
      const double hv = h.item<double>();
      FUSION_ENSURE(std::isfinite(hv), "task_wise_adamerging: the entropy on task '", task_names[k],
                    "' is not finite at step ", step, " (lower method.", fusion::option_name(&O::lr), "?)");
      h.backward({}, /*retain_graph=*/k + 1 < task_list.size());
      last_entropies[k] = hv;
      loss += hv;
    }
    adam.step(o.lr);
    if (step == 1) first_loss = loss;
    last_loss = loss;

    std::vector<fusion::TrainLog::Cell> row = {step, loss};
    for (double h : last_entropies) row.emplace_back(h);
    const std::vector<double> lambdas = values_of(lambda);
    for (double l : lambdas) row.emplace_back(l);
    row.emplace_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    log.add(row);
    progress->set_postfix("entropy=" + short_number(loss) + " λ=" + vector_text(lambdas));
    progress->advance();
  }
  progress->finish();
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  at::Tensor final_weights;
  {
    at::NoGradGuard no_grad;
    final_weights = effective().detach();
  }
  const std::vector<double> lambdas = values_of(final_weights);
  ctx.log().info("task_wise_adamerging: entropy " + short_number(first_loss) + " -> " + short_number(last_loss) +
                 " in " + short_number(train_s) + " s; λ = " + vector_text(lambdas));

  fusion::StateDict merged;
  {
    at::NoGradGuard no_grad;
    merged = merge_task_wise(theta0, task_vectors, final_weights);
  }
  task_vectors.clear();
  fusion::Result result;
  result.info = {{"experts", experts},
                 {"tasks", task_names},
                 {fusion::option_name(&O::init_values), o.init_values},
                 {fusion::option_name(&O::max_steps), o.max_steps},
                 {"lambdas", lambdas},
                 {"initial_entropy", first_loss},
                 {"final_entropy", last_loss},
                 {"trainable_params", T},
                 {"train_seconds", train_s}};
  result.add("merged", pretrained->with_parameters(std::move(merged)), {{"lambdas", lambdas}});
  return result;
}

}  // namespace adamerging
