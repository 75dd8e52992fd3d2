#include "multitask_pretrain.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "fusion/clip/config.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/distributed.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/task_pool.hpp"
#include "training.hpp"

namespace fs = std::filesystem;

namespace fusion::finetune {

void MultitaskPretrainOptions::bind(Options<MultitaskPretrainOptions>& o) {
  using O = MultitaskPretrainOptions;
  o("init", &O::init, "\"random\" (Hugging Face's init from model_config) or \"pretrained\" (the pool's)")
      .one_of({"random", "pretrained"});
  o("model_config", &O::model_config, "CLIPVisionModel config.json (or its folder) for init = \"random\"");
  o("tasks", &O::tasks, "tasks to train on, one head each (empty: every task of the task pool)");
  o("projection_dim", &O::projection_dim, "width of each head's projection").min(1);
  o("logit_scale", &O::logit_scale, "the heads' fixed logit scale (multiplier)").min(1e-6);
  o("num_steps", &O::num_steps, "optimizer steps, one batch of every task each").min(1);
  o("batch_size", &O::batch_size, "images per task per step").min(1);
  o("lr", &O::lr, "Adam's peak learning rate (warm-up, then cosine annealing)").min(0.0);
  o("warmup_steps", &O::warmup_steps, "steps of linear learning-rate warm-up").min(0);
  o("min_lr_factor", &O::min_lr_factor, "last step's learning rate as a fraction of lr").range(0.0, 1.0);
  o("weight_decay", &O::weight_decay, "Adam's L2 weight decay").min(0.0);
  o("log_interval", &O::log_interval, "a train_log.csv row every this many steps").min(1);
  o("heads_dir", &O::heads_dir, "folder for the heads, <task>.safetensors each (\"\": run_dir/heads)");
  o("label", &O::label, "label of the resulting model (its folder under models/)");
}

ComponentInfo MultitaskPretrain::info() {
  return {"multitask_pretrain",
          "Trains a CLIP vision tower (from random init or the pretrained model) on several "
          "tasks at once, one trainable head each; returns the model and writes the heads",
          "examples/demo/README.md",
          {},
          Requirements().task_pool()};
}

MultitaskPretrain::MultitaskPretrain(MultitaskPretrainOptions options) : options_(std::move(options)) {
  using O = MultitaskPretrainOptions;
  FUSION_ENSURE(options_.init != "random" || !options_.model_config.empty(), "method.",
                option_name(&O::model_config), ": required with method.", option_name(&O::init),
                " = \"random\" (a CLIPVisionModel config.json)");
}

at::Tensor TrainableHead::forward(const at::Tensor& pooled) const {
  at::Tensor z = at::matmul(pooled, projection.t());
  z = z / z.norm(2, {-1}, true).clamp_min(1e-12);
  at::Tensor e = class_embeds / class_embeds.norm(2, {-1}, true).clamp_min(1e-12);
  return at::matmul(z, e.t()) * logit_scale;
}

void save_head_file(const fs::path& path, const TrainableHead& head) {
  at::NoGradGuard no_grad;
  at::Tensor e = head.class_embeds / head.class_embeds.norm(2, {-1}, true).clamp_min(1e-12);
  StateDict sd;
  sd.set("projection", head.projection.detach().to(at::kCPU, at::kFloat).contiguous());
  sd.set("text_embeds", e.detach().to(at::kCPU, at::kFloat).contiguous());
  sd.set("logit_scale", at::full({1}, head.logit_scale, at::kFloat));
  if (!path.parent_path().empty()) fs::create_directories(path.parent_path());
  save_safetensors(path, sd, {{"producer", "fusion multitask_pretrain"}});
}


Result MultitaskPretrain::run(ModelPool& models, TaskPool* tasks, const Context& ctx) {
  using O = MultitaskPretrainOptions;
  const O& o = options_;
  FUSION_ENSURE(o.warmup_steps < o.num_steps, "method.", option_name(&O::warmup_steps), ": ", o.warmup_steps,
                " must be below method.", option_name(&O::num_steps), " (", o.num_steps, ")");
  std::vector<std::string> names = o.tasks.empty() ? tasks->task_names() : o.tasks;  // a task pool: required
  FUSION_ENSURE(!names.empty(), "multitask_pretrain: the task pool has no tasks");
  const auto known = tasks->task_names();
  const std::string tasks_option = "method." + option_name(&O::tasks);
  std::vector<Task*> task_list;
  for (const auto& n : names) {
    FUSION_ENSURE(std::find(known.begin(), known.end(), n) != known.end(), tasks_option, ": \"", n,
                  "\" is not a task of the task pool");
    Task& t = tasks->task(n);
    FUSION_ENSURE(t.has_train_split(), tasks_option, ": task \"", n, "\" has no train split");
    task_list.push_back(&t);
  }

  // The model: random (Hugging Face's initialisation from config.json) or the pool's pretrained.
  ConstModelPtr model;
  if (o.init == "random") {
    nlohmann::json config = clip::read_config_json(o.model_config);
    clip::VisionConfig vcfg = clip::VisionConfig::from_json(config, o.model_config);
    StateDict p = clip::ClipVisionModel::random_parameters(vcfg, ctx.seed()).to(ctx.device(), ctx.dtype());
    model = std::make_shared<clip::ClipVisionModel>(std::move(p), vcfg);
  } else {
    FUSION_ENSURE(models.has_pretrained(), "method.", option_name(&O::init),
                  " = \"pretrained\" needs modelpool.pretrained");
    model = models.pretrained();
  }
  const auto opts = at::TensorOptions().device(ctx.device()).dtype(ctx.dtype());

  StateDict params;
  std::vector<at::Tensor> trainable;
  int64_t model_params = 0;
  for (const auto& [key, t] : model->parameters()) {
    if (t.is_floating_point()) {
      at::Tensor p = t.detach().clone().set_requires_grad(true);
      trainable.push_back(p);
      model_params += p.numel();
      params.set(key, p);
    } else {
      params.set(key, t);
    }
  }

  // One head per task, initialised as CLIP's projections (std hidden^-0.5) and unit class vectors.
  // Its width: the pooled output's, found by running one batch.
  std::vector<std::unique_ptr<BatchStream>> streams;
  for (size_t i = 0; i < task_list.size(); ++i)
    streams.push_back(task_list[i]->train_stream(o.batch_size, ctx.seed() + 1000 * (i + 1)));
  std::vector<Batch> first;
  for (auto& s : streams) first.push_back(s->next());
  int64_t hidden = 0;
  {
    at::NoGradGuard no_grad;
    hidden = model->forward(params, first[0].inputs.slice(0, 0, 1)).size(-1);
  }
  at::Generator gen = at::detail::createCPUGenerator(ctx.seed() + 7);
  std::vector<TrainableHead> heads;
  int64_t head_params = 0;
  for (Task* t : task_list) {
    TrainableHead h;
    h.projection = at::empty({o.projection_dim, hidden}, at::kFloat)
                       .normal_(0.0, std::pow(static_cast<double>(hidden), -0.5), gen)
                       .to(opts)
                       .set_requires_grad(true);
    h.class_embeds = at::empty({t->num_classes(), o.projection_dim}, at::kFloat)
                         .normal_(0.0, 1.0, gen)
                         .to(opts)
                         .set_requires_grad(true);
    h.logit_scale = o.logit_scale;
    trainable.push_back(h.projection);
    trainable.push_back(h.class_embeds);
    head_params += h.projection.numel() + h.class_embeds.numel();
    heads.push_back(std::move(h));
  }
  ctx.log().info("multitask_pretrain: " + std::to_string(task_list.size()) + " tasks, " +
                 std::to_string(model_params) + " model + " + std::to_string(head_params) +
                 " head parameters, init " + o.init + ", " + std::to_string(o.num_steps) + " steps of " +
                 std::to_string(o.batch_size) + " per task");

  Adam adam(trainable, o.weight_decay);
  // Several processes (data parallel): every rank draws each task's global batch from the same
  // stream (the one-process order) and takes its rows (rows_of_rank); the gradients of
  // Σ_tasks Σ_rows loss / (batch · tasks) are summed over the ranks in buckets, and every rank takes
  // the same Adam step.
  const Communicator& comm = communicator(ctx);
  const auto buckets = gradient_buckets(trainable, kGradientBucketBytes);
  if (comm.distributed())
    ctx.log().info("multitask_pretrain: data parallel over " + std::to_string(comm.world_size()) +
                   " ranks, gradients summed in " + std::to_string(buckets.size()) + " bucket(s) of at most " +
                   std::to_string(kGradientBucketBytes >> 20) + " MiB");
  std::vector<std::string> columns = {"step", "loss"};
  for (const auto& n : names) columns.push_back(n + ".loss");
  for (const auto& n : names) columns.push_back(n + ".accuracy");
  columns.insert(columns.end(), {option_name(&O::lr), "seconds"});
  TrainLog log(ctx.run_dir().empty() || !comm.is_main() ? fs::path() : ctx.run_dir() / "train_log.csv", columns);
  auto progress = ctx.progress("multitask_pretrain", o.num_steps);
  const auto t0 = std::chrono::steady_clock::now();
  const size_t T = task_list.size();
  std::vector<double> win_loss(T, 0.0), win_acc(T, 0.0), last_loss(T, 0.0), last_acc(T, 0.0);
  double first_loss = 0.0;
  int64_t window = 0;
  for (int64_t step = 1; step <= o.num_steps; ++step) {
    const double lr = warmup_cosine_lr(o.lr, step, o.warmup_steps, o.num_steps, o.min_lr_factor);
    adam.zero_grad();
    double total = 0.0;
    if (!comm.distributed()) {
      for (size_t i = 0; i < T; ++i) {
        Batch b = step == 1 ? first[i] : streams[i]->next();
        at::Tensor logits = heads[i].forward(model->forward(params, b.inputs));
        at::Tensor loss = at::cross_entropy_loss(logits, b.labels);
        (loss / static_cast<double>(T)).backward();  // one task's activations alive at a time
        const double lv = loss.item<double>();
        FUSION_ENSURE(std::isfinite(lv), "multitask_pretrain: the loss of task \"", names[i],
                      "\" is not finite at step ", step, " (lower method.lr?)");
        total += lv / static_cast<double>(T);
        win_loss[i] += lv;
        win_acc[i] += logits.detach().argmax(1).eq(b.labels).to(at::kDouble).mean().item<double>();
      }
    } else {
      // Per task Σ loss / batch, then Σ correct / batch, on the run's device (NCCL takes no CPU tensor).
      at::Tensor stats =
          at::zeros({static_cast<int64_t>(2 * T)}, at::TensorOptions().dtype(at::kDouble).device(ctx.device()));
      for (size_t i = 0; i < T; ++i) {
        Batch b = step == 1 ? first[i] : streams[i]->next();
        const int64_t global = b.labels.size(0);
        const RowRange mine = rows_of_rank(global, comm.rank(), comm.world_size());
        if (mine.size() == 0) continue;
        at::Tensor labels = b.labels.slice(0, mine.begin, mine.end);
        at::Tensor logits = heads[i].forward(model->forward(params, b.inputs.slice(0, mine.begin, mine.end)));
        at::Tensor loss = at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum) / static_cast<double>(global);
        (loss / static_cast<double>(T)).backward();
        stats[static_cast<int64_t>(i)] = loss.item<double>();
        stats[static_cast<int64_t>(T + i)] =
            logits.detach().argmax(1).eq(labels).sum().item<double>() / static_cast<double>(global);
      }
      comm.all_reduce_sum(stats);
      for (size_t i = 0; i < T; ++i) {
        const double lv = stats[static_cast<int64_t>(i)].item<double>();
        FUSION_ENSURE(std::isfinite(lv), "multitask_pretrain: the loss of task \"", names[i],
                      "\" is not finite at step ", step, " (lower method.lr?)");
        total += lv / static_cast<double>(T);
        win_loss[i] += lv;
        win_acc[i] += stats[static_cast<int64_t>(T + i)].item<double>();
      }
      all_reduce_gradients(comm, trainable, buckets);
    }
    adam.step(lr);
    if (step == 1) first_loss = total;
    ++window;
    if (step % o.log_interval == 0 || step == o.num_steps) {
      std::vector<TrainLog::Cell> row = {step, 0.0};
      double mean = 0.0, mean_acc = 0.0;
      for (size_t i = 0; i < T; ++i) {
        last_loss[i] = win_loss[i] / window;
        last_acc[i] = win_acc[i] / window;
        mean += last_loss[i] / T;
        mean_acc += last_acc[i] / T;
        row.push_back(last_loss[i]);
      }
      row[1] = mean;
      for (size_t i = 0; i < T; ++i) row.push_back(last_acc[i]);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row.push_back(lr);
      row.push_back(secs);
      log.add(row);
      progress->set_postfix("loss=" + short_number(mean) + " acc=" + short_number(mean_acc) +
                            " lr=" + short_number(lr));
      std::fill(win_loss.begin(), win_loss.end(), 0.0);
      std::fill(win_acc.begin(), win_acc.end(), 0.0);
      window = 0;
    }
    progress->advance();
  }
  progress->finish();
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The heads, frozen from now on.
  const fs::path heads_dir = o.heads_dir.empty() ? ctx.run_dir() / "heads" : fs::path(o.heads_dir);
  nlohmann::json head_files = nlohmann::json::object();
  nlohmann::json final_train = nlohmann::json::object();
  for (size_t i = 0; i < T; ++i) {
    const fs::path file = heads_dir / (names[i] + ".safetensors");
    if (comm.is_main()) save_head_file(file, heads[i]);  // several processes: rank 0 writes
    head_files[names[i]] = file.string();
    final_train[names[i]] = {{"loss", last_loss[i]}, {"accuracy", last_acc[i]}};
    ctx.log().info("multitask_pretrain: " + names[i] + ": train loss " + short_number(last_loss[i]) +
                   ", train accuracy " + short_number(last_acc[i]) + "; head -> " + file.string());
  }

  if (comm.distributed()) comm.barrier();  // the heads are on disk for every rank once it returns
  Result result;
  result.info = option_values(o, &O::init, &O::num_steps);
  result.info.update(nlohmann::json{{"trainable_params", model_params + head_params},
                                    {"heads", head_files},
                                    {"train_loss_first", first_loss},
                                    {"final_train", final_train},
                                    {"train_seconds", train_s}});
  nlohmann::json metadata = option_values(o, &O::init);
  metadata[option_name(&O::tasks)] = names;
  result.add(o.label, model->with_parameters(params.detach()), std::move(metadata));
  return result;
}

}  // namespace fusion::finetune
