#pragma once
// GPT-2 (Hugging Face's GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification) as a functional
// fusion::Model, its parameter names, and loading and saving Hugging Face folders.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fusion/gpt2/config.hpp"
#include "fusion/gpt2/export.hpp"
#include "fusion/model.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::gpt2 {

/// What sits on top of the transformer, i.e. which Hugging Face class the model is.
enum class Gpt2Head {
  kNone,                    ///< GPT2Model: forward gives the last hidden state [B, T, d]. Architecture "gpt2".
  kLanguageModel,           ///< GPT2LMHeadModel: logits [B, T, vocab]. Architecture "gpt2_lm".
  kSequenceClassification,  ///< GPT2ForSequenceClassification: pooled logits [B, num_labels].
                            ///< Architecture "gpt2_sequence_classification".
};

/// The architecture name of a head ("gpt2", "gpt2_lm", "gpt2_sequence_classification").
FUSION_GPT2_API const char* architecture_name(Gpt2Head head);
/// Hugging Face's class name of a head ("GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification").
FUSION_GPT2_API const char* hf_class_name(Gpt2Head head);
/// The head config.json's `architectures[0]` names: GPT2ForSequenceClassification → kSequenceClassification,
/// GPT2LMHeadModel (and GPT2DoubleHeadsModel) → kLanguageModel, anything else or none → kNone.
FUSION_GPT2_API Gpt2Head head_of(const Gpt2Config& config);

/// The parameter names of one GPT2Block, built once so the forward does no string work.
struct BlockKeys {
  std::string ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b;
  std::string ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
};

/// Every key name the forward reads. Parameters always carry Hugging Face's names with the
/// `transformer.` prefix (GPT2LMHeadModel's and GPT2ForSequenceClassification's layout), whatever
/// the file had: `transformer.wte.weight`, `transformer.h.{i}.mlp.c_fc.weight`, ...; `lm_head.weight`
/// and `score.weight` sit outside it.
struct FUSION_GPT2_API Gpt2Keys {
  std::string wte, wpe, lnf_w, lnf_b, lm_head, score;
  std::vector<BlockKeys> blocks;
  explicit Gpt2Keys(int64_t n_layer);
};

/// An expected parameter: its key and shape.
using ExpectedTensor = std::pair<std::string, std::vector<int64_t>>;

/// The key prefix of the transformer body: "transformer.".
FUSION_GPT2_API const std::string& body_prefix();

/// `params` with every key in the canonical layout: a key of a bare GPT2Model file (`wte.weight`,
/// `h.0.ln_1.weight`, `ln_f.bias`, ...) gets the `transformer.` prefix, and the attention buffers old
/// checkpoints carry (`*.attn.bias`, `*.attn.masked_bias`, not parameters) are dropped. Other keys are
/// kept as they are. Tensors are shared, not copied.
FUSION_GPT2_API StateDict canonical_keys(const StateDict& params);

/// GPT-2 as a functional fusion::Model: Conv1D weights stored [in, out] (y = x·W + b), learned
/// positions (position_ids = 0..T−1 whatever the attention mask, as GPT2Model.forward makes them),
/// pre-LayerNorm blocks, the activation of config.json (gelu_new for GPT-2), attention scores
/// divided by √head_dim with the causal mask and the padding mask applied as transformers' eager
/// GPT2Attention does (scores outside the causal triangle set to the dtype's minimum, then
/// (1 − attention_mask)·minimum added), ln_f, then the head:
///  - kNone: the last hidden state [B, T, d];
///  - kLanguageModel: hidden · lm_headᵀ [B, T, vocab], lm_head = `lm_head.weight` when the weights
///    have it, else tied to `transformer.wte.weight` (then no `lm_head.weight` parameter exists);
///  - kSequenceClassification: the logits (hidden · scoreᵀ, no bias) at sequence_pool_index's token
///    of each row, [B, num_labels].
/// Every weight is read from `params` (keys and shapes as parameters()), so autograd flows into them
/// and a merging method or PWEMoE swaps tensors freely. Runs on the parameters' device and dtype.
/// Mixed precision ([run] dtype = "bfloat16"): when the blocks' Conv1D weights are bfloat16 or
/// float16, the Conv1D layers, the attention products and the heads run in that dtype (PyTorch
/// autocast's policy, as families/clip), while the residual stream, the layer norms, the masking and
/// the softmax run in float32 and every output is float32.
/// Immutable after construction; forward is thread-safe.
class FUSION_GPT2_API Gpt2Model : public Model {
 public:
  /// Canonicalises the keys (canonical_keys), keeps the body and the head's tensors (for kNone, any
  /// `lm_head.weight` / `score.weight` is dropped: the body of a head model), and checks every key and
  /// shape against `config`. Throws fusion::Error beginning with `origin` (the folder or file the
  /// weights came from) naming the first missing, misshapen or unexpected key. parameters() are kept in
  /// Hugging Face's module order. `config` is kept as config() (so saving keeps id2label etc.).
  Gpt2Model(StateDict params, const nlohmann::json& config, Gpt2Head head, const std::string& origin = "weights");
  ~Gpt2Model() override;  ///< defined in the library: its key function (one vtable, one typeinfo)

  /// forward(params, input_ids, {}): every token attends (Hugging Face called without attention_mask).
  at::Tensor forward(const StateDict& params, const at::Tensor& input_ids) const override;
  using Model::forward;
  /// The head's output for `input_ids` [B, T] (integer, on any device) with `attention_mask` [B, T]
  /// (1 = attend, 0 = padding; undefined = all ones). Throws fusion::Error for T > n_positions, an id
  /// outside the vocabulary, or a mask of another shape.
  at::Tensor forward(const StateDict& params, const at::Tensor& input_ids, const at::Tensor& attention_mask) const;
  /// The last hidden state [B, T, d] (after ln_f), whatever the head.
  at::Tensor hidden_states(const StateDict& params, const at::Tensor& input_ids,
                           const at::Tensor& attention_mask = {}) const;
  std::shared_ptr<Model> with_parameters(StateDict parameters) const override;

  const Gpt2Config& gpt2_config() const { return cfg_; }
  Gpt2Head head() const { return head_; }
  const Gpt2Keys& keys() const { return keys_; }
  /// True for kLanguageModel without `lm_head.weight` (the head is wte).
  bool tied_lm_head() const;

  /// Every parameter `config` implies for `head`, with its shape, in Hugging Face's order (the tied
  /// lm_head is not listed).
  static std::vector<ExpectedTensor> expected_parameters(const Gpt2Config& config, Gpt2Head head);
  /// Random weights (N(0, 0.02) as Hugging Face initialises, layer norms 1 and 0, biases 0) on the
  /// CPU in f32, for tests and benchmarks.
  static StateDict random_parameters(const Gpt2Config& config, Gpt2Head head, uint64_t seed);

 private:
  Gpt2Config cfg_;
  Gpt2Head head_;
  Gpt2Keys keys_;
};

/// The functional transformer on its own: the last hidden state [B, T, d] of `input_ids` [B, T] with
/// the weights of `params` (canonical keys) and the optional `attention_mask` [B, T].
FUSION_GPT2_API at::Tensor gpt2_hidden_states(const StateDict& params, const Gpt2Config& config,
                                              const Gpt2Keys& keys, const at::Tensor& input_ids,
                                              const at::Tensor& attention_mask = {});

/// The token each row's sequence classification reads, [B] int64 on input_ids' device, as
/// transformers 4.30–4.47 find it: (argmax(input_ids == pad_token_id) − 1) mod T, i.e. the token
/// before the first pad token, or the last token when the row holds none. Right padding: the last
/// real token; left padding: the last token (the first pad is at 0). A pad token inside the text
/// (FusionBench's pad is eos) ends the row there. Without a pad_token_id: the last token of every row
/// (transformers then refuses batches of more than one row; every row is taken as unpadded here).
/// (transformers before 4.30 counted the non-pad tokens − 1, wrong for left padding; 4.48 and later
/// take the last non-pad token: both agree with this rule on right-padded rows without inner pads.)
FUSION_GPT2_API at::Tensor sequence_pool_index(const at::Tensor& input_ids, std::optional<int64_t> pad_token_id);

/// hidden [B, T, d] at sequence_pool_index's token of each row: [B, d].
FUSION_GPT2_API at::Tensor pool_last_token(const at::Tensor& hidden, const at::Tensor& input_ids,
                                           std::optional<int64_t> pad_token_id);

/// Loads the GPT-2 folder (config.json + model.safetensors or shards with model.safetensors.index.json)
/// or safetensors file `dir` on `device`, floating tensors converted to `dtype`, as the head `head`
/// (default: the one config.json's `architectures` names, head_of). Throws fusion::Error naming the
/// folder and what is wrong (config.json missing or invalid, a key missing, a shape that disagrees
/// with config.json).
FUSION_GPT2_API ModelPtr load_gpt2(const std::filesystem::path& dir, std::optional<Gpt2Head> head = std::nullopt,
                                   const at::Device& device = at::kCPU,
                                   std::optional<at::ScalarType> dtype = at::kFloat);

/// Writes `model` (a Gpt2Model) as a Hugging Face folder at `dir`: model.safetensors with the
/// parameters as they are (canonical keys; a tied lm_head is not written, as transformers does) and
/// config.json (the model's, with `architectures` set to its head's class and `torch_dtype` to the
/// parameters' dtype), with fusion::write_directory_atomic: `dir` is never half-written.
FUSION_GPT2_API void save_gpt2(const Model& model, const std::filesystem::path& dir);

}  // namespace fusion::gpt2
