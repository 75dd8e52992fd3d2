// Decoding + CLIP preprocessing throughput of the image_classification data pipeline.
//
//   fusion_bench_decode [--images N] [--width W] [--height H] [--size S] [--batch B] [--workers 0,1,2]
//                       [--model 1 [--threads T]]
//
// Writes N synthetic JPEGs (W × H, quality 90, 4:2:0: photo-like colour fields with noise) to a
// temporary folder, then reports, per line, images per second for
//   decode            stb_image alone, one thread
//   decode+preprocess decode, resize of the shortest edge to S (Pillow's bicubic), crop, normalise
//   loader workers=K  the task pool's BatchLoader (batches of B, K background workers) as evaluate()
//                     drains it; K = 0 decodes on the consumer thread
// The last figure is what evaluation can be fed with; compare it with the model's images per second
// (bench/clip: ViT-B/32 forward at batch 64).
// With --model 1, also a ViT-B/32 CLIP vision tower with random weights (T intra-op threads, default
// all cores): its forward alone on random pixels, then ImageClassificationTask::evaluate() on the JPEG
// folder with K workers, first pass (decoding) and second pass (preprocessed images kept in memory).
// evaluate() close to the forward alone means the model does not wait on decoding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <c10/core/InferenceMode.h>

#include <thread>

#include "bench_stats.hpp"
#include "dataset.hpp"
#include "fusion/clip/vision.hpp"
#include "image_classification.hpp"
#include "image.hpp"
#include "loader.hpp"
#include "preprocess.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb/stb_image_write.h>

#include "startup.hpp"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fs = std::filesystem;
using namespace fusion::image_classification;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// CPU seconds of the whole process: images per CPU second does not depend on what else runs.
using fusion::bench::cpu_seconds;

struct Timer {
  Clock::time_point wall = Clock::now();
  double cpu = cpu_seconds();
  void report(const char* what, int64_t images) const {
    const double w = seconds_since(wall), c = cpu_seconds() - cpu;
    std::printf("%-22s images_per_s=%.1f images_per_cpu_s=%.1f\n", what, images / w, images / c);
  }
};

std::vector<uint8_t> synthetic_photo(int w, int h, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.005, 0.08), phase(0, 6.28);
  std::normal_distribution<double> noise(0, 8);
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  double fx[3], fy[3], ph[3];
  for (int c = 0; c < 3; ++c) fx[c] = u(rng), fy[c] = u(rng), ph[c] = phase(rng);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        const double v = 127.5 + 100 * std::sin(fx[c] * x + ph[c]) * std::cos(fy[c] * y - ph[c]) + noise(rng);
        px[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
      }
  return px;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  int64_t n = 512, width = 500, height = 375, size = 224, batch = 64, model_mode = 0;
  int64_t threads = std::thread::hardware_concurrency();
  std::vector<int64_t> workers{0, 1, 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--images") n = std::stoll(v);
    else if (k == "--width") width = std::stoll(v);
    else if (k == "--height") height = std::stoll(v);
    else if (k == "--size") size = std::stoll(v);
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--workers") workers = parse_list(v);
    else if (k == "--model") model_mode = std::stoll(v);
    else if (k == "--threads") threads = std::stoll(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  at::set_num_threads(1);
  const fs::path dir = fs::temp_directory_path() / ("fusion_bench_decode_" + std::to_string(::getpid()));
  fs::create_directories(dir / "0");
  std::mt19937 rng(42);
  // 16 distinct images, repeated: the decoder's cost depends on the content, not on the file name.
  std::vector<std::vector<uint8_t>> files;
  size_t bytes = 0;
  for (int i = 0; i < 16; ++i) {
    const auto px = synthetic_photo(static_cast<int>(width), static_cast<int>(height), rng);
    const fs::path p = dir / "0" / ("img" + std::to_string(i) + ".jpg");
    stbi_write_jpg(p.c_str(), static_cast<int>(width), static_cast<int>(height), 3, px.data(), 90);
    std::ifstream in(p, std::ios::binary);
    files.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    bytes += files.back().size();
  }
  for (int64_t i = 16; i < n; ++i) fs::copy_file(dir / "0" / ("img" + std::to_string(i % 16) + ".jpg"),
                                                 dir / "0" / ("img" + std::to_string(i) + ".jpg"));
  std::printf("images=%lld size=%lldx%lld jpeg_kib=%.1f crop=%lld batch=%lld\n", static_cast<long long>(n),
              static_cast<long long>(width), static_cast<long long>(height), bytes / 16.0 / 1024.0,
              static_cast<long long>(size), static_cast<long long>(batch));

  PreprocessOptions opt;
  opt.image_size = size;
  {
    Timer t;
    for (int64_t i = 0; i < n; ++i) decode_image(files[i % 16].data(), files[i % 16].size(), "x");
    t.report("decode", n);
  }
  {
    std::vector<float> out(3 * size * size);
    Timer t;
    for (int64_t i = 0; i < n; ++i) {
      const Image crop = resize_center_crop(decode_image(files[i % 16].data(), files[i % 16].size(), "x"), size);
      normalize_into(crop, opt, out.data());
    }
    t.report("decode+preprocess", n);
  }
  auto ds = std::make_shared<const Dataset>(Dataset::open(dir, DataFormat::Folder, "bench"));
  for (int64_t k : workers) {
    auto src = std::make_shared<SampleSource>(ds, opt, false);
    LoaderOptions lo;
    lo.batch_size = batch;
    lo.num_workers = k;
    const int64_t batches = (n + batch - 1) / batch;
    Timer t;
    BatchLoader loader(src, [&](int64_t b) {
      std::vector<int64_t> idx;
      for (int64_t i = b * batch; i < std::min(n, (b + 1) * batch); ++i) idx.push_back(i);
      return idx;
    }, batches, lo);
    int64_t seen = 0;
    while (auto b = loader.next()) seen += b->inputs.size(0);
    t.report(("loader workers=" + std::to_string(k)).c_str(), seen);
  }
  if (model_mode) {
    at::set_num_threads(static_cast<int>(threads));
    fusion::clip::VisionConfig cfg;  // ViT-B/32
    cfg.image_size = size;
    auto model = std::make_shared<fusion::clip::ClipVisionModel>(
        fusion::clip::ClipVisionModel::random_parameters(cfg, 0), cfg);
    {
      c10::InferenceMode guard;
      at::Tensor pixels = at::randn({batch, 3, size, size});
      model->forward(pixels);  // warm-up
      Timer t;
      for (int64_t i = 0; i < (n + batch - 1) / batch; ++i) model->forward(pixels);
      t.report(("model forward t=" + std::to_string(threads)).c_str(), (n + batch - 1) / batch * batch);
    }
    fusion::clip::ZeroShotHead head;
    head.projection = at::randn({512, cfg.hidden_size});
    head.text_embeds = at::randn({10, 512});
    head.logit_scale = 100.0;
    std::ofstream(dir / "classes.json") << R"(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])";
    for (int64_t k : workers) {
      TaskSpec spec;
      spec.name = "bench";
      spec.test = dir;
      spec.format = DataFormat::Folder;
      spec.info = dir / "classes.json";
      ImageClassificationOptions opt2;
      opt2.clip_model = dir;  // not read: the head is set below
      opt2.batch_size = batch;
      opt2.num_workers = k;
      opt2.preprocess = opt;
      fusion::Context::Settings settings;
      settings.progress = false;
      ImageClassificationTask task(spec, opt2, fusion::Context(settings));
      task.keep_in_memory(true, false);
      task.set_head(head);
      for (int pass = 1; pass <= 2; ++pass) {
        Timer t;
        task.evaluate(*model);
        t.report(("evaluate workers=" + std::to_string(k) + (pass == 1 ? " decoding" : " cached")).c_str(), n);
      }
    }
  }
  fs::remove_all(dir);
  return 0;
}
