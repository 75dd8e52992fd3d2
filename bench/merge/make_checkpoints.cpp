// Writes synthetic checkpoints shaped like Hugging Face's CLIPVisionModel for ViT-B/32 (about 88 M
// f32 parameters, ~350 MB each): DIR/pretrained and DIR/expert_<i>, each a folder with config.json
// and model.safetensors. Experts are the pretrained weights plus seeded Gaussian noise.
//
//   fusion_bench_make_checkpoints DIR [NUM_EXPERTS=8] [SEED=0]
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/state_dict.hpp"

namespace {

constexpr int64_t kHidden = 768, kIntermediate = 3072, kLayers = 12, kPatch = 32, kImage = 224;
constexpr int64_t kPositions = (kImage / kPatch) * (kImage / kPatch) + 1;

fusion::StateDict clip_vision_b32(at::Generator& gen) {
  fusion::StateDict sd;
  auto normal = [&](at::IntArrayRef shape, double std) { return at::normal(0.0, std, shape, gen); };
  auto ones = [](int64_t n) { return at::ones({n}); };
  auto zeros_like_bias = [&](int64_t n) { return normal({n}, 0.01); };
  const std::string p = "vision_model.";
  sd.set(p + "embeddings.class_embedding", normal({kHidden}, 0.02));
  sd.set(p + "embeddings.patch_embedding.weight", normal({kHidden, 3, kPatch, kPatch}, 0.02));
  sd.set(p + "embeddings.position_embedding.weight", normal({kPositions, kHidden}, 0.02));
  sd.set(p + "embeddings.position_ids", at::arange(kPositions, at::kLong).unsqueeze(0));
  sd.set(p + "pre_layrnorm.weight", ones(kHidden));
  sd.set(p + "pre_layrnorm.bias", zeros_like_bias(kHidden));
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
    for (const char* proj : {"k_proj", "v_proj", "q_proj", "out_proj"}) {
      sd.set(l + "self_attn." + proj + ".weight", normal({kHidden, kHidden}, 0.02));
      sd.set(l + "self_attn." + proj + ".bias", zeros_like_bias(kHidden));
    }
    sd.set(l + "layer_norm1.weight", ones(kHidden));
    sd.set(l + "layer_norm1.bias", zeros_like_bias(kHidden));
    sd.set(l + "mlp.fc1.weight", normal({kIntermediate, kHidden}, 0.02));
    sd.set(l + "mlp.fc1.bias", zeros_like_bias(kIntermediate));
    sd.set(l + "mlp.fc2.weight", normal({kHidden, kIntermediate}, 0.02));
    sd.set(l + "mlp.fc2.bias", zeros_like_bias(kHidden));
    sd.set(l + "layer_norm2.weight", ones(kHidden));
    sd.set(l + "layer_norm2.bias", zeros_like_bias(kHidden));
  }
  sd.set(p + "post_layernorm.weight", ones(kHidden));
  sd.set(p + "post_layernorm.bias", zeros_like_bias(kHidden));
  return sd;
}

const char* kConfig = R"({
  "architectures": ["CLIPVisionModel"],
  "model_type": "clip_vision_model",
  "hidden_size": 768,
  "intermediate_size": 3072,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "image_size": 224,
  "patch_size": 32,
  "num_channels": 3,
  "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-05,
  "projection_dim": 512,
  "torch_dtype": "float32"
}
)";

void write_model(const std::filesystem::path& dir, const fusion::StateDict& sd) {
  std::filesystem::create_directories(dir);
  fusion::save_safetensors(dir / "model.safetensors", sd);
  fusion::write_file_atomic(dir / "config.json", kConfig);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [NUM_EXPERTS=8] [SEED=0]\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    const int experts = argc > 2 ? std::stoi(argv[2]) : 8;
    const uint64_t seed = argc > 3 ? std::stoull(argv[3]) : 0;
    at::Generator gen = at::detail::createCPUGenerator(seed);
    const auto start = std::chrono::steady_clock::now();
    const fusion::StateDict pretrained = clip_vision_b32(gen);
    write_model(dir / "pretrained", pretrained);
    for (int i = 0; i < experts; ++i) {
      fusion::StateDict expert;
      for (const auto& [key, t] : pretrained) {
        // A fine-tuning-sized update: ~5 % of the weights' scale.
        expert.set(key, fusion::is_mergeable(t) ? t + at::normal(0.0, 1e-3, t.sizes(), gen) : t);
      }
      write_model(dir / ("expert_" + std::to_string(i)), expert);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("wrote pretrained + %d experts of %lld parameters (%.1f MB each) to %s in %.1f s\n", experts,
                static_cast<long long>(pretrained.numel()), pretrained.nbytes() / 1e6, dir.c_str(), s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
