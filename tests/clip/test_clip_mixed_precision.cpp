// Mixed precision in CLIP's functional forward (families/clip/src/mixed_precision.hpp): with a
// bfloat16 copy of the weights the GEMMs run in bfloat16 and the residual stream, layer norms and
// softmax in float32. These tests run the bfloat16 path wherever LibTorch has it (emulated on a CPU
// without bf16 instructions: the numerics are the same, only slower) against the float32 forward
// and make_golden.py's reference.
//
// Tolerances: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 %). A forward of a
// few layers stays within 2 % of float32 relative to the output's largest value; the gradients
// within 5 % (a sum of many bf16 products), and they point the same way (cosine > 0.999).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "fusion/clip/text.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/safetensors.hpp"
#include "support.hpp"

namespace fusion::clip {
namespace {

using testing::data_dir;

// max |a − b| / max |b|
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.detach().to(at::kDouble), y = b.detach().to(at::kDouble);
  return (x - y).abs().max().item<double>() / y.abs().max().item<double>();
}

double cosine(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.detach().to(at::kDouble).flatten(), y = b.detach().to(at::kDouble).flatten();
  return (x.dot(y) / (x.norm() * y.norm())).item<double>();
}

StateDict golden() { return load_safetensors(data_dir() / "golden.safetensors"); }

// A demo-sized tower (image 28, patch 7, hidden 64, 4 layers) with Hugging Face's initialisation.
VisionConfig small_config() {
  VisionConfig c;
  c.image_size = 28;
  c.patch_size = 7;
  c.num_channels = 3;
  c.hidden_size = 64;
  c.intermediate_size = 256;
  c.num_attention_heads = 4;
  c.num_hidden_layers = 4;
  return c;
}

TEST(ClipMixedPrecision, Bf16WeightsGiveFloat32OutputCloseToTheFloat32Forward) {
  ModelPtr model = load_clip_vision(data_dir() / "clip_model", at::kCPU, at::kFloat);
  const StateDict bf16 = model->parameters().to(at::kCPU, at::kBFloat16);
  const at::Tensor pixels = golden().at("pixel_values");
  at::NoGradGuard no_grad;
  const at::Tensor out32 = model->forward(pixels);
  const at::Tensor out16 = model->forward(bf16, pixels);
  EXPECT_EQ(out16.scalar_type(), at::kFloat);  // the last layer norm runs in float32
  const double err = relative_error(out16, out32);
  EXPECT_LT(err, 2e-2);
  EXPECT_GT(err, 1e-6) << "identical to float32: the bf16 weights were not used in bf16";
  EXPECT_LT(relative_error(out16, golden().at("vision_pooled")), 2e-2);
}

TEST(ClipMixedPrecision, DemoSizedTowerWithAndWithoutGradMode) {
  const VisionConfig cfg = small_config();
  ClipVisionModel model(ClipVisionModel::random_parameters(cfg, 3), cfg);
  const StateDict bf16 = model.parameters().to(at::kCPU, at::kBFloat16);
  const at::Tensor pixels = at::randn({8, 3, 28, 28}, at::make_generator<at::CPUGeneratorImpl>(4));
  const at::Tensor out32 = model.forward(pixels).detach();
  const at::Tensor with_grad = model.forward(bf16, pixels).detach();
  at::Tensor in_place;
  {
    at::NoGradGuard no_grad;  // the in-place residual adds, float32 += bfloat16
    in_place = model.forward(bf16, pixels);
  }
  EXPECT_TRUE(at::equal(with_grad, in_place));
  const double err = relative_error(with_grad, out32);
  EXPECT_LT(err, 2e-2);
  EXPECT_GT(err, 1e-6);
  // Each image's features point where float32's do.
  for (int64_t i = 0; i < out32.size(0); ++i) EXPECT_GT(cosine(with_grad[i], out32[i]), 0.9995) << i;
}

// The mixed-precision training pattern: float32 leaves, a differentiable cast to bfloat16, the
// forward in bfloat16; the gradients arrive in float32 and agree with float32's.
TEST(ClipMixedPrecision, GradientsReachFloat32LeavesAndMatchFloat32Gradients) {
  ModelPtr model = load_clip_vision(data_dir() / "clip_model", at::kCPU, at::kFloat);
  const at::Tensor pixels = golden().at("pixel_values");
  auto grads_of = [&](bool mixed) {
    StateDict leaves, compute;
    for (const auto& [key, t] : model->parameters()) {
      at::Tensor leaf = t.detach().clone().requires_grad_(true);
      leaves.set(key, leaf);
      compute.set(key, mixed ? leaf.to(at::kBFloat16) : leaf);
    }
    model->forward(compute, pixels).pow(2).sum().backward();
    return leaves;
  };
  const StateDict g32 = grads_of(false), g16 = grads_of(true);
  for (const std::string key : {"vision_model.encoder.layers.0.mlp.fc1.weight",
                                "vision_model.encoder.layers.1.self_attn.q_proj.weight",
                                "vision_model.embeddings.patch_embedding.weight",
                                "vision_model.pre_layrnorm.weight"}) {
    const at::Tensor& a = g16.at(key).grad();
    ASSERT_TRUE(a.defined()) << key;
    EXPECT_EQ(a.scalar_type(), at::kFloat) << key;
    EXPECT_LT(relative_error(a, g32.at(key).grad()), 5e-2) << key;
    EXPECT_GT(cosine(a, g32.at(key).grad()), 0.999) << key;
  }
}

TEST(ClipMixedPrecision, TextTowerWithBf16Weights) {
  const StateDict all = load_safetensors(data_dir() / "clip_model", at::kCPU, at::kFloat);
  StateDict text;
  for (const auto& [key, t] : all)
    if (key.rfind("text_model.", 0) == 0 || key == "text_projection.weight") text.set(key, t);
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(data_dir() / "clip_model" / "config.json"));
  ClipTextModel model(text, config);
  const at::Tensor ids = golden().at("input_ids");
  at::NoGradGuard no_grad;
  const at::Tensor out32 = model.forward(ids);
  const at::Tensor out16 = model.forward(text.to(at::kCPU, at::kBFloat16), ids);
  EXPECT_EQ(out16.scalar_type(), at::kBFloat16);  // the projection is a GEMM: the weights' dtype
  EXPECT_LT(relative_error(out16, out32), 2e-2);
  EXPECT_GT(relative_error(out16, out32), 1e-6);
}

}  // namespace
}  // namespace fusion::clip
