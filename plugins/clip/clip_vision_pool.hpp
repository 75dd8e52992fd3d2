#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "fusion/checkpoint_pool.hpp"
#include "fusion/model.hpp"

namespace fusion::clip {

/// The `clip_vision` model pool: the pretrained model and the experts are Hugging Face CLIPModel
/// folders (only `vision_model.*` is kept) or CLIPVisionModel folders (FusionBench's fine-tuned
/// checkpoints): config.json plus model.safetensors or shards; f16/bf16 weights are converted to
/// the run's dtype. Every model is a ClipVisionModel with a functional forward. save() writes a
/// CLIPVisionModel folder (config.json with architectures ["CLIPVisionModel"], model.safetensors)
/// that transformers' CLIPVisionModel.from_pretrained loads.
///
/// Options: those of the `safetensors` pool (`pretrained`, `models`). Errors name the folder and,
/// for a config.json that disagrees with the weights, the key and both shapes. Not thread-safe.
class ClipVisionPool : public CheckpointModelPool {
 public:
  explicit ClipVisionPool(const Context& ctx);

  static ComponentInfo info();
  static std::unique_ptr<ModelPool> create(const Context& ctx);

  ModelPtr pretrained() override;
  ModelPtr load(const std::string& name) override;
  void save(const Model& model, const std::filesystem::path& dir) const override;

 protected:
  ModelPtr make_model(StateDict params, nlohmann::json config) const override;
};

/// Loads the CLIPModel or CLIPVisionModel folder `dir` as a ClipVisionModel on `device`, floating
/// tensors converted to `dtype`. Throws fusion::Error naming the folder and what is wrong
/// (config.json missing or invalid, a key missing, a shape that disagrees with config.json).
ModelPtr load_clip_vision(const std::filesystem::path& dir, const at::Device& device = at::kCPU,
                          std::optional<at::ScalarType> dtype = at::kFloat);

/// The ClipVisionModel of the `vision_model.*` tensors of `params` (other keys dropped) and
/// `config` (config.json's contents; must not be empty).
ModelPtr make_clip_vision(const StateDict& params, const nlohmann::json& config);

/// Writes `model` (a clip_vision model) as a CLIPVisionModel folder at `dir` (model.safetensors in
/// the parameters' dtype, config.json): written into a temporary sibling folder, then renamed over
/// `dir`, so `dir` is never half-written.
void save_clip_vision(const Model& model, const std::filesystem::path& dir);

/// config.json of `dir` parsed; throws fusion::Error naming the file when missing or not JSON.
nlohmann::json read_config_json(const std::filesystem::path& dir);

}  // namespace fusion::clip
