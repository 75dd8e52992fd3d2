#include "finetune.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>

#include "fusion/distributed.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/task_pool.hpp"
#include "training.hpp"

namespace fs = std::filesystem;

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
  o("head_file", &O::head_file,
    "GPT-2: also write the trained score.weight to this safetensors file before the host evaluates (name it "
    "in taskpool.heads.<task>)");
  o("label_names", &O::label_names, "GPT-2: class names by index, saved as the expert's id2label (empty: LABEL_i)");
  o("pad_token_id", &O::pad_token_id,
    "GPT-2: padding id of the task's batches; the head reads the token before a row's first one").min(0);
  o("head_init_std", &O::head_init_std, "GPT-2: std of the fresh score head's normal initialisation").min(0.0);
  o("head_only_steps", &O::head_only_steps,
    "GPT-2: the first steps train the fresh head alone, the body frozen (a linear probe), then the body joins "
    "with its own cosine schedule")
      .min(0);
  o("head_lr", &O::head_lr, "GPT-2: Adam's peak learning rate of the head (0: lr)").min(0.0);
}

ComponentInfo Finetune::info() {
  return {"finetune",
          "Fine-tunes a model on one task's train split (Adam, cosine schedule): a CLIP vision tower through "
          "the task's frozen head, a GPT-2 body with a fresh score head (GPT2ForSequenceClassification); "
          "returns the fine-tuned model",
          "https://github.com/tanganke/fusion_bench (method clip_finetune)",
          {},
          Requirements().task_pool()};
}

namespace {

// The GPT2ForSequenceClassification model of a fine-tuned body and its head: config.json gains
// id2label / label2id (label_names or LABEL_i) and pad_token_id; head_file receives the head.
ModelPtr classifier_model(const gpt2::Gpt2Model& body, const StateDict& params, const at::Tensor& score,
                          const FinetuneOptions& o, int64_t classes, const Communicator& comm) {
  nlohmann::json config = body.config();
  nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
  for (int64_t i = 0; i < classes; ++i) {
    const std::string name = o.label_names.empty() ? "LABEL_" + std::to_string(i) : o.label_names[static_cast<size_t>(i)];
    id2label[std::to_string(i)] = name;
    label2id[name] = i;
  }
  config["id2label"] = id2label;
  config["label2id"] = label2id;
  config["num_labels"] = classes;
  config["pad_token_id"] = o.pad_token_id;
  config["architectures"] = {gpt2::hf_class_name(gpt2::Gpt2Head::kSequenceClassification)};
  StateDict p = params;
  p.set(body.keys().score, score);
  if (!o.head_file.empty()) {
    StateDict head;
    head.set(body.keys().score, score.to(at::kCPU, at::kFloat).contiguous());
    const fs::path file(o.head_file);
    if (comm.is_main()) {  // several processes: rank 0 writes; the others wait until it has
      if (!file.parent_path().empty()) fs::create_directories(file.parent_path());
      save_safetensors(file, head, {{"producer", "fusion finetune"}, {"task", o.task}});
    }
    if (comm.distributed()) comm.barrier();
  }
  return std::make_shared<gpt2::Gpt2Model>(std::move(p), config, gpt2::Gpt2Head::kSequenceClassification,
                                           "finetune");
}

}  // namespace

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

  // GPT-2: a fresh sequence-classification head, trained with the body.
  const auto* gpt2_body = dynamic_cast<const gpt2::Gpt2Model*>(start.get());
  at::Tensor score;
  if (gpt2_body) {
    FUSION_ENSURE(gpt2_body->head() == gpt2::Gpt2Head::kNone, "finetune: the starting GPT-2 model has a ",
                  gpt2::hf_class_name(gpt2_body->head()), " head; expected the body (modelpool.name = \"gpt2\")");
    FUSION_ENSURE(o.label_names.empty() || static_cast<int64_t>(o.label_names.size()) == task.num_classes(),
                  "method.", option_name(&FinetuneOptions::label_names), ": ", o.label_names.size(),
                  " names but task \"", o.task, "\" has ", task.num_classes(), " classes");
    const at::Tensor& wte = start->parameters().at(gpt2_body->keys().wte);
    at::Generator gen = at::detail::createCPUGenerator(ctx.seed() + 17);
    score = at::empty({task.num_classes(), gpt2_body->gpt2_config().n_embd}, at::kFloat)
                .normal_(0.0, o.head_init_std, gen)
                .to(wte.options())
                .set_requires_grad(true);
    trainable_count += score.numel();
  } else {
    FUSION_ENSURE(o.head_file.empty() && o.label_names.empty() && o.head_only_steps == 0, "method.",
                  !o.head_file.empty()     ? option_name(&FinetuneOptions::head_file)
                  : !o.label_names.empty() ? option_name(&FinetuneOptions::label_names)
                                           : option_name(&FinetuneOptions::head_only_steps),
                  ": only for GPT-2 models (this model is a '", start->architecture(), "')");
  }
  FUSION_ENSURE(o.head_only_steps < o.num_steps, "method.", option_name(&FinetuneOptions::head_only_steps), " = ",
                o.head_only_steps, " must be below method.", option_name(&FinetuneOptions::num_steps), " (",
                o.num_steps, ")");
  // `probe`: the body runs without gradients (the head-only steps of a linear probe).
  auto logits_of = [&](const at::Tensor& inputs, bool probe) -> at::Tensor {
    if (!gpt2_body) return task.logits(*start, params, inputs);
    at::Tensor hidden;
    {
      at::AutoGradMode grad_mode(!probe && at::GradMode::is_enabled());
      hidden = gpt2_body->hidden_states(params, inputs);
    }
    at::Tensor pooled = gpt2::pool_last_token(hidden, inputs, o.pad_token_id);
    return at::matmul(pooled, score.t());
  };
  ctx.log().info("finetune: " + o.task + " from " + o.from + ", " + std::to_string(trainable_count) +
                 " trainable parameters (" + o.trainable + "), " + std::to_string(o.num_steps) +
                 " steps of " + std::to_string(o.batch_size));

  // The body's and the head's optimizers: the body's starts after the head-only steps, each with
  // its own cosine schedule (the head's over the head-only steps, then restarted with the body's).
  Adam adam(trainable, o.weight_decay);
  std::optional<Adam> head_adam;
  if (score.defined()) head_adam.emplace(std::vector<at::Tensor>{score}, o.weight_decay);
  const double head_lr = o.head_lr > 0.0 ? o.head_lr : o.lr;
  const int64_t K = o.head_only_steps;
  // Several processes (data parallel): every rank draws the same global batch from the same stream
  // (the one-process order), takes its rows (rows_of_rank), and the summed gradients of
  // Σ_rows loss / batch are all-reduced in buckets; every rank then takes the same Adam step.
  const Communicator& comm = communicator(ctx);
  std::vector<at::Tensor> all_trainable = trainable, head_only;
  if (score.defined()) {
    all_trainable.push_back(score);
    head_only.push_back(score);
  }
  const auto buckets = gradient_buckets(all_trainable, kGradientBucketBytes);
  const auto head_buckets = gradient_buckets(head_only, kGradientBucketBytes);
  if (comm.distributed())
    ctx.log().info("finetune: data parallel over " + std::to_string(comm.world_size()) + " ranks, gradients summed in " +
                   std::to_string(buckets.size()) + " bucket(s) of at most " +
                   std::to_string(kGradientBucketBytes >> 20) + " MiB");
  auto stream = task.train_stream(o.batch_size, ctx.seed());
  TrainLog log(ctx.run_dir().empty() || !comm.is_main() ? std::filesystem::path() : ctx.run_dir() / "train_log.csv",
               {"step", "loss", "accuracy", option_name(&FinetuneOptions::lr), "seconds"});
  auto progress = ctx.progress("finetune " + o.task, o.num_steps);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> losses;
  losses.reserve(static_cast<size_t>(o.num_steps));
  double window_loss = 0.0, window_acc = 0.0;
  int64_t window = 0;
  for (int64_t step = 1; step <= o.num_steps; ++step) {
    Batch batch = stream->next();
    const bool probe = step <= K;
    // (Each rate computed by cosine_lr itself, so runs without head-only steps keep their bits.)
    const int64_t phase_step = probe ? step : step - K, phase_steps = probe ? K : o.num_steps - K;
    const double lr = probe ? 0.0 : cosine_lr(o.lr, phase_step, phase_steps, o.min_lr_factor);
    double loss_v = 0.0, acc = 0.0;
    if (!comm.distributed()) {
      at::Tensor logits = logits_of(batch.inputs, probe);
      at::Tensor loss = at::cross_entropy_loss(logits, batch.labels);
      loss_v = loss.item<double>();
      FUSION_ENSURE(std::isfinite(loss_v), "finetune: the loss is not finite at step ", step,
                    " (lower method.lr?)");
      adam.zero_grad();
      if (head_adam) head_adam->zero_grad();
      loss.backward();
      acc = logits.detach().argmax(1).eq(batch.labels).to(at::kDouble).mean().item<double>();
    } else {
      adam.zero_grad();
      if (head_adam) head_adam->zero_grad();
      const int64_t global = batch.labels.size(0);
      const RowRange mine = rows_of_rank(global, comm.rank(), comm.world_size());
      // This rank's Σ loss / global and Σ correct / global, on the run's device (NCCL takes no CPU tensor).
      at::Tensor stats = at::zeros({2}, at::TensorOptions().dtype(at::kDouble).device(ctx.device()));
      if (mine.size() > 0) {
        at::Tensor labels = batch.labels.slice(0, mine.begin, mine.end);
        at::Tensor logits = logits_of(batch.inputs.slice(0, mine.begin, mine.end), probe);
        at::Tensor loss = at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum) / static_cast<double>(global);
        loss.backward();
        stats[0] = loss.item<double>();
        stats[1] = logits.detach().argmax(1).eq(labels).sum().item<double>() / static_cast<double>(global);
      }
      comm.all_reduce_sum(stats);
      loss_v = stats[0].item<double>();
      acc = stats[1].item<double>();
      FUSION_ENSURE(std::isfinite(loss_v), "finetune: the loss is not finite at step ", step,
                    " (lower method.lr?)");
      all_reduce_gradients(comm, probe ? head_only : all_trainable, probe ? head_buckets : buckets);
    }
    if (!probe) adam.step(lr);
    if (head_adam) head_adam->step(cosine_lr(head_lr, phase_step, phase_steps, o.min_lr_factor));
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
  if (gpt2_body) tuned = classifier_model(*gpt2_body, params.detach(), score.detach(), o, task.num_classes(), comm);
  result.add(o.label.empty() ? o.task : o.label, tuned, option_values(o, &O::task, &O::from, &O::num_steps, &O::lr));
  return result;
}

}  // namespace fusion::finetune
