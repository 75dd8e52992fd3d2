// Evaluation throughput and peak memory of a ViT-B/32-shaped CLIP vision tower with random weights
// (issue 3, item 7). Prints one line: "cpp images_per_s=... peak_rss_mib=... ...": the median
// wall time per batch gives images/s; cpu_s_per_batch (process CPU time, all threads) is the figure
// to compare when other work shares the machine.
//
//   fusion_bench_clip [--batch 64] [--iters 5] [--warmup 2] [--threads N] [--image 224 --patch 32
//                      --hidden 768 --intermediate 3072 --heads 12 --layers 12]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fusion/clip/vision.hpp"

namespace {

// CPU time of the whole process (all threads): robust against other load on the machine.
double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // KiB on Linux
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 64, iters = 5, warmup = 2;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  fusion::clip::VisionConfig cfg;  // ViT-B/32: 768 hidden, 3072 MLP, 12 heads, 12 layers, 224 / 32
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (a == "--batch") batch = v;
    else if (a == "--iters") iters = v;
    else if (a == "--warmup") warmup = v;
    else if (a == "--threads") threads = static_cast<int>(v);
    else if (a == "--image") cfg.image_size = v;
    else if (a == "--patch") cfg.patch_size = v;
    else if (a == "--hidden") cfg.hidden_size = v;
    else if (a == "--intermediate") cfg.intermediate_size = v;
    else if (a == "--heads") cfg.num_attention_heads = v;
    else if (a == "--layers") cfg.num_hidden_layers = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  at::set_num_threads(threads);
  fusion::clip::ClipVisionModel model(fusion::clip::ClipVisionModel::random_parameters(cfg, 0), cfg);
  at::Tensor pixels = at::randn({batch, 3, cfg.image_size, cfg.image_size});

  c10::InferenceMode guard;
  std::vector<double> secs;
  double cpu = 0;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_s();
    at::Tensor out = model.forward(pixels);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) {
      secs.push_back(s);
      cpu += process_cpu_s() - c0;
    }
    if (out.size(0) != batch) return 1;
  }
  std::sort(secs.begin(), secs.end());
  const double median = secs[secs.size() / 2];
  std::printf("cpp images_per_s=%.2f median_batch_s=%.4f best_batch_s=%.4f cpu_s_per_batch=%.4f "
              "peak_rss_mib=%.1f threads=%d batch=%lld\n",
              batch / median, median, secs.front(), cpu / iters, peak_rss_mib(), at::get_num_threads(),
              static_cast<long long>(batch));
  return 0;
}
