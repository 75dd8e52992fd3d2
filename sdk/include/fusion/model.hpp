#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "fusion/export.hpp"
#include "fusion/state_dict.hpp"

namespace fusion {

/// An architecture plus its parameters, with a functional forward.
///
/// A model is a pure function of its parameters: `forward(params, inputs)` reads the weights from
/// `params` (same keys and shapes as parameters()), so a method that builds parameters — a weighted
/// sum of task vectors with learned weights — passes them in and autograd flows through them.
/// The base class holds a checkpoint without a known architecture: it can be merged and saved but
/// has no forward. Architectures (CLIP's vision tower, ...) derive and override forward and
/// with_parameters. A Model is immutable after construction apart from parameters(); reading is
/// thread-safe.
class FUSION_SDK_API Model {
 public:
  /// `architecture`: a short name ("checkpoint", "clip_vision"); `config`: the architecture's
  /// settings (Hugging Face's config.json for HF models; saved beside the weights).
  Model(std::string architecture, StateDict parameters, nlohmann::json config = nlohmann::json::object());
  virtual ~Model();

  const std::string& architecture() const { return architecture_; }
  const StateDict& parameters() const { return parameters_; }
  StateDict& parameters() { return parameters_; }
  const nlohmann::json& config() const { return config_; }

  /// Output for `inputs` with the weights taken from `params`. The base class throws
  /// fusion::Error ("architecture 'checkpoint' has no forward").
  virtual at::Tensor forward(const StateDict& params, const at::Tensor& inputs) const;
  /// forward(parameters(), inputs).
  at::Tensor forward(const at::Tensor& inputs) const { return forward(parameters_, inputs); }
  /// A model of the same architecture and config with other parameters (same keys and shapes).
  virtual std::shared_ptr<Model> with_parameters(StateDict parameters) const;

 protected:
  std::string architecture_;
  StateDict parameters_;
  nlohmann::json config_;
};

/// A model its holder owns and may modify (a fresh load, a model being built).
using ModelPtr = std::shared_ptr<Model>;
/// A model shared read-only (the pool's cached pretrained model, a result).
using ConstModelPtr = std::shared_ptr<const Model>;

}  // namespace fusion
