#pragma once
// CLIP vision towers in Hugging Face folders: loading, saving, and the `clip_vision` model pool.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/clip/config.hpp"
#include "fusion/clip/export.hpp"
#include "fusion/component.hpp"
#include "fusion/model.hpp"
#include "fusion/options.hpp"

namespace fusion::clip {

/// The options of the `clip_vision` pool: those of the `safetensors` pool (`pretrained`, `models`).
struct FUSION_CLIP_API ClipVisionPoolOptions {
  CheckpointPoolOptions base;
  static void bind(Options<ClipVisionPoolOptions>& o);
};

/// The `clip_vision` model pool: the pretrained model and the experts are Hugging Face CLIPModel
/// folders (only `vision_model.*` is kept) or CLIPVisionModel folders (FusionBench's fine-tuned
/// checkpoints): config.json plus model.safetensors or shards; f16/bf16 weights are converted to
/// the run's dtype. Every model is a ClipVisionModel with a functional forward. save() writes a
/// CLIPVisionModel folder (config.json with architectures ["CLIPVisionModel"], model.safetensors)
/// that transformers' CLIPVisionModel.from_pretrained loads.
///
/// Options: ClipVisionPoolOptions. Errors name the option and the folder and, for a config.json
/// that disagrees with the weights, the key and both shapes. Not thread-safe.
class FUSION_CLIP_API ClipVisionPool : public CheckpointModelPool {
 public:
  using Options = ClipVisionPoolOptions;
  ClipVisionPool(const ClipVisionPoolOptions& options, const Context& ctx);
  ~ClipVisionPool() override;

  static ComponentInfo info();

  ConstModelPtr pretrained() override;
  ModelPtr load(const std::string& name) override;
  void save(const Model& model, const std::filesystem::path& dir) const override;

 protected:
  ModelPtr make_model(StateDict params, nlohmann::json config) const override;

};

/// Loads the CLIPModel or CLIPVisionModel folder `dir` as a ClipVisionModel on `device`, floating
/// tensors converted to `dtype`. Throws fusion::Error naming the folder and what is wrong
/// (config.json missing or invalid, a key missing, a shape that disagrees with config.json).
FUSION_CLIP_API ModelPtr load_clip_vision(const std::filesystem::path& dir, const at::Device& device = at::kCPU,
                                          std::optional<at::ScalarType> dtype = at::kFloat);

/// The ClipVisionModel of the `vision_model.*` tensors of `params` (other keys dropped) and
/// `config` (config.json's contents; must not be empty).
FUSION_CLIP_API ModelPtr make_clip_vision(const StateDict& params, const nlohmann::json& config);

/// Writes `model` (a clip_vision model) as a CLIPVisionModel folder at `dir` (model.safetensors in
/// the parameters' dtype, config.json) with fusion::write_directory_atomic: `dir` is never
/// half-written and, when it exists, never missing (the new folder is exchanged with the old one).
FUSION_CLIP_API void save_clip_vision(const Model& model, const std::filesystem::path& dir);

}  // namespace fusion::clip
