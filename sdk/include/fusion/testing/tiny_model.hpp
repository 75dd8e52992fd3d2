#pragma once
// A tiny functional model for unit tests of merging and training methods (library fusion::testing).
//
// Its parameters carry the names of a transformer encoder (embeddings, encoder.layers.N.self_attn,
// encoder.layers.N.mlp, post_layernorm), so that methods selecting parameters by name (PWEMoE's
// "*.mlp.*" groups, finetune's "mlp" / "attention" subsets) find what they look for, and it is small
// enough to train in milliseconds on a CPU. forward(params, inputs) reads every weight from
// `params`, so autograd flows from its output to any parameter a method builds.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>

#include "fusion/model.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::testing {

/// The shape of a TinyModel. Defaults: 3 input features, width 4, MLP width 6, 2 layers with
/// attention.
struct TinyModelConfig {
  int64_t input_dim = 3;   ///< features of one input row
  int64_t hidden = 4;      ///< width of the residual stream, and of the output features
  int64_t ffn = 6;         ///< width of each layer's MLP
  int64_t layers = 2;      ///< encoder layers
  bool attention = true;   ///< whether each layer has a `self_attn` linear map

  /// {"input_dim", "hidden", "ffn", "layers", "attention"}: the model's config().
  nlohmann::json to_json() const;
  /// The inverse of to_json(). Throws fusion::Error naming the key when one is missing, of another
  /// type, or not positive.
  static TinyModelConfig from_json(const nlohmann::json& j);
};

/// features = layer_norm(h_L), with h₀ = x·Eᵀ + e and, for each layer l,
///   h ← h + tanh(h·Aₗᵀ + aₗ)                        (when config.attention)
///   h ← h + fc2ₗ(gelu(fc1ₗ(h)))
/// Inputs [N, input_dim] (floating, on the parameters' device and dtype) give features [N, hidden].
/// Parameters, in this order:
///   model.embeddings.position_ids            int64 [input_dim] = 0, 1, ...; unused by forward: an
///                                            integer tensor a merge must copy, never average
///   model.embeddings.weight / .bias          [hidden, input_dim] / [hidden]
///   model.encoder.layers.L.self_attn.weight / .bias   [hidden, hidden] / [hidden]  (with attention)
///   model.encoder.layers.L.mlp.fc1.weight / .bias     [ffn, hidden] / [ffn]
///   model.encoder.layers.L.mlp.fc2.weight / .bias     [hidden, ffn] / [hidden]
///   model.post_layernorm.weight / .bias      [hidden] / [hidden]
/// architecture() is "tiny_mlp" and config() is TinyModelConfig::to_json(). Immutable apart from
/// parameters(), like every Model; reading is thread-safe.
class TinyModel : public Model {
 public:
  static constexpr const char* kArchitecture = "tiny_mlp";

  /// Throws fusion::Error (naming the key and both shapes) unless `parameters` have exactly the
  /// keys and shapes `config` implies.
  explicit TinyModel(StateDict parameters, TinyModelConfig config = {});

  /// Random parameters from `seed`, on the CPU in float32: weights and biases N(0, scale²), the
  /// layer norm's weight 1 and bias 0. The same seed gives the same parameters.
  static StateDict random_parameters(const TinyModelConfig& config, uint64_t seed, double scale = 0.5);
  /// A TinyModel with random_parameters(config, seed).
  static std::shared_ptr<TinyModel> random(const TinyModelConfig& config = {}, uint64_t seed = 0);

  using Model::forward;  // forward(inputs): with parameters()
  at::Tensor forward(const StateDict& params, const at::Tensor& inputs) const override;
  /// A TinyModel of the same config with `parameters` (same keys and shapes, else fusion::Error).
  std::shared_ptr<Model> with_parameters(StateDict parameters) const override;

  const TinyModelConfig& tiny_config() const { return tiny_; }

 private:
  TinyModelConfig tiny_;
};

}  // namespace fusion::testing
