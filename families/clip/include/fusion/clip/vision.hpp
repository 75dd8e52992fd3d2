#pragma once
// CLIP's vision tower (architecture "clip_vision"), a functional fusion::Model.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "fusion/clip/config.hpp"
#include "fusion/clip/encoder.hpp"
#include "fusion/clip/export.hpp"
#include "fusion/model.hpp"

namespace fusion::clip {

/// CLIP's vision tower (Hugging Face's CLIPVisionTransformer), architecture "clip_vision".
///
/// Parameters carry Hugging Face's keys (`vision_model.embeddings.patch_embedding.weight`, ...);
/// `vision_model.embeddings.position_ids` may be present and is ignored. forward(params, pixels)
/// maps pixel_values [B, C, S, S] (normalised, on the parameters' device and dtype) to the pooled
/// output [B, hidden]: post_layernorm of token 0, with no projection (visual_projection belongs
/// to the zero-shot head). Every weight is read from `params`, so autograd flows into them.
/// Mixed precision: with bfloat16 or float16 weights (a 16-bit copy of float32 ones) the
/// convolution, linear layers and attention products run in that dtype while the residual stream,
/// the layer norms and the softmax run in float32 (PyTorch autocast's policy), and the pooled
/// output is float32.
/// Immutable after construction; forward is thread-safe.
class FUSION_CLIP_API ClipVisionModel : public Model {
 public:
  /// Checks `params` against `config` (every key and shape; see check_params) and throws
  /// fusion::Error naming the first disagreeing key and both shapes. `config` is the model's
  /// config.json (a CLIPModel's or a CLIPVisionModel's); config() becomes the CLIPVisionModel form.
  /// parameters() are kept in Hugging Face's module order, whatever the order of `params`.
  ClipVisionModel(StateDict params, const nlohmann::json& config);
  ClipVisionModel(StateDict params, VisionConfig config);
  ~ClipVisionModel() override;  ///< defined in the library: its key function (one vtable, one typeinfo)

  at::Tensor forward(const StateDict& params, const at::Tensor& pixel_values) const override;
  using Model::forward;
  std::shared_ptr<Model> with_parameters(StateDict parameters) const override;

  const VisionConfig& vision_config() const { return vcfg_; }

  /// Every parameter the config implies, with its shape, in Hugging Face's order.
  static std::vector<ExpectedTensor> expected_parameters(const VisionConfig& cfg);
  /// Random weights in Hugging Face's initialisation (for tests and benchmarks), on the CPU in f32.
  static StateDict random_parameters(const VisionConfig& cfg, uint64_t seed);

 private:
  VisionConfig vcfg_;
  std::vector<LayerKeys> keys_;
};

/// The functional vision tower on its own: the pooled output of `pixel_values` with the weights of
/// `params`, for a caller that holds a config but no model.
FUSION_CLIP_API at::Tensor clip_vision_forward(const StateDict& params, const VisionConfig& cfg,
                                               const std::vector<LayerKeys>& keys,
                                               const at::Tensor& pixel_values);

}  // namespace fusion::clip
