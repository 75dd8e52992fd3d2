#include "finetune.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "fusion/task_pool.hpp"
#include "training.hpp"

namespace fusion::finetune {

FinetuneOptions FinetuneOptions::from_config(const Config& c) {
  FinetuneOptions o;
  o.task = c.get<std::string>("task");
  o.from = c.get<std::string>("from");
  o.trainable = c.get<std::string>("trainable");
  o.num_steps = c.get<int64_t>("num_steps");
  o.batch_size = c.get<int64_t>("batch_size");
  o.lr = c.get<double>("lr");
  o.min_lr_factor = c.get<double>("min_lr_factor");
  o.weight_decay = c.get<double>("weight_decay");
  o.log_interval = c.get<int64_t>("log_interval");
  o.label = c.get<std::string>("label");
  return o;
}

ComponentInfo Finetune::info() {
  ComponentInfo info;
  info.name = "finetune";
  info.summary = "Fine-tunes the vision tower on one task's train split through its frozen head "
                 "(Adam, cosine schedule); returns the fine-tuned model";
  info.reference = "https://github.com/tanganke/fusion_bench (method clip_finetune)";
  FinetuneOptions d;
  Schema& s = info.schema;
  s.add_required("task", ValueType::String, "the task to fine-tune on (a name in the task pool)");
  s.add("from", d.from, "the starting model: \"pretrained\" or an expert's name in the model pool");
  s.add("trainable", d.trainable,
        "parameters that train: all, encoder (transformer blocks), mlp or attention")
      .one_of(trainable_subsets());
  s.add("num_steps", d.num_steps, "optimizer steps, one batch each").range(1, std::nullopt);
  s.add("batch_size", d.batch_size, "images per step").range(1, std::nullopt);
  s.add("lr", d.lr, "Adam's peak learning rate (cosine annealing over num_steps)").range(0.0, std::nullopt);
  s.add("min_lr_factor", d.min_lr_factor, "last step's learning rate as a fraction of lr").range(0.0, 1.0);
  s.add("weight_decay", d.weight_decay, "Adam's L2 weight decay").range(0.0, std::nullopt);
  s.add("log_interval", d.log_interval, "a train_log.csv row every this many steps").range(1, std::nullopt);
  s.add("label", d.label, "label of the resulting model (its folder under models/); \"\": the task's name");
  return info;
}

std::unique_ptr<Algorithm> Finetune::create(const Context& ctx) {
  return std::make_unique<Finetune>(FinetuneOptions::from_config(ctx.config()));
}

Finetune::Finetune(FinetuneOptions options) : options_(std::move(options)) {}

Result Finetune::run(ModelPool& models, TaskPool* tasks, const Context& ctx) {
  const FinetuneOptions& o = options_;
  FUSION_ENSURE(tasks != nullptr, "finetune needs a [taskpool]: it trains on method.task's train split");
  const auto names = tasks->task_names();
  FUSION_ENSURE(std::find(names.begin(), names.end(), o.task) != names.end(), "method.task: \"",
                o.task, "\" is not a task of the task pool");
  Task& task = tasks->task(o.task);
  FUSION_ENSURE(task.has_train_split(), "method.task: task \"", o.task, "\" has no train split");

  ModelPtr start;
  if (o.from == "pretrained") {
    FUSION_ENSURE(models.has_pretrained(), "finetune from \"pretrained\" needs modelpool.pretrained");
    start = models.pretrained();
  } else {
    const auto experts = models.expert_names();
    FUSION_ENSURE(std::find(experts.begin(), experts.end(), o.from) != experts.end(), "method.from: \"",
                  o.from, "\" is neither \"pretrained\" nor an expert of the model pool");
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
  FUSION_ENSURE(!trainable.empty(), "method.trainable: \"", o.trainable,
                "\" selects no parameter of this model");
  ctx.log().info("finetune: " + o.task + " from " + o.from + ", " + std::to_string(trainable_count) +
                 " trainable parameters (" + o.trainable + "), " + std::to_string(o.num_steps) +
                 " steps of " + std::to_string(o.batch_size));

  Adam adam(trainable, o.weight_decay);
  auto stream = task.train_stream(o.batch_size, ctx.seed());
  TrainLog log({"step", "loss", "accuracy", "lr", "seconds"});
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
      log.add({static_cast<double>(step), window_loss / window, window_acc / window, lr, secs});
      progress->set_postfix("loss=" + short_number(window_loss / window) + " acc=" +
                            short_number(window_acc / window) + " lr=" + short_number(lr));
      window_loss = window_acc = 0.0;
      window = 0;
    }
    progress->advance();
  }
  progress->finish();
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!ctx.run_dir().empty()) log.save(ctx.run_dir() / "train_log.csv");

  const size_t tail = std::max<size_t>(1, losses.size() / 10);
  const double first_loss = losses.front();
  const double last_mean =
      std::accumulate(losses.end() - static_cast<std::ptrdiff_t>(tail), losses.end(), 0.0) / tail;
  ctx.log().info("finetune: " + o.task + ": train loss " + short_number(first_loss) + " -> " +
                 short_number(last_mean) + " (mean of the last " + std::to_string(tail) + " steps) in " +
                 short_number(train_s) + " s");

  Result result;
  result.info = {{"trainable_params", trainable_count},
                 {"task", o.task},
                 {"from", o.from},
                 {"train_loss_first", first_loss},
                 {"train_loss_last", last_mean},
                 {"train_seconds", train_s},
                 {"num_steps", o.num_steps},
                 {"batch_size", o.batch_size}};
  ModelPtr tuned = start->with_parameters(params.detach());
  result.add(o.label.empty() ? o.task : o.label, tuned,
             {{"task", o.task}, {"from", o.from}, {"num_steps", o.num_steps}, {"lr", o.lr}});
  return result;
}

}  // namespace fusion::finetune
