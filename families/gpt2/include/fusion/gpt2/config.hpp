#pragma once
// GPT-2's architecture settings, read from Hugging Face's config.json (GPT2Config's field names).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fusion/gpt2/export.hpp"

namespace fusion::gpt2 {

/// The activation functions a GPT-2 config may name (transformers' ACT2FN names we implement):
/// gelu_new (tanh approximation, GPT-2's), gelu_pytorch_tanh (the same formula), gelu_fast, gelu (erf),
/// quick_gelu, relu, silu, swish, tanh.
FUSION_GPT2_API const std::vector<std::string>& supported_activations();

/// GPT2Config: what the forward needs. Defaults are Hugging Face's, i.e. GPT-2 small.
struct FUSION_GPT2_API Gpt2Config {
  int64_t vocab_size = 50257;    ///< Token embeddings (wte rows). Default 50257.
  int64_t n_positions = 1024;    ///< Position embeddings (wpe rows): the longest input. Default 1024.
  int64_t n_embd = 768;          ///< d, the hidden size. Default 768.
  int64_t n_layer = 12;          ///< Blocks. Default 12.
  int64_t n_head = 12;           ///< Attention heads; must divide n_embd. Default 12.
  int64_t n_inner = 0;           ///< MLP width; 0 (config.json null or absent) means 4·n_embd. Default 0.
  std::string activation_function = "gelu_new";  ///< One of supported_activations(). Default gelu_new.
  double layer_norm_epsilon = 1e-5;              ///< LayerNorm ε. Default 1e-5.
  bool scale_attn_weights = true;                ///< Divide attention scores by √head_dim. Default true.
  bool scale_attn_by_inverse_layer_idx = false;  ///< Also divide layer i's scores by i + 1. Default false.
  /// The padding token: sequence classification pools the token before the first one (see
  /// sequence_pool_index). FusionBench sets it to eos (50256). Default none.
  std::optional<int64_t> pad_token_id;
  int64_t eos_token_id = 50256;  ///< End of text. Default 50256.
  /// Classes of GPT2ForSequenceClassification (`score.weight` rows): the size of `id2label` when
  /// config.json has one, else `num_labels`, else 2 (transformers' default).
  int64_t num_labels = 2;
  /// Class names by index from `id2label` ("LABEL_0", ... when config.json has none).
  std::vector<std::string> labels;
  /// `architectures[0]` of config.json ("GPT2ForSequenceClassification", "GPT2LMHeadModel",
  /// "GPT2Model"); empty when absent.
  std::string architecture;

  int64_t inner_dim() const { return n_inner > 0 ? n_inner : 4 * n_embd; }
  int64_t head_dim() const { return n_embd / n_head; }

  /// Reads a GPT-2 config.json; absent (or null) fields take Hugging Face's defaults. Throws
  /// fusion::Error "<origin>: '<field>' ..." for a wrong type, an inconsistent value (n_head not
  /// dividing n_embd, id2label keys not 0..n−1), an unknown activation_function, or features the
  /// forward lacks (add_cross_attention).
  static Gpt2Config from_json(const nlohmann::json& config, const std::string& origin);
};

/// The config.json of the model folder `dir` (or of the folder holding the file `dir`), parsed.
/// Throws fusion::Error naming the file when it is missing, not JSON or not a JSON object.
FUSION_GPT2_API nlohmann::json read_config_json(const std::filesystem::path& dir);

}  // namespace fusion::gpt2
