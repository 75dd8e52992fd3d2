#pragma once
// CLIP's text tower with its projection (architecture "clip_text"), a functional fusion::Model.
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

/// CLIP's text tower with its projection (Hugging Face's CLIPTextTransformer + CLIPModel's
/// text_projection), architecture "clip_text".
///
/// Parameters: `text_model.*` and `text_projection.weight` with Hugging Face's keys.
/// forward(params, input_ids [B, L] int64, L ≤ max_position_embeddings) gives the text embeddings
/// [B, projection_dim] (not normalised): token + position embeddings, the encoder with a causal
/// mask, final_layer_norm, the state at the end-of-text token, text_projection. The end-of-text
/// position is the argmax of the ids when every row's largest id is 49407 or the config's
/// eos_token_id is the legacy 2 (OpenAI's vocabulary: the end-of-text id is the largest), else the
/// first position holding eos_token_id, as transformers does. With bfloat16 or float16 weights the
/// encoder runs in mixed precision (see ClipVisionModel) and the embeddings come out in the weights'
/// dtype. Immutable; forward is thread-safe.
class FUSION_CLIP_API ClipTextModel : public Model {
 public:
  /// `config`: a CLIPModel's config.json (text_config, projection_dim). Checks every key and shape.
  ClipTextModel(StateDict params, const nlohmann::json& config);
  ~ClipTextModel() override;  ///< defined in the library: its key function

  at::Tensor forward(const StateDict& params, const at::Tensor& input_ids) const override;
  using Model::forward;
  std::shared_ptr<Model> with_parameters(StateDict parameters) const override;

  const TextConfig& text_config() const { return tcfg_; }
  int64_t projection_dim() const { return projection_dim_; }

  /// Every parameter the config implies, with its shape.
  static std::vector<ExpectedTensor> expected_parameters(const TextConfig& cfg, int64_t projection_dim);

 private:
  TextConfig tcfg_;
  int64_t projection_dim_;
  std::vector<LayerKeys> keys_;
};

}  // namespace fusion::clip
