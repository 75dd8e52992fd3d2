#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/options.hpp"

#include "fusion/state_dict.hpp"

namespace fusion::gpt2 {
class Gpt2Tokenizer;
class Gpt2Model;
}

namespace fusion::finetune {

/// The options of `lm_pretrain`.
struct LmPretrainOptions {
  /// "random": a GPT-2 built from `model_config` with Hugging Face's random initialisation (seeded by
  /// the run's seed); "pretrained": the model pool's pretrained model (its body, the LM head tied to
  /// wte). Default "random".
  std::string init = "random";
  /// A GPT-2 config.json, or a folder holding one; required with init = "random". Default "".
  std::string model_config;
  /// Folder with GPT-2's vocab.json and merges.txt (required). Default "".
  std::string tokenizer;
  /// The corpus: JSON-lines files, one document per line as {"text": "..."} (required). Default none.
  std::vector<std::string> train_files;
  /// Tokens per training sequence (≤ the model's n_positions). Default 64.
  int64_t block_size = 64;
  /// Blocks held out from training, on which the loss is measured before and after. Default 64.
  int64_t eval_blocks = 64;
  /// Optimizer steps, one batch of blocks each. Default 1000.
  int64_t num_steps = 1000;
  /// Blocks per step. Default 16.
  int64_t batch_size = 16;
  /// Adam's peak learning rate: linear warm-up over warmup_steps, then cosine annealing to
  /// min_lr_factor·lr. Default 1e-3.
  double lr = 1e-3;
  /// Steps of linear warm-up. Default 0.
  int64_t warmup_steps = 0;
  /// The last step's learning rate as a fraction of lr. Default 0.
  double min_lr_factor = 0.0;
  /// Adam's L2 weight decay. Default 0.
  double weight_decay = 0.0;
  /// A train_log.csv row every this many steps (and at the last). Default 10.
  int64_t log_interval = 10;
  /// Label of the resulting model (its folder under models/). Default "pretrained".
  std::string label = "pretrained";
  /// 0: the training loss is the full softmax over the vocabulary (GPT2LMHeadModel's). N > 0: a
  /// sampled softmax (Jean et al. 2015, "On Using Very Large Target Vocabulary for Neural Machine
  /// Translation"; TensorFlow's sampled_softmax_loss): each step draws N candidate tokens, shared by
  /// every position, from the corpus's unigram distribution raised to 0.75, and each position's
  /// loss is the softmax over its target and the candidates, every logit corrected by −log of the
  /// token's expected count (N·Q(token)), candidates equal to the target left out. Costs N instead
  /// of the vocabulary's size per position; the held-out loss is always the full softmax's. Default 0.
  int64_t sampled_softmax = 0;

  static void bind(Options<LmPretrainOptions>& o);
};

/// The corpus as training blocks: every document tokenized, each followed by <|endoftext|>, all
/// concatenated in file order and cut into rows of `block_size` tokens (the remainder dropped), as
/// Hugging Face's run_clm.py groups texts. [N, block_size] int64 on the CPU. Throws fusion::Error
/// naming the file and line for a line that is not a JSON object with a string "text", and when
/// the corpus gives no whole block.
at::Tensor corpus_blocks(const std::vector<std::string>& files, const gpt2::Gpt2Tokenizer& tokenizer,
                         int64_t block_size, int64_t* documents = nullptr);

/// The causal language-modelling loss of Hugging Face's GPT2LMHeadModel: the mean cross-entropy of
/// logits [B, T, V] at positions 0..T−2 against the ids at 1..T−1.
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& ids);

/// causal_lm_loss of `model` (a GPT2LMHeadModel with its head tied to wte) on `ids` [B, T] under
/// `params`, with the LM head applied `chunk_tokens` positions at a time, so the logits never
/// exist for the whole batch at once ([chunk_tokens, vocab] f32: 25.7 MB for 128 positions of
/// GPT-2's vocabulary, small enough for the allocator to reuse instead of mapping fresh pages every
/// step). With `backward`, also accumulates the loss's gradients into the params that require grad
/// (the same as causal_lm_loss(...).backward()). Returns the loss.
double causal_lm_step(const gpt2::Gpt2Model& model, const StateDict& params, const at::Tensor& ids, bool backward,
                      int64_t chunk_tokens = 128);

/// The proposal of the sampled softmax: the unigram frequencies of `blocks`' tokens raised to
/// `power` and normalised, [vocab_size] f64 (tokens that never occur get 0).
at::Tensor unigram_proposal(const at::Tensor& blocks, int64_t vocab_size, double power = 0.75);

/// The sampled-softmax loss (see LmPretrainOptions::sampled_softmax) of `model` (a GPT2LMHeadModel
/// with its head tied to wte) on `ids` [B, T]: for each position t < T − 1 with target y = ids[t + 1],
/// −log softmax([h·w_y − lq(y), h·w_c − lq(c) for c in candidates])[0], where lq = `log_expected`
/// ([vocab] log of each token's expected count among the candidates) and a candidate equal to y is
/// masked out; the mean over positions. Differentiable in params.
at::Tensor sampled_lm_loss(const gpt2::Gpt2Model& model, const StateDict& params, const at::Tensor& ids,
                           const at::Tensor& candidates, const at::Tensor& log_expected);

/// A short causal-language-model training of GPT-2 (GPT2LMHeadModel, LM head tied to wte), from
/// random initialisation or the pool's pretrained model, on a corpus of JSON-lines documents
/// (corpus_blocks). The blocks are shuffled with the run's seed; the first eval_blocks are held out
/// and the loss on them (and its perplexity) is reported before and after training. Adam, warm-up
/// then cosine schedule. Returns the model, labelled `label`, which the host saves through the model
/// pool (for `gpt2`: a GPT2LMHeadModel folder). Writes run_dir/train_log.csv (step, loss, lr,
/// seconds). Needs no task pool.
class LmPretrain : public Algorithm {
 public:
  using Options = LmPretrainOptions;
  /// Throws fusion::Error naming method.model_config when init = "random" has none.
  explicit LmPretrain(LmPretrainOptions options);
  static ComponentInfo info();

  Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) override;
  const LmPretrainOptions& options() const { return options_; }

 private:
  LmPretrainOptions options_;
};

}  // namespace fusion::finetune
