#pragma once
// CLIP's transformer encoder, shared by the vision and text towers: parameter names, shapes, and
// the functional forward.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fusion/clip/config.hpp"
#include "fusion/clip/export.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::clip {

/// The parameter names of one CLIPEncoderLayer, built once so the forward does no string work.
struct LayerKeys {
  std::string ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  std::string ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

/// An expected parameter: its Hugging Face key and shape.
using ExpectedTensor = std::pair<std::string, std::vector<int64_t>>;

/// The keys of `cfg.num_hidden_layers` layers under `prefix` (e.g. "vision_model.encoder.").
FUSION_CLIP_API std::vector<LayerKeys> encoder_keys(const std::string& prefix, const EncoderConfig& cfg);
/// Appends every encoder parameter with its shape (q/k/v/out [D, D] + [D], fc1 [I, D] + [I],
/// fc2 [D, I] + [D], layer norms [D]).
FUSION_CLIP_API void append_encoder_shapes(std::vector<ExpectedTensor>& out, const std::string& prefix,
                                           const EncoderConfig& cfg);

/// Checks that `params` holds every expected key with its shape and no other key starting with
/// `prefix` (except the integer `position_ids` buffers). Throws fusion::Error naming the key and
/// both shapes ("config.json says [..] but the weights have [..]").
FUSION_CLIP_API void check_params(const StateDict& params, const std::vector<ExpectedTensor>& expected,
                                  const std::string& prefix);

/// The transformer encoder of CLIP (pre-norm blocks; HF's CLIPEncoder) on x [B, T, D], reading the
/// weights from `params`: differentiable in them and in x. `causal`: each token attends only to
/// itself and earlier ones (the text tower). `first_token_only`: the result is [B, 1, D], the
/// first token's state only (what the vision tower pools); the last layer then computes its query,
/// attention output and MLP for that token alone. `x` is consumed: under no-grad the residual adds
/// run in place on it. With bfloat16 or float16 layer weights the GEMMs run in that dtype and the
/// residual stream, layer norms and softmax in float32: `x` is widened and the result is float32.
FUSION_CLIP_API at::Tensor encoder_forward(const StateDict& params, const std::vector<LayerKeys>& keys,
                                           const EncoderConfig& cfg, at::Tensor x, bool causal,
                                           bool first_token_only = false);

/// x · σ(1.702 x) ("quick_gelu") or the erf GELU ("gelu").
FUSION_CLIP_API at::Tensor activation(const at::Tensor& x, const std::string& act);

}  // namespace fusion::clip
