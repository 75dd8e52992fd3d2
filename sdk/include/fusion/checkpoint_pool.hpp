#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/export.hpp"
#include "fusion/component.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/options.hpp"

namespace fusion {

/// The options of the `safetensors` pool (and of pools derived from it).
struct FUSION_SDK_API CheckpointPoolOptions {
  /// The pretrained model's folder or file. Required.
  std::string pretrained;
  /// The experts: name = path, in config order. Default none.
  StringMap models;
  static void bind(Options<CheckpointPoolOptions>& o);
};

/// The generic checkpoint model pool (`name = "safetensors"`): a pretrained checkpoint and named
/// experts, each a Hugging Face model folder (config.json + model.safetensors or shards) or a
/// single .safetensors file; loaded lazily onto the run's device and dtype. Saving writes a folder
/// with model.safetensors and the pretrained model's config.json, so transformers loads it.
///
/// Options: CheckpointPoolOptions. Architecture-specific pools (clip_vision) derive and override
/// `make_model`.
class FUSION_SDK_API CheckpointModelPool : public ModelPool {
 public:
  using Options = CheckpointPoolOptions;
  /// Reads the options from ctx.config() (checked against schema_of<CheckpointPoolOptions>()).
  explicit CheckpointModelPool(const Context& ctx);
  CheckpointModelPool(const CheckpointPoolOptions& options, const Context& ctx);
  ~CheckpointModelPool() override;

  static ComponentInfo info();

  std::vector<std::string> expert_names() const override;
  bool has_pretrained() const override;
  ConstModelPtr pretrained() override;
  ModelPtr load(const std::string& name) override;
  void save(const Model& model, const std::filesystem::path& dir) const override;

  /// The path configured for `name` ("pretrained" or an expert name).
  const std::filesystem::path& path_of(const std::string& name) const;

 protected:
  /// Builds the model from a loaded state dict and the folder's config.json (an empty object when
  /// there is none). The base returns a plain `Model("checkpoint", ...)`.
  virtual ModelPtr make_model(StateDict params, nlohmann::json config) const;
  /// Loads the checkpoint at `path` (device and dtype of the context) and builds it.
  ModelPtr load_path(const std::filesystem::path& path) const;

  Context ctx_;
  std::filesystem::path pretrained_path_;
  std::vector<std::pair<std::string, std::filesystem::path>> experts_;
  ConstModelPtr pretrained_;
};

}  // namespace fusion
