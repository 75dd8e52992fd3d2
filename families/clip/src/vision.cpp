#include "fusion/clip/vision.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "fusion/error.hpp"
#include "mixed_precision.hpp"

namespace fusion::clip {
namespace {
const std::string kPrefix = "vision_model.";
const std::string kEmb = "vision_model.embeddings.";
}  // namespace

std::vector<ExpectedTensor> ClipVisionModel::expected_parameters(const VisionConfig& c) {
  const int64_t d = c.hidden_size;
  std::vector<ExpectedTensor> e;
  e.push_back({kEmb + "class_embedding", {d}});
  e.push_back({kEmb + "patch_embedding.weight", {d, c.num_channels, c.patch_size, c.patch_size}});
  e.push_back({kEmb + "position_embedding.weight", {c.num_positions(), d}});
  e.push_back({kPrefix + "pre_layrnorm.weight", {d}});
  e.push_back({kPrefix + "pre_layrnorm.bias", {d}});
  append_encoder_shapes(e, kPrefix + "encoder.", c);
  e.push_back({kPrefix + "post_layernorm.weight", {d}});
  e.push_back({kPrefix + "post_layernorm.bias", {d}});
  return e;
}

StateDict ClipVisionModel::random_parameters(const VisionConfig& c, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  StateDict p;
  const double d = static_cast<double>(c.hidden_size);
  const double layer_std = std::pow(d, -0.5) * std::pow(2.0 * c.num_hidden_layers, -0.5);
  for (const auto& [key, shape] : expected_parameters(c)) {
    at::Tensor t = at::empty(shape, at::kFloat);
    const bool is_norm = key.find("norm") != std::string::npos;
    if (is_norm && key.size() > 6 && key.compare(key.size() - 6, 6, "weight") == 0) {
      t.fill_(1.0);
    } else if (is_norm || key.compare(key.size() - 4, 4, "bias") == 0) {
      t.zero_();
    } else if (key.find("class_embedding") != std::string::npos) {
      t.normal_(0.0, std::pow(d, -0.5), gen);
    } else if (key.find("fc1") != std::string::npos) {
      t.normal_(0.0, std::pow(2.0 * d, -0.5), gen);
    } else if (key.find("out_proj") != std::string::npos) {
      t.normal_(0.0, std::pow(d, -0.5), gen);
    } else if (key.find("embedding") != std::string::npos) {
      t.normal_(0.0, 0.02, gen);
    } else {
      t.normal_(0.0, layer_std, gen);
    }
    p.set(key, t);
  }
  return p;
}

ClipVisionModel::ClipVisionModel(StateDict params, const nlohmann::json& config)
    : ClipVisionModel(std::move(params), VisionConfig::from_json(config, "config.json")) {}

ClipVisionModel::ClipVisionModel(StateDict params, VisionConfig config)
    : Model("clip_vision", std::move(params), config.to_json()),
      vcfg_(std::move(config)),
      keys_(encoder_keys(kPrefix + "encoder.", vcfg_)) {
  const std::vector<ExpectedTensor> expected = expected_parameters(vcfg_);
  check_params(parameters_, expected, kPrefix);
  // Hugging Face's module order whatever the file's order, so every model has the same key order.
  StateDict ordered;
  for (const auto& [key, shape] : expected) ordered.set(key, parameters_.at(key));
  for (const auto& [key, t] : parameters_) {
    if (!ordered.contains(key)) ordered.set(key, t);
  }
  parameters_ = std::move(ordered);
}

ClipVisionModel::~ClipVisionModel() = default;

at::Tensor ClipVisionModel::forward(const StateDict& params, const at::Tensor& pixel_values) const {
  return clip_vision_forward(params, vcfg_, keys_, pixel_values);
}

std::shared_ptr<Model> ClipVisionModel::with_parameters(StateDict parameters) const {
  check_same_layout(parameters_, parameters, "model", "new parameters");
  return std::make_shared<ClipVisionModel>(std::move(parameters), vcfg_);
}

at::Tensor clip_vision_forward(const StateDict& p, const VisionConfig& c, const std::vector<LayerKeys>& keys,
                               const at::Tensor& pixel_values) {
  FUSION_ENSURE(pixel_values.dim() == 4 && pixel_values.size(1) == c.num_channels &&
                    pixel_values.size(2) == c.image_size && pixel_values.size(3) == c.image_size,
                "clip_vision: pixel_values must be [batch, ", c.num_channels, ", ", c.image_size, ", ",
                c.image_size, "], got ", pixel_values.sizes());
  const at::Tensor& patch_w = p.at(kEmb + "patch_embedding.weight");
  const int64_t b = pixel_values.size(0), d = c.hidden_size;
  at::Tensor pixels = pixel_values.to(patch_w.device(), patch_w.scalar_type());
  // [B, D, S/P, S/P] → [B, (S/P)², D]
  at::Tensor patches = at::conv2d(pixels, patch_w, {}, c.patch_size).flatten(2).transpose(1, 2);
  // Mixed precision (mixed_precision.hpp): from here on the residual stream is float32.
  const bool mixed = detail::is_reduced_float(patch_w.scalar_type());
  if (mixed) patches = patches.to(at::kFloat);
  at::Tensor cls = p.at(kEmb + "class_embedding").view({1, 1, d}).expand({b, 1, d});
  at::Tensor x = at::cat({mixed ? cls.to(at::kFloat) : cls, patches}, 1);
  const at::Tensor& pos = p.at(kEmb + "position_embedding.weight");
  if (at::GradMode::is_enabled()) x = x + pos; else x.add_(pos);
  x = detail::norm(x, d, p.at(kPrefix + "pre_layrnorm.weight"), p.at(kPrefix + "pre_layrnorm.bias"),
                   c.layer_norm_eps);
  x = encoder_forward(p, keys, c, std::move(x), /*causal=*/false, /*first_token_only=*/true);
  at::Tensor pooled = x.select(1, 0);
  return detail::norm(pooled, d, p.at(kPrefix + "post_layernorm.weight"), p.at(kPrefix + "post_layernorm.bias"),
                      c.layer_norm_eps);
}

}  // namespace fusion::clip
