// make_world: the data of a tiny CLIP world for trying task-wise AdaMerging in seconds.
//
//   adamerging_make_world OUT_DIR
//
// Writes, under OUT_DIR:
//   data/bars/, data/checks/   two 4-class tasks of 12 × 12 grey images as IDX files (MNIST's
//                              format: train-* 384 images, t10k-* 128), drawn from a fixed seed;
//   model/config.json          a CLIPVisionModel config (image 12, patch 6, width 16, 2 layers);
//   heads/<task>.safetensors   placeholder heads (zeros) of the right shapes, which the
//                              multitask_pretrain run of tiny_world/pretrain.toml overwrites with
//                              its trained heads (the task pool needs the files to exist when it
//                              opens; it reads them only when first used).
// bars: a bright bar, horizontal, vertical, diagonal or anti-diagonal, at a random offset.
// checks: a checkerboard of 1, 2 or 3-pixel cells at a random phase, or a flat grey field.
// Both with random brightness and noise. The same OUT_DIR contents every time.
#include <ATen/ATen.h>

#include <fusion/safetensors.hpp>
#include <fusion/state_dict.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

constexpr int kSide = 12, kClasses = 4, kTrain = 384, kTest = 128;
constexpr int kHidden = 16, kProjection = 8;

using Image = std::vector<float>;  // kSide × kSide, values in [0, 1]

void put(Image& im, int y, int x, float v) {
  if (y >= 0 && y < kSide && x >= 0 && x < kSide) im[static_cast<size_t>(y * kSide + x)] = std::max(im[static_cast<size_t>(y * kSide + x)], v);
}

Image bars(int label, std::mt19937& rng) {
  Image im(kSide * kSide, 0.0f);
  std::uniform_int_distribution<int> offset(2, kSide - 3);
  std::uniform_real_distribution<float> bright(0.6f, 1.0f);
  const int o = offset(rng);
  const float v = bright(rng);
  for (int i = 0; i < kSide; ++i)
    for (int w = 0; w < 2; ++w) {
      if (label == 0) put(im, o + w, i, v);                      // horizontal
      if (label == 1) put(im, i, o + w, v);                      // vertical
      if (label == 2) put(im, i, i + (o - kSide / 2) + w, v);    // diagonal
      if (label == 3) put(im, i, kSide - 1 - i + (o - kSide / 2) + w, v);  // anti-diagonal
    }
  return im;
}

Image checks(int label, std::mt19937& rng) {
  // A checkerboard of cells of 1, 2 or 3 pixels (labels 0-2), or a flat field (label 3).
  Image im(kSide * kSide, 0.0f);
  std::uniform_int_distribution<int> phase(0, 5);
  std::uniform_real_distribution<float> bright(0.6f, 1.0f), flat(0.3f, 0.7f);
  const int cell = label + 1, py = phase(rng), px = phase(rng);
  const float v = bright(rng), f = flat(rng);
  for (int y = 0; y < kSide; ++y)
    for (int x = 0; x < kSide; ++x)
      im[static_cast<size_t>(y * kSide + x)] = label == 3 ? f : (((y + py) / cell + (x + px) / cell) % 2 ? v : 0.0f);
  return im;
}

void write_be32(std::ofstream& out, uint32_t v) {
  const unsigned char b[4] = {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
                              static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  out.write(reinterpret_cast<const char*>(b), 4);
}

void write_split(const fs::path& dir, const std::string& prefix, int n, Image (*draw)(int, std::mt19937&),
                 std::mt19937& rng) {
  std::normal_distribution<float> noise(0.0f, 0.08f);
  std::vector<unsigned char> pixels, labels;
  for (int i = 0; i < n; ++i) {
    const int label = i % kClasses;
    Image im = draw(label, rng);
    for (float v : im) pixels.push_back(static_cast<unsigned char>(std::clamp(v + noise(rng), 0.0f, 1.0f) * 255.0f + 0.5f));
    labels.push_back(static_cast<unsigned char>(label));
  }
  std::ofstream images(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary);
  write_be32(images, 0x00000803);
  write_be32(images, static_cast<uint32_t>(n));
  write_be32(images, kSide);
  write_be32(images, kSide);
  images.write(reinterpret_cast<const char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  std::ofstream lab(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary);
  write_be32(lab, 0x00000801);
  write_be32(lab, static_cast<uint32_t>(n));
  lab.write(reinterpret_cast<const char*>(labels.data()), static_cast<std::streamsize>(labels.size()));
  if (!images || !lab) throw std::runtime_error("cannot write " + (dir / prefix).string() + "-*");
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: adamerging_make_world OUT_DIR\n";
    return 2;
  }
  try {
    const fs::path out = argv[1];
    std::mt19937 rng(20231004);
    struct Task {
      const char* name;
      Image (*draw)(int, std::mt19937&);
    };
    for (const Task& task : {Task{"bars", bars}, Task{"checks", checks}}) {
      const fs::path dir = out / "data" / task.name;
      fs::create_directories(dir);
      write_split(dir, "train", kTrain, task.draw, rng);
      write_split(dir, "t10k", kTest, task.draw, rng);
      fusion::StateDict head;
      head.set("projection", at::zeros({kProjection, kHidden}));
      head.set("text_embeds", at::zeros({kClasses, kProjection}));
      head.set("logit_scale", at::ones({1}));
      fs::create_directories(out / "heads");
      fusion::save_safetensors(out / "heads" / (std::string(task.name) + ".safetensors"), head,
                               {{"placeholder", "true"}});
    }
    fs::create_directories(out / "model");
    write_text(out / "model" / "config.json", R"({
  "architectures": ["CLIPVisionModel"],
  "model_type": "clip_vision_model",
  "hidden_size": 16,
  "intermediate_size": 32,
  "num_attention_heads": 2,
  "num_hidden_layers": 2,
  "image_size": 12,
  "patch_size": 6,
  "num_channels": 3,
  "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-05,
  "projection_dim": 8,
  "torch_dtype": "float32"
}
)");
    std::cout << "adamerging_make_world: wrote " << out.string() << " (tasks bars, checks)\n";
  } catch (const std::exception& e) {
    std::cerr << "adamerging_make_world: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
