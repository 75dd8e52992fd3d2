// The vision and text towers and the zero-shot head against make_golden.py's reference, on every
// device present (parameterised: the CPU always, CUDA when at::hasCUDA()).
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "fusion/clip/text.hpp"
#include "fusion/clip/tokenizer.hpp"
#include "fusion/clip/vision.hpp"
#include "fusion/clip/vision_pool.hpp"
#include "fusion/clip/zero_shot.hpp"
#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "support.hpp"

namespace fusion::clip {
namespace {

using testing::all_close;
using testing::data_dir;
using testing::error_of;

class ClipModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    device_ = at::Device(GetParam());
    if (device_.is_cuda()) {  // TF32 would cost ~1e-3 of precision
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    }
    golden_ = load_safetensors(data_dir() / "golden.safetensors", device_);
  }
  const at::Tensor& golden(const std::string& key) const { return golden_.at(key); }
  nlohmann::json golden_json() const {
    std::ifstream in(data_dir() / "golden.json");
    return nlohmann::json::parse(in);
  }
  ModelPtr clip_model() const { return load_clip_vision(data_dir() / "clip_model", device_, at::kFloat); }

  at::Device device_{at::kCPU};
  StateDict golden_;
};

TEST_P(ClipModelTest, VisionPooledOutputMatchesReference) {
  ModelPtr model = clip_model();
  EXPECT_EQ(model->architecture(), "clip_vision");
  for (const auto& [key, t] : model->parameters()) {
    EXPECT_EQ(key.rfind("vision_model.", 0), 0u) << key;  // the text tower and projections are dropped
    EXPECT_EQ(t.device(), device_);
  }
  at::Tensor with_grad_mode = model->forward(golden("pixel_values"));
  EXPECT_TRUE(all_close(with_grad_mode, golden("vision_pooled")));
  at::NoGradGuard no_grad;  // the in-place path
  EXPECT_TRUE(all_close(model->forward(golden("pixel_values")), golden("vision_pooled")));
}

TEST_P(ClipModelTest, ImageFeaturesMatchReference) {
  StateDict all = load_safetensors(data_dir() / "clip_model", device_, at::kFloat);
  at::NoGradGuard no_grad;
  at::Tensor pooled = clip_model()->forward(golden("pixel_values"));
  EXPECT_TRUE(all_close(at::linear(pooled, all.at("visual_projection.weight")), golden("image_features")));
}

TEST_P(ClipModelTest, TextFeaturesAndLogitsMatchReference) {
  StateDict all = load_safetensors(data_dir() / "clip_model", device_, at::kFloat);
  StateDict text_params;
  for (const auto& [key, t] : all) {
    if (key.rfind("text_model.", 0) == 0 || key == "text_projection.weight") text_params.set(key, t);
  }
  std::ifstream in(data_dir() / "clip_model" / "config.json");
  ClipTextModel text(text_params, nlohmann::json::parse(in));
  // The tokenizer gives the reference's ids, padded with end-of-text.
  const ClipTokenizer tok = ClipTokenizer::from_folder(data_dir() / "clip_model");
  at::Tensor ids = tok.encode_batch(golden_json()["texts"].get<std::vector<std::string>>()).to(device_);
  ASSERT_TRUE(at::equal(ids, golden("input_ids")));

  at::NoGradGuard no_grad;
  at::Tensor text_features = text.forward(ids);
  EXPECT_TRUE(all_close(text_features, golden("text_features")));
  at::Tensor image = clip_model()->forward(golden("pixel_values"));
  image = at::linear(image, all.at("visual_projection.weight"));
  image = image / image.norm(2, -1, true);
  at::Tensor txt = text_features / text_features.norm(2, -1, true);
  at::Tensor logits = at::matmul(image, txt.t()) * all.at("logit_scale").exp();
  EXPECT_TRUE(all_close(logits, golden("logits_per_image")));
}

TEST_P(ClipModelTest, ZeroShotHeadMatchesReference) {
  const nlohmann::json j = golden_json();
  ZeroShotHead head = build_zero_shot_head(data_dir() / "clip_model", j["classnames"], j["templates"], device_,
                                           at::kFloat);
  EXPECT_NEAR(head.logit_scale, std::exp(2.6592), 1e-4);
  EXPECT_EQ(head.projection.sizes(), (std::vector<int64_t>{24, 32}));
  EXPECT_EQ(head.text_embeds.device(), device_);
  EXPECT_TRUE(all_close(head.text_embeds, golden("zero_shot_text_embeds")));
  at::NoGradGuard no_grad;
  at::Tensor logits = apply_head(head, clip_model()->forward(golden("pixel_values")));
  EXPECT_TRUE(all_close(logits, golden("zero_shot_logits")));
}

TEST_P(ClipModelTest, VisionModelWithBf16WeightsAndGelu) {
  ModelPtr model = load_clip_vision(data_dir() / "clip_vision_model", device_, at::kFloat);
  for (const auto& [key, t] : model->parameters()) EXPECT_EQ(t.scalar_type(), at::kFloat) << key;
  auto* vision = dynamic_cast<ClipVisionModel*>(model.get());
  ASSERT_NE(vision, nullptr);
  EXPECT_EQ(vision->vision_config().hidden_act, "gelu");
  EXPECT_EQ(vision->vision_config().num_hidden_layers, 3);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(all_close(model->forward(golden("pixel_values_2")), golden("vision_pooled_2")));
}

TEST_P(ClipModelTest, GradientsFlowIntoParameters) {
  ModelPtr model = clip_model();
  StateDict params;
  for (const auto& [key, t] : model->parameters()) {
    params.set(key, t.is_floating_point() ? t.detach().clone().requires_grad_(true) : t);
  }
  at::Tensor pooled = model->forward(params, golden("pixel_values"));
  pooled.pow(2).sum().backward();
  for (const auto& [key, t] : params) {
    if (t.is_floating_point()) EXPECT_TRUE(t.grad().defined()) << key;
  }
  EXPECT_TRUE(all_close(params.at("vision_model.encoder.layers.0.mlp.fc1.weight").grad(), golden("grad_fc1_layer0"),
                        1e-5, 1e-4));
  EXPECT_TRUE(all_close(params.at("vision_model.embeddings.patch_embedding.weight").grad(),
                        golden("grad_patch_embedding"), 1e-5, 1e-4));
}

TEST_P(ClipModelTest, ForwardReadsTheGivenParameters) {
  ModelPtr model = clip_model();
  StateDict shifted = model->parameters().clone();
  shifted.at("vision_model.post_layernorm.bias").add_(1.0);
  at::NoGradGuard no_grad;
  at::Tensor base = model->forward(golden("pixel_values"));
  EXPECT_TRUE(all_close(model->forward(shifted, golden("pixel_values")), base + 1.0));
  ModelPtr other = model->with_parameters(shifted);
  EXPECT_EQ(other->architecture(), "clip_vision");
  EXPECT_TRUE(all_close(other->forward(golden("pixel_values")), base + 1.0));
  // The original is untouched.
  EXPECT_TRUE(all_close(model->forward(golden("pixel_values")), golden("vision_pooled")));
}

TEST_P(ClipModelTest, WrongPixelShapeIsAnError) {
  ModelPtr model = clip_model();
  const std::string msg = error_of([&] { model->forward(at::zeros({1, 3, 8, 8}, device_)); });
  EXPECT_NE(msg.find("pixel_values must be [batch, 3, 16, 16]"), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(Devices, ClipModelTest, ::testing::ValuesIn(testing::test_devices()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace fusion::clip
