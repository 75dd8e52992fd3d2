#pragma once
// What the task pool learns of the models it evaluates without loading them: the size of the images
// a CLIP vision tower takes, and the CLIPModel folder whose text tower can make the zero-shot heads.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"

namespace fusion::image_classification {

/// The side S of the S × S images a model takes, and where that was read.
struct ImageSizeFact {
  int64_t size = 0;
  /// "vision_config.image_size in m/config.json", "image_size in the model's config", ...
  std::string source;
};

/// The image size of a CLIP config (Hugging Face's config.json): a CLIPModel's
/// vision_config.image_size, a CLIPVisionModel's image_size, transformers' 224 when the field is
/// absent. `where` names the config in `source`. nullopt for a config that is not CLIP's, unless
/// `assume_clip` (the clip_vision pool reads any config.json as a CLIP vision config). Throws
/// fusion::Error for a CLIP config with invalid fields.
std::optional<ImageSizeFact> clip_image_size(const nlohmann::json& config, const std::string& where,
                                             bool assume_clip = false);

/// The image size `model` takes: a ClipVisionModel's vision config, else that of model.config()
/// when it is a CLIP config (a third-party model carrying Hugging Face's config.json). nullopt when
/// the model does not say.
std::optional<ImageSizeFact> model_image_size(const Model& model);

/// What a model pool says of its pretrained model, read from its folder's config.json.
struct PretrainedFacts {
  /// The option naming the folder ("modelpool.pretrained") and the folder; empty when the pool is
  /// not a checkpoint pool (nothing is known then).
  std::string option;
  std::filesystem::path folder;
  /// The image size, for a clip_vision pool or a CLIP config; absent: unknown.
  std::optional<ImageSizeFact> image_size;
  /// True when the folder is a CLIPModel with a text tower (config.json has text_config).
  bool text_tower = false;
  /// Why the folder cannot make zero-shot heads, when it cannot and the pool is CLIP's ("" else).
  std::string no_text_tower;
};

/// The facts of `models`' pretrained model. A CheckpointModelPool (the safetensors and clip_vision
/// pools, and pools derived from them) names its folder; its config.json is read (no weight). A
/// config.json that cannot be read leaves everything unknown (the pool reports it when it loads).
PretrainedFacts pretrained_facts(const ModelPool& models);

}  // namespace fusion::image_classification
