// Evaluation throughput and peak memory of GPT-2 small's shape (issue 12, item 6): a
// GPT2ForSequenceClassification (families/gpt2, 124 M body parameters, 2 labels, pad = eos) with random
// weights, float32, no autograd, on batches of random token ids [batch, seq] without padding (so the
// pooled token is each row's last, as with FusionBench's right padding). Prints one line:
//   cpp tokens_per_s=... median_batch_s=... best_batch_s=... cpu_s_per_batch=... peak_rss_mib=... ...
// tokens_per_s = batch·seq / median wall time per batch; cpu_s_per_batch (process CPU time, all
// threads) is the figure to compare when other work shares the machine. bench/gpt2/run.sh puts it
// beside bench_gpt2_eval.py, the same forward in python3-torch.
// With --bf16 1 (issue 11, item 4, for the language half): the same forward also through a bfloat16
// copy of the weights, as the host evaluates a model with [run] dtype = "bfloat16", batches alternated
// with float32's; a second line `cpp_bf16 tokens_per_s=... top1_agreement_pct=...` and
//   TARGET gpt2_eval_bf16_throughput <bf16/fp32 tokens/s> >=1.6 MET|MISSED|N/A [note]
// N/A where the CPU has no bf16 instructions (the run would compute in float32; --emulate 1 times
// LibTorch's emulation anyway, for numerics only).
//
//   fusion_bench_gpt2 [--batch 8] [--seq 128] [--iters 5] [--warmup 2] [--threads N] [--bf16 0 --emulate 0]
//                     [--layers 12 --hidden 768 --heads 12 --vocab 50257 --positions 1024]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench_stats.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/model.hpp"

#include "precision.hpp"
#include "startup.hpp"

namespace {

using fusion::bench::peak_rss_mib;

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  try {
    int64_t batch = 8, seq = 128, iters = 5, warmup = 2;
    bool bf16 = false, emulate = false;
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // GPT-2 small, as Hugging Face's GPT2Config defaults; pad = eos, as FusionBench sets it.
    nlohmann::json config = {{"n_layer", 12},       {"n_embd", 768},         {"n_head", 12},
                             {"vocab_size", 50257}, {"n_positions", 1024},   {"activation_function", "gelu_new"},
                             {"num_labels", 2},     {"pad_token_id", 50256}, {"eos_token_id", 50256}};
    for (int i = 1; i < argc; i += 2) {
      const std::string a = argv[i];
      FUSION_ENSURE(i + 1 < argc, "option ", a, " needs a value");
      char* end = nullptr;
      const long long v = std::strtoll(argv[i + 1], &end, 10);
      const bool flag = a == "--bf16" || a == "--emulate";
      FUSION_ENSURE(end != argv[i + 1] && *end == '\0' && (flag ? v == 0 || v == 1 : v > 0), "option ", a, " needs ",
                    flag ? "0 or 1" : "a positive integer", ", got '", argv[i + 1], "'");
      if (a == "--bf16") bf16 = v != 0;
      else if (a == "--emulate") emulate = v != 0;
      else if (a == "--batch") batch = v;
      else if (a == "--seq") seq = v;
      else if (a == "--iters") iters = v;
      else if (a == "--warmup") warmup = v;
      else if (a == "--threads") threads = static_cast<int>(v);
      else if (a == "--layers") config["n_layer"] = v;
      else if (a == "--hidden") config["n_embd"] = v;
      else if (a == "--heads") config["n_head"] = v;
      else if (a == "--vocab") config["vocab_size"] = v;
      else if (a == "--positions") config["n_positions"] = v;
      else FUSION_FAIL("unknown option ", a);
    }
    at::set_num_threads(threads);
    const fusion::gpt2::Gpt2Config cfg = fusion::gpt2::Gpt2Config::from_json(config, "options");
    FUSION_ENSURE(seq <= cfg.n_positions, "--seq ", seq, " exceeds n_positions ", cfg.n_positions);
    const auto head = fusion::gpt2::Gpt2Head::kSequenceClassification;
    fusion::gpt2::Gpt2Model model(fusion::gpt2::Gpt2Model::random_parameters(cfg, head, 0), config, head, "random");
    int64_t body = 0;
    for (const auto& [k, t] : model.parameters())
      if (k.rfind(fusion::gpt2::body_prefix(), 0) == 0) body += t.numel();
    // Ids below the pad token: no row is padded, every row pools its last token.
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
    const at::Tensor ids = at::randint(0, std::min<int64_t>(cfg.vocab_size, 50256), {batch, seq}, g);

    const fusion::host::CpuBf16 cpu = fusion::host::cpu_bf16();
    const bool have_bf16 =
        fusion::host::resolve_precision(at::kBFloat16, at::Device(at::kCPU), cpu, at::hasMKLDNN(), false).compute ==
        at::kBFloat16;
    const bool time_bf16 = bf16 && (have_bf16 || emulate);

    c10::InferenceMode guard;
    // The bf16 copy of the weights, made once as the host makes it for an evaluated model.
    const fusion::StateDict params16 = time_bf16 ? model.parameters().to(at::kCPU, at::kBFloat16) : fusion::StateDict();
    fusion::bench::PairedTimes t;
    std::vector<double>&secs = t.secs[0], &secs16 = t.secs[1];
    const double &cpu_s = t.cpu_s[0], &cpu16 = t.cpu_s[1];
    int64_t agree = 0, seen = 0;
    at::Tensor logits;
    for (int64_t i = 0; i < warmup + iters; ++i) {
      at::Tensor out16;
      fusion::bench::time_pair(i, warmup, time_bf16, t, [&](bool low) {
        (low ? out16 : logits) = low ? model.forward(params16, ids) : model.forward(ids);
      });
      if (time_bf16) {
        agree += logits.argmax(1).eq(out16.argmax(1)).sum().item<int64_t>();
        seen += batch;
      }
    }
    FUSION_ENSURE(logits.size(0) == batch && logits.size(1) == cfg.num_labels && logits.isfinite().all().item<bool>(),
                  "the forward gave logits of shape ", logits.sizes(), " or non-finite values");
    std::sort(secs.begin(), secs.end());
    const double median = secs[secs.size() / 2];
    std::printf("cpp tokens_per_s=%.1f median_batch_s=%.4f best_batch_s=%.4f cpu_s_per_batch=%.4f "
                "peak_rss_mib=%.1f threads=%d batch=%lld seq=%lld body_params=%lld\n",
                static_cast<double>(batch * seq) / median, median, secs.front(), cpu_s / static_cast<double>(iters),
                peak_rss_mib(), at::get_num_threads(), static_cast<long long>(batch), static_cast<long long>(seq),
                static_cast<long long>(body));
    if (!bf16) return 0;
    std::fprintf(stderr, "CPU bf16 instructions: %s; oneDNN %s\n", cpu.describe().c_str(), at::hasMKLDNN() ? "yes" : "no");
    if (!time_bf16) {
      std::printf("TARGET gpt2_eval_bf16_throughput - >=1.6 N/A not applicable: no bf16 hardware (fell back to fp32)\n");
      return 0;
    }
    std::sort(secs16.begin(), secs16.end());
    const double median16 = secs16[secs16.size() / 2];
    const double ratio = median / median16;  // throughput bf16 / float32
    const double agreement = 100.0 * static_cast<double>(agree) / static_cast<double>(seen);
    std::printf("cpp_bf16%s tokens_per_s=%.1f median_batch_s=%.4f best_batch_s=%.4f cpu_s_per_batch=%.4f "
                "top1_agreement_pct=%.2f\n",
                have_bf16 ? "" : "_emulated", static_cast<double>(batch * seq) / median16, median16, secs16.front(),
                cpu16 / static_cast<double>(iters), agreement);
    if (have_bf16)
      std::printf("TARGET gpt2_eval_bf16_throughput %.3f >=1.6 %s top-1 agreement %.2f %% (random head)\n", ratio,
                  ratio >= 1.6 ? "MET" : "MISSED", agreement);
    else
      std::printf("TARGET gpt2_eval_bf16_throughput %.3f >=1.6 N/A not applicable: no bf16 hardware (emulated; a run "
                  "would compute in float32)\n",
                  ratio);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fusion_bench_gpt2: %s\n", e.what());
    return 2;
  }
}
