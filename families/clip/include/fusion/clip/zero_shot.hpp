#pragma once
// Zero-shot classification heads built from a CLIPModel's text tower.
#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fusion/clip/export.hpp"

namespace fusion::clip {

/// A task's frozen zero-shot classification head, as FusionBench builds it from a CLIPModel:
/// logits = logit_scale · normalise(pooled · projectionᵀ) · text_embedsᵀ.
struct ZeroShotHead {
  at::Tensor projection;   ///< [proj_dim, hidden]: CLIPModel's visual_projection.weight
  at::Tensor text_embeds;  ///< [num_classes, proj_dim]: per class, templates embedded, normalised,
                           ///< averaged, normalised again
  double logit_scale = 1.0;  ///< exp(logit_scale) of the CLIP model
};

/// Builds the head from the CLIPModel folder `clip_dir` (config.json, model.safetensors or shards,
/// vocab.json, merges.txt): each template has one "{}" replaced by the class name. Tensors on
/// `device` in `dtype`. Throws fusion::Error naming the missing/invalid file.
FUSION_CLIP_API ZeroShotHead build_zero_shot_head(const std::filesystem::path& clip_dir,
                                                  const std::vector<std::string>& classnames,
                                                  const std::vector<std::string>& templates,
                                                  const at::Device& device, at::ScalarType dtype);

/// Class logits [batch, num_classes] from the vision tower's pooled output [batch, hidden].
/// Differentiable in `pooled`; the head's tensors are constants.
FUSION_CLIP_API at::Tensor apply_head(const ZeroShotHead& head, const at::Tensor& pooled);

}  // namespace fusion::clip
