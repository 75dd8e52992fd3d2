// Evaluation throughput and peak memory of a ViT-B/32-shaped CLIP vision tower with random weights
// (issue 3, item 7). Prints one line: "cpp images_per_s=... peak_rss_mib=... ...": the median
// wall time per batch gives images/s; cpu_s_per_batch (process CPU time, all threads) is the figure
// to compare when other work shares the machine.
//
// Mixed precision (issue 11, item 4): the same forward through a bfloat16 copy of the weights
// (GEMMs in bf16, residual stream and norms in float32), batches alternated with float32's, and the
// ratio of the throughputs against the target bf16 ≥ 1.6 × float32 where the CPU has bf16
// instructions (avx512_bf16 / amx_bf16). Elsewhere a run falls back to float32, so bf16 is not timed
// (--emulate 1 times LibTorch's emulation anyway: numerics only) and the target is N/A. Last line:
//   TARGET clip_eval_bf16_throughput <bf16/fp32> >=1.6 MET|MISSED|N/A [note]
// with the top-1 agreement of a random 10-class head over the timed batches beside it.
//
//   fusion_bench_clip [--batch 64] [--iters 5] [--warmup 2] [--threads N] [--bf16 1] [--emulate 0]
//                     [--image 224 --patch 32 --hidden 768 --intermediate 3072 --heads 12 --layers 12]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_stats.hpp"
#include "fusion/clip/vision.hpp"
#include "precision.hpp"

#include "startup.hpp"

namespace {

using fusion::bench::peak_rss_mib;

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  int64_t batch = 64, iters = 5, warmup = 2;
  bool bf16 = true, emulate = false;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  fusion::clip::VisionConfig cfg;  // ViT-B/32: 768 hidden, 3072 MLP, 12 heads, 12 layers, 224 / 32
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (a == "--batch") batch = v;
    else if (a == "--iters") iters = v;
    else if (a == "--warmup") warmup = v;
    else if (a == "--threads") threads = static_cast<int>(v);
    else if (a == "--bf16") bf16 = v != 0;
    else if (a == "--emulate") emulate = v != 0;
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
  const fusion::host::CpuBf16 cpu = fusion::host::cpu_bf16();
  const fusion::host::Precision native =
      fusion::host::resolve_precision(at::kBFloat16, at::Device(at::kCPU), cpu, at::hasMKLDNN(), false);
  const bool have_bf16 = native.compute == at::kBFloat16;
  const bool time_bf16 = bf16 && (have_bf16 || emulate);

  c10::InferenceMode guard;
  // The bf16 copy of the weights, made once as the host makes it for an evaluated model.
  const fusion::StateDict params16 = time_bf16 ? model.parameters().to(at::kCPU, at::kBFloat16) : fusion::StateDict();
  const at::Tensor head = at::randn({10, cfg.hidden_size});
  fusion::bench::PairedTimes t;
  std::vector<double>&secs = t.secs[0], &secs16 = t.secs[1];
  const double &cpu_s = t.cpu_s[0], &cpu16 = t.cpu_s[1];
  int64_t agree = 0, seen = 0;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    at::Tensor out32, out16;
    fusion::bench::time_pair(i, warmup, time_bf16, t, [&](bool low) {
      (low ? out16 : out32) = low ? model.forward(params16, pixels) : model.forward(pixels);
    });
    if (out32.size(0) != batch) return 1;
    if (time_bf16) {
      agree += at::matmul(out32, head.t()).argmax(1).eq(at::matmul(out16, head.t()).argmax(1)).sum().item<int64_t>();
      seen += batch;
    }
  }
  std::sort(secs.begin(), secs.end());
  const double median = secs[secs.size() / 2];
  std::printf("cpp images_per_s=%.2f median_batch_s=%.4f best_batch_s=%.4f cpu_s_per_batch=%.4f "
              "peak_rss_mib=%.1f threads=%d batch=%lld\n",
              batch / median, median, secs.front(), cpu_s / iters, peak_rss_mib(), at::get_num_threads(),
              static_cast<long long>(batch));
  std::fprintf(stderr, "CPU bf16 instructions: %s; oneDNN %s\n", cpu.describe().c_str(), at::hasMKLDNN() ? "yes" : "no");
  if (!bf16) return 0;
  if (!time_bf16) {
    std::fprintf(stderr, "%s\nbf16 is not timed: the speed target can only be checked where the hardware has bf16 "
                 "(--emulate 1 times LibTorch's emulation: numerics only)\n", native.note.c_str());
    std::printf("TARGET clip_eval_bf16_throughput - >=1.6 N/A not applicable: no bf16 hardware (fell back to fp32)\n");
    return 0;
  }
  std::sort(secs16.begin(), secs16.end());
  const double median16 = secs16[secs16.size() / 2];
  const double ratio = median / median16;  // throughput bf16 / float32
  const double agreement = seen ? 100.0 * static_cast<double>(agree) / static_cast<double>(seen) : 0.0;
  std::printf("cpp_bf16%s images_per_s=%.2f median_batch_s=%.4f best_batch_s=%.4f cpu_s_per_batch=%.4f "
              "top1_agreement_pct=%.2f\n",
              have_bf16 ? "" : "_emulated", batch / median16, median16, secs16.front(), cpu16 / iters, agreement);
  if (have_bf16)
    std::printf("TARGET clip_eval_bf16_throughput %.3f >=1.6 %s top-1 agreement %.2f %% (random head)\n", ratio,
                ratio >= 1.6 ? "MET" : "MISSED", agreement);
  else
    std::printf("TARGET clip_eval_bf16_throughput %.3f >=1.6 N/A not applicable: no bf16 hardware (emulated; a run "
                "falls back to fp32); top-1 agreement %.2f %% (random head)\n", ratio, agreement);
  return 0;
}
