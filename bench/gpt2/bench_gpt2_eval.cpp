// Evaluation throughput and peak memory of GPT-2 small's shape (issue 12, item 6): a
// GPT2ForSequenceClassification (families/gpt2, 124 M body parameters, 2 labels, pad = eos) with random
// weights, float32, no autograd, on batches of random token ids [batch, seq] without padding (so the
// pooled token is each row's last, as with FusionBench's right padding). Prints one line:
//   cpp tokens_per_s=... median_batch_s=... best_batch_s=... cpu_s_per_batch=... peak_rss_mib=... ...
// tokens_per_s = batch·seq / median wall time per batch; cpu_s_per_batch (process CPU time, all
// threads) is the figure to compare when other work shares the machine. bench/gpt2/run.sh puts it
// beside bench_gpt2_eval.py, the same forward in python3-torch.
//
//   fusion_bench_gpt2 [--batch 8] [--seq 128] [--iters 5] [--warmup 2] [--threads N]
//                     [--layers 12 --hidden 768 --heads 12 --vocab 50257 --positions 1024]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench_stats.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/model.hpp"

#include "startup.hpp"

namespace {

// CPU time of the whole process (all threads): robust against other load on the machine.
using fusion::bench::cpu_seconds;
using fusion::bench::peak_rss_mib;

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  try {
    int64_t batch = 8, seq = 128, iters = 5, warmup = 2;
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
      FUSION_ENSURE(end != argv[i + 1] && *end == '\0' && v > 0, "option ", a, " needs a positive integer, got '",
                    argv[i + 1], "'");
      if (a == "--batch") batch = v;
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

    c10::InferenceMode guard;
    std::vector<double> secs;
    double cpu_s = 0;
    at::Tensor logits;
    for (int64_t i = 0; i < warmup + iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_seconds();
      logits = model.forward(ids);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (i >= warmup) {
        secs.push_back(s);
        cpu_s += cpu_seconds() - c0;
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
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fusion_bench_gpt2: %s\n", e.what());
    return 2;
  }
}
