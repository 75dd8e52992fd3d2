#include "lm_pretrain.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Reduction.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>

#include "fusion/distributed.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/config.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/tokenizer.hpp"
#include "training.hpp"

namespace fs = std::filesystem;

namespace fusion::finetune {

void LmPretrainOptions::bind(Options<LmPretrainOptions>& o) {
  using O = LmPretrainOptions;
  o("init", &O::init, "\"random\" (Hugging Face's init from model_config) or \"pretrained\" (the pool's)")
      .one_of({"random", "pretrained"});
  o("model_config", &O::model_config, "GPT-2 config.json (or its folder) for init = \"random\"");
  o("tokenizer", &O::tokenizer, "folder with GPT-2's vocab.json and merges.txt").required();
  o("train_files", &O::train_files, "JSON-lines corpus files, one {\"text\": ...} document per line").required();
  o("block_size", &O::block_size, "tokens per training sequence (at most the model's n_positions)").min(2);
  o("eval_blocks", &O::eval_blocks, "blocks held out to measure the loss before and after training").min(0);
  o("num_steps", &O::num_steps, "optimizer steps, one batch of blocks each").min(1);
  o("batch_size", &O::batch_size, "blocks per step").min(1);
  o("lr", &O::lr, "Adam's peak learning rate (warm-up, then cosine annealing)").min(0.0);
  o("warmup_steps", &O::warmup_steps, "steps of linear learning-rate warm-up").min(0);
  o("min_lr_factor", &O::min_lr_factor, "last step's learning rate as a fraction of lr").range(0.0, 1.0);
  o("weight_decay", &O::weight_decay, "Adam's L2 weight decay").min(0.0);
  o("log_interval", &O::log_interval, "a train_log.csv row every this many steps").min(1);
  o("label", &O::label, "label of the resulting model (its folder under models/)");
  o("sampled_softmax", &O::sampled_softmax,
    "0: full softmax; N: sampled softmax over N candidates per step drawn from the corpus's unigram^0.75, "
    "corrected by -log expected count (Jean et al. 2015); held-out loss always full")
      .min(0);
}

ComponentInfo LmPretrain::info() {
  return {"lm_pretrain",
          "Trains GPT-2 as a causal language model (GPT2LMHeadModel, tied head) on JSON-lines text, from "
          "random init or the pretrained model; returns the model",
          "https://github.com/huggingface/transformers (examples/pytorch/language-modeling/run_clm.py)",
          {},
          Requirements()};
}

LmPretrain::LmPretrain(LmPretrainOptions options) : options_(std::move(options)) {
  using O = LmPretrainOptions;
  FUSION_ENSURE(options_.init != "random" || !options_.model_config.empty(), "method.",
                option_name(&O::model_config), ": required with method.", option_name(&O::init),
                " = \"random\" (a GPT-2 config.json)");
}

at::Tensor corpus_blocks(const std::vector<std::string>& files, const gpt2::Gpt2Tokenizer& tokenizer,
                         int64_t block_size, int64_t* documents) {
  FUSION_ENSURE(block_size >= 2, "lm_pretrain: block_size must be at least 2, got ", block_size);
  std::vector<int64_t> ids;
  int64_t docs = 0;
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    FUSION_ENSURE(in, "method.train_files: cannot read '", file, "'");
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        FUSION_FAIL("method.train_files: ", file, ":", line_no, ": not JSON (", e.what(), ")");
      }
      FUSION_ENSURE(j.is_object() && j.contains("text") && j["text"].is_string(), "method.train_files: ", file, ":",
                    line_no, ": expected an object with a string \"text\"");
      std::vector<int64_t> t;
      try {
        t = tokenizer.encode(j["text"].get<std::string>(), /*special_tokens_in_text=*/false);
      } catch (const Error& e) {
        FUSION_FAIL("method.train_files: ", file, ":", line_no, ": ", e.what());
      }
      ids.insert(ids.end(), t.begin(), t.end());
      ids.push_back(tokenizer.eos_id());
      ++docs;
    }
  }
  const auto n = static_cast<int64_t>(ids.size()) / block_size;
  FUSION_ENSURE(n > 0, "method.train_files: the corpus has ", ids.size(), " tokens, fewer than one block of ",
                block_size);
  if (documents) *documents = docs;
  return at::tensor(ids, at::kLong).slice(0, 0, n * block_size).view({n, block_size}).clone();
}

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t V = logits.size(-1);
  at::Tensor pred = logits.slice(1, 0, logits.size(1) - 1).reshape({-1, V});
  at::Tensor target = ids.slice(1, 1).reshape({-1});
  return at::cross_entropy_loss(pred.to(at::kFloat), target);
}

double causal_lm_step(const gpt2::Gpt2Model& model, const StateDict& params, const at::Tensor& ids, bool backward,
                      int64_t chunk_tokens) {
  FUSION_ENSURE(model.head() == gpt2::Gpt2Head::kLanguageModel && model.tied_lm_head(),
                "causal_lm_step: the model must be a GPT2LMHeadModel with its head tied to wte");
  FUSION_ENSURE(chunk_tokens > 0, "causal_lm_step: chunk_tokens must be positive, got ", chunk_tokens);
  const at::Tensor& head = params.at(model.keys().wte);
  at::Tensor hidden = model.hidden_states(params, ids);  // [B, T, d]
  const int64_t T = ids.size(1), d = hidden.size(-1);
  at::Tensor h = hidden.slice(1, 0, T - 1).reshape({-1, d});
  at::Tensor target = ids.slice(1, 1).reshape({-1});
  // With gradients, the head's part runs on a detached copy of the hidden states; its gradient is
  // passed back through the transformer once, at the end.
  at::Tensor hd = backward ? h.detach().requires_grad_(true) : h;
  const int64_t n = h.size(0);
  double total = 0.0;
  for (int64_t i = 0; i < n; i += chunk_tokens) {
    const int64_t j = std::min(n, i + chunk_tokens);
    at::Tensor logits = at::matmul(hd.slice(0, i, j), head.t()).to(at::kFloat);
    at::Tensor loss = at::cross_entropy_loss(logits, target.slice(0, i, j), {}, at::Reduction::Sum) /
                      static_cast<double>(n);
    if (backward) loss.backward();
    total += loss.item<double>();
  }
  if (backward) h.backward(hd.grad());
  return total;
}

at::Tensor unigram_proposal(const at::Tensor& blocks, int64_t vocab_size, double power) {
  at::Tensor counts = at::bincount(blocks.reshape({-1}), {}, vocab_size).to(at::kDouble);
  at::Tensor q = counts.pow(power);
  return q / q.sum();
}

at::Tensor sampled_lm_loss(const gpt2::Gpt2Model& model, const StateDict& params, const at::Tensor& ids,
                           const at::Tensor& candidates, const at::Tensor& log_expected) {
  FUSION_ENSURE(model.head() == gpt2::Gpt2Head::kLanguageModel && model.tied_lm_head(),
                "sampled_lm_loss: the model must be a GPT2LMHeadModel with its head tied to wte");
  const at::Tensor& w = params.at(model.keys().wte);
  at::Tensor hidden = model.hidden_states(params, ids);
  const int64_t T = ids.size(1), d = hidden.size(-1);
  at::Tensor h = hidden.slice(1, 0, T - 1).reshape({-1, d});
  at::Tensor target = ids.slice(1, 1).reshape({-1});
  at::Tensor lq = log_expected.to(h.device(), h.scalar_type());
  at::Tensor true_logit = (h * w.index_select(0, target)).sum(-1) - lq.index_select(0, target);   // [N]
  at::Tensor cand_logits = at::matmul(h, w.index_select(0, candidates).t()) - lq.index_select(0, candidates);  // [N, S]
  at::Tensor hit = candidates.unsqueeze(0).eq(target.unsqueeze(1));
  cand_logits = cand_logits.masked_fill(hit, -std::numeric_limits<float>::infinity());
  at::Tensor logits = at::cat({true_logit.unsqueeze(1), cand_logits}, 1).to(at::kFloat);
  return at::cross_entropy_loss(logits, at::zeros({logits.size(0)}, target.options()));
}

Result LmPretrain::run(ModelPool& models, TaskPool* /*tasks*/, const Context& ctx) {
  using O = LmPretrainOptions;
  const O& o = options_;
  FUSION_ENSURE(o.warmup_steps < o.num_steps, "method.", option_name(&O::warmup_steps), ": ", o.warmup_steps,
                " must be below method.", option_name(&O::num_steps), " (", o.num_steps, ")");

  // The model: GPT2LMHeadModel with its head tied to wte.
  nlohmann::json config;
  StateDict init;
  if (o.init == "random") {
    config = gpt2::read_config_json(o.model_config);
    const gpt2::Gpt2Config cfg = gpt2::Gpt2Config::from_json(config, o.model_config);
    init = gpt2::Gpt2Model::random_parameters(cfg, gpt2::Gpt2Head::kLanguageModel, ctx.seed());
  } else {
    FUSION_ENSURE(models.has_pretrained(), "method.", option_name(&O::init),
                  " = \"pretrained\" needs modelpool.pretrained");
    ConstModelPtr pre = models.pretrained();
    FUSION_ENSURE(dynamic_cast<const gpt2::Gpt2Model*>(pre.get()) != nullptr,
                  "lm_pretrain: the pretrained model is a '", pre->architecture(),
                  "', not GPT-2 (use modelpool.name = \"gpt2\")");
    config = pre->config();
    for (const auto& [key, t] : pre->parameters())
      if (key != "lm_head.weight" && key != "score.weight") init.set(key, t);
  }
  auto model = std::make_shared<gpt2::Gpt2Model>(init.to(ctx.device(), ctx.dtype()), config,
                                                 gpt2::Gpt2Head::kLanguageModel,
                                                 o.init == "random" ? o.model_config : "modelpool.pretrained");
  const gpt2::Gpt2Config& cfg = model->gpt2_config();
  FUSION_ENSURE(o.block_size <= cfg.n_positions, "method.", option_name(&O::block_size), " = ", o.block_size,
                " but the model takes at most ", cfg.n_positions, " tokens (n_positions)");

  // The corpus, shuffled into held-out and training blocks.
  const auto t_tok = std::chrono::steady_clock::now();
  gpt2::Gpt2Tokenizer tokenizer = [&] {
    try {
      return gpt2::Gpt2Tokenizer::from_folder(o.tokenizer);
    } catch (const Error& e) {
      FUSION_FAIL("method.", option_name(&O::tokenizer), ": ", e.what());
    }
  }();
  FUSION_ENSURE(static_cast<int64_t>(tokenizer.vocab_size()) <= cfg.vocab_size, "method.", option_name(&O::tokenizer), ": ",
                tokenizer.vocab_size(), " tokens but the model's vocab_size is ", cfg.vocab_size);
  int64_t documents = 0;
  at::Tensor blocks = corpus_blocks(o.train_files, tokenizer, o.block_size, &documents);
  const double tokenize_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_tok).count();
  at::Generator gen = at::detail::createCPUGenerator(ctx.seed() + 11);
  blocks = blocks.index_select(0, at::randperm(blocks.size(0), gen, at::kLong));
  const int64_t n_eval = std::min(o.eval_blocks, blocks.size(0) - 1);
  at::Tensor eval = blocks.slice(0, 0, n_eval).to(ctx.device());
  at::Tensor train = blocks.slice(0, n_eval);
  const int64_t n_train = train.size(0);
  at::Tensor proposal, log_expected;
  if (o.sampled_softmax > 0) {
    proposal = unigram_proposal(train, cfg.vocab_size);
    log_expected = (proposal * static_cast<double>(o.sampled_softmax)).log().to(ctx.device(), ctx.dtype());
  }
  ctx.log().info("lm_pretrain: " + std::to_string(documents) + " documents, " + std::to_string(blocks.numel()) +
                 " tokens in " + std::to_string(blocks.size(0)) + " blocks of " + std::to_string(o.block_size) +
                 " (" + std::to_string(n_eval) + " held out; tokenized in " + short_number(tokenize_s) + " s)");

  StateDict params;
  std::vector<at::Tensor> trainable;
  int64_t count = 0;
  for (const auto& [key, t] : model->parameters()) {
    at::Tensor p = t.detach().clone().set_requires_grad(t.is_floating_point());
    if (t.is_floating_point()) {
      trainable.push_back(p);
      count += p.numel();
    }
    params.set(key, p);
  }
  // Several processes: held-out chunk c is scored on rank c mod world and the sums added over the
  // ranks; training is data parallel as in finetune (each rank's rows of the global batch, the
  // gradients of the global mean loss summed over the ranks in buckets, the same Adam step).
  const Communicator& comm = communicator(ctx);
  auto eval_loss = [&]() -> double {
    if (n_eval == 0) return std::nan("");
    at::NoGradGuard no_grad;
    double sum = 0.0;
    const int64_t chunks = (n_eval + o.batch_size - 1) / o.batch_size;
    for (int64_t c : items_of_rank(chunks, comm.rank(), comm.world_size())) {
      const int64_t i = c * o.batch_size;
      at::Tensor x = eval.slice(0, i, std::min(n_eval, i + o.batch_size));
      sum += causal_lm_step(*model, params, x, false) * static_cast<double>(x.size(0));
    }
    if (comm.distributed()) {
      at::Tensor t = at::full({1}, sum, at::TensorOptions().dtype(at::kDouble).device(ctx.device()));
      comm.all_reduce_sum(t);
      sum = t.item<double>();
    }
    return sum / static_cast<double>(n_eval);
  };
  const double eval_before = eval_loss();
  ctx.log().info("lm_pretrain: " + std::to_string(count) + " parameters, init " + o.init + ", " +
                 std::to_string(o.num_steps) + " steps of " + std::to_string(o.batch_size) + " blocks; held-out loss " +
                 short_number(eval_before));

  Adam adam(trainable, o.weight_decay);
  const auto buckets = gradient_buckets(trainable, kGradientBucketBytes);
  if (comm.distributed())
    ctx.log().info("lm_pretrain: data parallel over " + std::to_string(comm.world_size()) +
                   " ranks, gradients summed in " + std::to_string(buckets.size()) + " bucket(s) of at most " +
                   std::to_string(kGradientBucketBytes >> 20) + " MiB");
  TrainLog log(ctx.run_dir().empty() || !comm.is_main() ? fs::path() : ctx.run_dir() / "train_log.csv",
               {"step", "loss", option_name(&O::lr), "seconds"});
  auto progress = ctx.progress("lm_pretrain", o.num_steps);
  const auto t0 = std::chrono::steady_clock::now();
  at::Tensor order = at::randperm(n_train, gen, at::kLong);
  int64_t pos = 0, epoch = 0;
  double first_loss = 0.0, window_loss = 0.0, last_window = 0.0;
  int64_t window = 0;
  for (int64_t step = 1; step <= o.num_steps; ++step) {
    std::vector<at::Tensor> rows;
    int64_t need = o.batch_size;
    while (need > 0) {  // epochs follow each other without a break
      if (pos == n_train) {
        order = at::randperm(n_train, gen, at::kLong);
        pos = 0;
        ++epoch;
      }
      const int64_t take = std::min(need, n_train - pos);
      rows.push_back(order.slice(0, pos, pos + take));
      pos += take;
      need -= take;
    }
    at::Tensor x = train.index_select(0, at::cat(rows)).to(ctx.device());
    const double lr = warmup_cosine_lr(o.lr, step, o.warmup_steps, o.num_steps, o.min_lr_factor);
    adam.zero_grad();
    double lv = 0.0;
    if (!comm.distributed()) {
      if (o.sampled_softmax > 0) {
        at::Tensor candidates = at::multinomial(proposal, o.sampled_softmax, /*replacement=*/true, gen).to(ctx.device());
        at::Tensor loss = sampled_lm_loss(*model, params, x, candidates, log_expected);
        lv = loss.item<double>();
        FUSION_ENSURE(std::isfinite(lv), "lm_pretrain: the loss is not finite at step ", step, " (lower method.lr?)");
        loss.backward();
      } else {
        lv = causal_lm_step(*model, params, x, true);
      }
    } else {
      // This rank's rows; every row has block_size - 1 targets, so the global mean loss is
      // Σ_ranks (rows here / rows) · the mean here, and so is its gradient (scaled before the sum).
      // The candidates are drawn on every rank (the generator's draws stay those of one process).
      at::Tensor candidates;
      if (o.sampled_softmax > 0)
        candidates = at::multinomial(proposal, o.sampled_softmax, /*replacement=*/true, gen).to(ctx.device());
      const int64_t global = x.size(0);
      const RowRange mine = rows_of_rank(global, comm.rank(), comm.world_size());
      const double share = static_cast<double>(mine.size()) / static_cast<double>(global);
      at::Tensor sum = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(ctx.device()));
      if (mine.size() > 0) {
        at::Tensor xs = x.slice(0, mine.begin, mine.end);
        double here = 0.0;
        if (o.sampled_softmax > 0) {
          at::Tensor loss = sampled_lm_loss(*model, params, xs, candidates, log_expected);
          loss.backward();
          here = loss.item<double>();
        } else {
          here = causal_lm_step(*model, params, xs, true);
        }
        sum[0] = here * share;
      }
      comm.all_reduce_sum(sum);
      lv = sum.item<double>();
      FUSION_ENSURE(std::isfinite(lv), "lm_pretrain: the loss is not finite at step ", step, " (lower method.lr?)");
      all_reduce_gradients(comm, trainable, buckets, share);
    }
    FUSION_ENSURE(std::isfinite(lv), "lm_pretrain: the loss is not finite at step ", step, " (lower method.lr?)");
    adam.step(lr);
    if (step == 1) first_loss = lv;
    window_loss += lv;
    ++window;
    if (step % o.log_interval == 0 || step == o.num_steps) {
      last_window = window_loss / window;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log.add({step, last_window, lr, secs});
      progress->set_postfix("loss=" + short_number(last_window) + " lr=" + short_number(lr));
      window_loss = 0.0;
      window = 0;
    }
    progress->advance();
  }
  progress->finish();
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double eval_after = eval_loss();
  ctx.log().info("lm_pretrain: train loss " + short_number(first_loss) + " -> " + short_number(last_window) +
                 "; held-out loss " + short_number(eval_before) + " -> " + short_number(eval_after) +
                 " (perplexity " + short_number(std::exp(eval_before)) + " -> " + short_number(std::exp(eval_after)) +
                 ") in " + short_number(train_s) + " s");

  Result result;
  result.info = option_values(o, &O::init, &O::num_steps, &O::batch_size, &O::block_size, &O::sampled_softmax);
  result.info.update(nlohmann::json{{"trainable_params", count},
                                    {"documents", documents},
                                    {"train_blocks", n_train},
                                    {"epochs", static_cast<double>(o.num_steps * o.batch_size) / n_train},
                                    {"train_loss_first", first_loss},
                                    {"train_loss_last", last_window},
                                    {"heldout_loss_before", eval_before},
                                    {"heldout_loss_after", eval_after},
                                    {"heldout_perplexity_after", std::exp(eval_after)},
                                    {"tokenize_seconds", tokenize_s},
                                    {"train_seconds", train_s}});
  result.add(o.label, model->with_parameters(params.detach()), option_values(o, &O::init, &O::num_steps));
  return result;
}

}  // namespace fusion::finetune
