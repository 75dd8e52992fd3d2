#pragma once
// CLIP's architecture settings, read from and written to Hugging Face's config.json.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

#include "fusion/clip/export.hpp"

namespace fusion::clip {

/// The settings shared by CLIP's vision and text transformers (Hugging Face's CLIPVisionConfig /
/// CLIPTextConfig field names). Defaults are Hugging Face's, i.e. ViT-B/32's vision tower.
struct FUSION_CLIP_API EncoderConfig {
  int64_t hidden_size = 768;          ///< D. Default 768.
  int64_t intermediate_size = 3072;   ///< MLP width. Default 3072.
  int64_t num_attention_heads = 12;   ///< Heads; must divide hidden_size. Default 12.
  int64_t num_hidden_layers = 12;     ///< Blocks. Default 12.
  std::string hidden_act = "quick_gelu";  ///< "quick_gelu" (x·σ(1.702x)) or "gelu" (erf). Default quick_gelu.
  double layer_norm_eps = 1e-5;       ///< LayerNorm ε. Default 1e-5.

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

/// CLIPVisionConfig: the encoder plus the patch embedding geometry.
struct FUSION_CLIP_API VisionConfig : EncoderConfig {
  int64_t image_size = 224;   ///< S: input images are S × S. Default 224.
  int64_t patch_size = 32;    ///< P: patches of P × P, (S/P)² of them. Default 32.
  int64_t num_channels = 3;   ///< Input channels. Default 3.

  int64_t num_positions() const { return (image_size / patch_size) * (image_size / patch_size) + 1; }

  /// Reads a CLIPModel config.json (its `vision_config`) or a CLIPVisionModel one (the fields at the
  /// top level); absent fields take Hugging Face's defaults. Throws fusion::Error naming `origin`
  /// and the field for a wrong type or an inconsistent value.
  static VisionConfig from_json(const nlohmann::json& config, const std::string& origin);
  /// The config.json of a CLIPVisionModel with these settings (transformers loads it).
  nlohmann::json to_json() const;
};

/// CLIPTextConfig: the encoder plus the vocabulary and context length.
struct FUSION_CLIP_API TextConfig : EncoderConfig {
  int64_t vocab_size = 49408;               ///< Token embeddings. Default 49408.
  int64_t max_position_embeddings = 77;     ///< Context length. Default 77.
  int64_t eos_token_id = 49407;             ///< End of text (2 in configs written before transformers 4.31).

  /// Reads `text_config` of a CLIPModel config.json; Hugging Face's text defaults (hidden 512,
  /// intermediate 2048, 8 heads, 12 layers) for absent fields.
  static TextConfig from_json(const nlohmann::json& config, const std::string& origin);
};

/// True when `config` is a CLIPModel's (it has `text_config` or `vision_config`).
FUSION_CLIP_API bool is_clip_model_config(const nlohmann::json& config);

/// The config.json of the model folder `dir` (or of the folder holding the file `dir`), parsed.
/// Throws fusion::Error naming the file when it is missing, not JSON or not a JSON object.
FUSION_CLIP_API nlohmann::json read_config_json(const std::filesystem::path& dir);

}  // namespace fusion::clip
