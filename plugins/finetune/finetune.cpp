#include "finetune.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "fusion/task_pool.hpp"
#include "training.hpp"

namespace fusion::finetune {

void FinetuneOptions::bind(Options<FinetuneOptions>& o) {
  using O = FinetuneOptions;
  o("task", &O::task, "the task to fine-tune on (a name in the task pool)").required();
  o("from", &O::from, "the starting model: \"pretrained\" or an expert's name in the model pool");
  o("trainable", &O::trainable, "parameters that train: all, encoder (transformer blocks), mlp or attention")
      .one_of(trainable_subsets());
  o("num_steps", &O::num_steps, "optimizer steps, one batch each").min(1);
  o("batch_size", &O::batch_size, "images per step").min(1);
  o("lr", &O::lr, "Adam's peak learning rate (cosine annealing over num_steps)").min(0.0);
  o("min_lr_factor", &O::min_lr_factor, "last step's learning rate as a fraction of lr").range(0.0, 1.0);
  o("weight_decay", &O::weight_decay, "Adam's L2 weight decay").min(0.0);
  o("log_interval", &O::log_interval, "a train_log.csv row every this many steps").min(1);
  o("label", &O::label, "label of the resulting model (its folder under models/); \"\": the task's name");
}

ComponentInfo Finetune::info() {
  return {"finetune",
          "Fine-tunes the vision tower on one task's train split through its frozen head "
          "(Adam, cosine schedule); returns the fine-tuned model",
          "https://github.com/tanganke/fusion_bench (method clip_finetune)",
          {},
          Requirements().task_pool()};
}

Finetune::Finetune(FinetuneOptions options) : options_(std::move(options)) {}

Result Finetune::run(ModelPool& models, TaskPool* tasks, const Context& ctx) {
  const FinetuneOptions& o = options_;
  const std::string task_option = "method." + option_name(&FinetuneOptions::task);
  const auto names = tasks->task_names();  // a task pool: a declared requirement
  FUSION_ENSURE(std::find(names.begin(), names.end(), o.task) != names.end(), task_option, ": \"", o.task,
                "\" is not a task of the task pool");
  Task& task = tasks->task(o.task);
  FUSION_ENSURE(task.has_train_split(), task_option, ": task \"", o.task, "\" has no train split");

  ConstModelPtr start;
  if (o.from == "pretrained") {
    FUSION_ENSURE(models.has_pretrained(), "finetune from \"pretrained\" needs modelpool.pretrained");
    start = models.pretrained();
  } else {
    const auto experts = models.expert_names();
    FUSION_ENSURE(std::find(experts.begin(), experts.end(), o.from) != experts.end(), "method.",
                  option_name(&FinetuneOptions::from), ": \"", o.from,
                  "\" is neither \"pretrained\" nor an expert of the model pool");
    start = models.load(o.from);
  }

  // The parameters: trainable ones are fresh leaves that require grad; the rest shared, frozen.
  StateDict params;
  std::vector<at::Tensor> trainable;
  int64_t trainable_count = 0;
  for (const auto& [key, t] : start->parameters()) {
    if (is_trainable(key, t, o.trainable)) {
      at::Tensor p = t.detach().clone().set_requires_grad(true);
      trainable.push_back(p);
      trainable_count += p.numel();
      params.set(key, p);
    } else {
      params.set(key, t.detach());
    }
  }
  FUSION_ENSURE(!trainable.empty(), "method.", option_name(&FinetuneOptions::trainable), ": \"", o.trainable,
                "\" selects no parameter of this model");
  ctx.log().info("finetune: " + o.task + " from " + o.from + ", " + std::to_string(trainable_count) +
                 " trainable parameters (" + o.trainable + "), " + std::to_string(o.num_steps) +
                 " steps of " + std::to_string(o.batch_size));

  Adam adam(trainable, o.weight_decay);
  auto stream = task.train_stream(o.batch_size, ctx.seed());
  TrainLog log(ctx.run_dir().empty() ? std::filesystem::path() : ctx.run_dir() / "train_log.csv",
               {"step", "loss", "accuracy", option_name(&FinetuneOptions::lr), "seconds"});
  auto progress = ctx.progress("finetune " + o.task, o.num_steps);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> losses;
  losses.reserve(static_cast<size_t>(o.num_steps));
  double window_loss = 0.0, window_acc = 0.0;
  int64_t window = 0;
  for (int64_t step = 1; step <= o.num_steps; ++step) {
    Batch batch = stream->next();
    const double lr = cosine_lr(o.lr, step, o.num_steps, o.min_lr_factor);
    at::Tensor logits = task.logits(*start, params, batch.inputs);
    at::Tensor loss = at::cross_entropy_loss(logits, batch.labels);
    const double loss_v = loss.item<double>();
    FUSION_ENSURE(std::isfinite(loss_v), "finetune: the loss is not finite at step ", step,
                  " (lower method.lr?)");
    adam.zero_grad();
    loss.backward();
    adam.step(lr);
    const double acc = logits.detach().argmax(1).eq(batch.labels).to(at::kDouble).mean().item<double>();
    losses.push_back(loss_v);
    window_loss += loss_v;
    window_acc += acc;
    ++window;
    if (step % o.log_interval == 0 || step == o.num_steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log.add({step, window_loss / window, window_acc / window, lr, secs});
      progress->set_postfix("loss=" + short_number(window_loss / window) + " acc=" +
                            short_number(window_acc / window) + " lr=" + short_number(lr));
      window_loss = window_acc = 0.0;
      window = 0;
    }
    progress->advance();
  }
  progress->finish();
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const size_t tail = std::max<size_t>(1, losses.size() / 10);
  const double first_loss = losses.front();
  const double last_mean =
      std::accumulate(losses.end() - static_cast<std::ptrdiff_t>(tail), losses.end(), 0.0) / tail;
  ctx.log().info("finetune: " + o.task + ": train loss " + short_number(first_loss) + " -> " +
                 short_number(last_mean) + " (mean of the last " + std::to_string(tail) + " steps) in " +
                 short_number(train_s) + " s");

  using O = FinetuneOptions;
  Result result;
  result.info = option_values(o, &O::task, &O::from, &O::num_steps, &O::batch_size);
  result.info.update(nlohmann::json{{"trainable_params", trainable_count},
                                    {"train_loss_first", first_loss},
                                    {"train_loss_last", last_mean},
                                    {"train_seconds", train_s}});
  ModelPtr tuned = start->with_parameters(params.detach());
  result.add(o.label.empty() ? o.task : o.label, tuned, option_values(o, &O::task, &O::from, &O::num_steps, &O::lr));
  return result;
}

}  // namespace fusion::finetune
