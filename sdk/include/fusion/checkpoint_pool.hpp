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
  /// The config key that gives the path of `name` ("pretrained" or an expert name), for messages:
  /// `<table>.pretrained` or `<table>.models.<name>`, where <table> is the pool's own
  /// (ctx.config().section(), `modelpool` when that is empty). Added in SDK 1.4 (API level 4).
  std::string option_of(const std::string& name) const;

  Context ctx_;
  std::filesystem::path pretrained_path_;
  std::vector<std::pair<std::string, std::filesystem::path>> experts_;
  ConstModelPtr pretrained_;
};

/// Writes the Hugging Face model folder `dir` atomically (write_directory_atomic): model.safetensors
/// with `params`, and config.json with `config`, its "torch_dtype" set to the dtype of the first
/// floating-point tensor of `params`. For a model family's ModelPool::save. Throws fusion::Error
/// naming `family`: "<family>: cannot save a model to '<dir>': not a folder name", or
/// "<family>: cannot write the model folder <dir>: <reason>". Added in SDK 1.4 (API level 4).
FUSION_SDK_API void save_model_folder(const std::filesystem::path& dir, const StateDict& params,
                                      nlohmann::json config, const std::string& family);

}  // namespace fusion
