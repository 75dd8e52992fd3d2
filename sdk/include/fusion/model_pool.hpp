#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fusion/export.hpp"
#include "fusion/model.hpp"

namespace fusion {

/// Named models: the pretrained one and the experts fine-tuned from it.
///
/// Loading is lazy: nothing is read before `pretrained()` or `load()` is called, so a method can
/// stream the experts one at a time and hold at most one. Models come back on the run's device
/// and dtype (Context). Not thread-safe.
class FUSION_SDK_API ModelPool {
 public:
  virtual ~ModelPool();

  /// The experts' names, in the order of the config.
  virtual std::vector<std::string> expert_names() const = 0;
  virtual bool has_pretrained() const = 0;
  /// The pretrained model (θ₀), read-only: the pool may cache it and hand the same object to every
  /// caller. Build a changed model with Model::with_parameters.
  virtual ConstModelPtr pretrained() = 0;
  /// Loads expert `name` (a fresh copy each call; the caller owns it). Throws fusion::Error for an
  /// unknown name, and when its keys or shapes differ from the pretrained model's (naming the key
  /// and both shapes).
  virtual ModelPtr load(const std::string& name) = 0;
  /// Saves `model` as a folder at `dir` in the pool's format (e.g. model.safetensors and
  /// config.json), atomically: written under a temporary name, then renamed.
  virtual void save(const Model& model, const std::filesystem::path& dir) const = 0;
};

}  // namespace fusion
