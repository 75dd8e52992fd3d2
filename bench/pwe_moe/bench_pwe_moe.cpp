// PWEMoE benchmarks (issue 4, "Memory and speed"; issue 9, "One training step"):
//   memory: peak RSS while the Pareto weight-ensembling model is set up from a pool that makes
//           its experts on demand, against 1.2 × (pretrained + T × upscaled task vectors + one expert);
//   step:   one training step side by side, the variants alternated rep by rep so that the load of a
//           shared machine falls on all of them alike:
//             LS       today's LS step: the weights r are known first, one backward of Σ rₜ Lₜ;
//             unified  LS weights through the per-task path EPO needs (T router gradients Gₜ, the
//                      Gram matrix G Gᵀ, then Σ wₜ Gₜ): the single step both would share;
//             EPO      (with --full 1) the EPO step;
//           and one forward + backward of the plain merged model on the same T batches (gradients of
//           the upscaled parameters, and of all).
// The model is CLIP's ViT-B/32 vision tower (families/clip) when built with it, else a wide tiny
// transformer. Usage:
//   OMP_WAIT_POLICY=PASSIVE fusion_bench_pwe_moe memory --tasks 8
//   OMP_WAIT_POLICY=PASSIVE fusion_bench_pwe_moe step --tasks 8 --batch 16 --reps 3 [--layers 12]
//   (--full 0 times only LS, unified and the plain pass with the upscaled gradients)
//   precision: the LS step in float32 and in mixed bfloat16 ([run] dtype = "bfloat16": the
//           network's GEMMs in bf16, routers, Adam, g(r), θ(r) and its gradient in float32), alternated
//           rep by rep on the same routers and batches, at T = 2 and T = 8; the target is bf16 ≤ 0.6 × the
//           float32 step where the CPU has bf16 instructions (avx512_bf16 / amx_bf16). Elsewhere a run
//           falls back to float32, so the target is not applicable and bf16 is not timed (--emulate 1
//           times LibTorch's emulation anyway, ~10x slower: numerics only). Ends with one line per T:
//             TARGET pwe_moe_bf16_step_T<T> <bf16/fp32> <=0.6 MET|MISSED|N/A [note]
//   OMP_WAIT_POLICY=PASSIVE fusion_bench_pwe_moe precision [--batch 16 --reps 3 --emulate 0]
//   dist-step: the LS step over W ranks (issue 13, item 8). Run without WORLD_SIZE, the program starts
//           W copies of itself (--nproc W, default 2) through the host's launcher, with torchrun's
//           environment; run by a torchrun-style launcher, it is one rank. The ranks meet through the
//           host's own rendezvous (TCPStore, then ProcessGroupGloo on MASTER_ADDR). Rep by rep,
//           alternated in the same processes: rank 0 alone takes the one-process step on all T tasks
//           with --threads threads (the other ranks wait in a barrier), then every rank takes the
//           distributed step on its tasks (task t on rank t mod W) with --threads / W threads each.
//           The collectives of the distributed step are counted (bytes per rank and per step), then
//           replayed alone to time them on the loopback. --epo 1 also counts an EPO step's exchange.
//           Ends with
//             TARGET pwe_moe_ls_<W>ranks_step_T<T> <W ranks / 1 rank> <=1.0 MET|MISSED [note]
//             TARGET pwe_moe_ls_bytes_per_step_T<T>_<W>ranks <bytes one rank sends> - N/A [note]
//   OMP_WAIT_POLICY=PASSIVE fusion_bench_pwe_moe dist-step --tasks 8 --batch 16 --reps 3 [--nproc 2 --epo 1]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <set>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <dlfcn.h>

#include "bench_stats.hpp"
#include "distributed.hpp"
#include "fusion/context.hpp"
#include "fusion/distributed.hpp"
#include "fusion/error.hpp"
#include "pareto_weight_ensembling.hpp"
#include "precision.hpp"
#include "pwe_moe.hpp"
#include "tiny_model.hpp"

#ifdef FUSION_BENCH_HAVE_CLIP
#include "fusion/clip/vision.hpp"

#include "startup.hpp"
#endif

namespace {

using namespace fusion;
using namespace fusion::methods;

int64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0) return std::stoll(line.substr(n + 1));
  return -1;
}

void reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

struct Arch {
  ModelPtr pretrained;
  std::string name;
  int64_t feature_dim = 0;
  std::vector<int64_t> input_shape;  // per example
};

Arch make_arch(int64_t layers, int64_t image) {
  Arch a;
#ifdef FUSION_BENCH_HAVE_CLIP
  clip::VisionConfig cfg;  // ViT-B/32
  cfg.num_hidden_layers = layers;
  cfg.image_size = image;
  a.pretrained = std::make_shared<clip::ClipVisionModel>(clip::ClipVisionModel::random_parameters(cfg, 1), cfg);
  a.name = "clip_vision ViT-B/32 (" + std::to_string(layers) + " layers, " + std::to_string(image) + "px)";
  a.feature_dim = cfg.hidden_size;
  a.input_shape = {3, image, image};
#else
  (void)image;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  a.pretrained = std::make_shared<pwe_test::TinyModel>(pwe_test::random_tiny_params(static_cast<int>(layers), g));
  a.name = "tiny transformer (CLIP family not built)";
  a.feature_dim = pwe_test::kD;
  a.input_shape = {pwe_test::kDin};
#endif
  return a;
}

// Experts made on demand from the pretrained model (θ₀ + small noise), so the pool holds only θ₀.
class SynthPool : public ModelPool {
 public:
  SynthPool(ModelPtr pre, int T) : pre_(std::move(pre)), T_(T) {}
  std::vector<std::string> expert_names() const override {
    std::vector<std::string> n;
    for (int t = 0; t < T_; ++t) n.push_back("task" + std::to_string(t));
    return n;
  }
  bool has_pretrained() const override { return true; }
  ConstModelPtr pretrained() override { return pre_; }
  ModelPtr load(const std::string& name) override {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(std::hash<std::string>{}(name));
    StateDict p;
    c10::NoGradGuard ng;
    for (const auto& [k, v] : pre_->parameters()) {
      if (!v.is_floating_point()) {
        p.set(k, v);
        continue;
      }
      at::Tensor e = at::empty_like(v);
      e.normal_(0.0, 0.01, g);
      e.add_(v);
      p.set(k, e);
    }
    return pre_->with_parameters(std::move(p));
  }
  void save(const Model&, const std::filesystem::path&) const override {}

 private:
  ModelPtr pre_;
  int T_;
};

class HeadTask : public Task {
 public:
  HeadTask(std::string name, int64_t classes, int64_t dim, uint64_t seed) : name_(std::move(name)) {
    head_ = at::randn({classes, dim}, at::make_generator<at::CPUGeneratorImpl>(seed)) / std::sqrt(double(dim));
  }
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return head_.size(0); }
  bool has_train_split() const override { return true; }
  std::unique_ptr<BatchStream> train_stream(int64_t, uint64_t) override { return nullptr; }
  at::Tensor logits(const Model& m, const StateDict& p, const at::Tensor& x) const override {
    return at::matmul(m.forward(p, x), head_.t());
  }
  nlohmann::json evaluate(const Model&) override { return {}; }

 private:
  std::string name_;
  at::Tensor head_;
};

Context quiet_context() {
  Context::Settings s;
  s.progress = false;
  return Context(s);
}

int run_memory(int T, int64_t layers, int64_t image) {
  const int64_t rss0 = status_kib("VmRSS:");
  Arch a = make_arch(layers, image);
  SynthPool pool(a.pretrained, T);
  const Context ctx = quiet_context();
  reset_peak_rss();
  const auto t0 = std::chrono::steady_clock::now();
  auto pwe = ParetoWeightEnsembling::from_pool(pool, ctx, {}, "bench");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t peak = status_kib("VmHWM:") - rss0;
  const int64_t pre_bytes = a.pretrained->parameters().nbytes();
  const int64_t tv = pwe->task_vector_bytes();
  const int64_t budget = pre_bytes + tv + pre_bytes;
  std::printf("model: %s, T = %d\n", a.name.c_str(), T);
  std::printf("pretrained %.1f MiB, T x upscaled task vectors %.1f MiB, one expert %.1f MiB\n", mib(pre_bytes), mib(tv),
              mib(pre_bytes));
  std::printf("setup %.2f s; peak RSS during setup (above the process before the model) %.1f MiB\n", secs,
              static_cast<double>(peak) / 1024);
  std::printf("budget 1.2 x %.1f = %.1f MiB -> ratio %.3f of the budget (%s)\n", mib(budget), 1.2 * mib(budget),
              (peak * 1024.0) / (1.2 * budget), peak * 1024.0 <= 1.2 * budget ? "within" : "OVER");
  return 0;
}

double seconds_of(const std::function<void()>& fn, int reps) {
  fn();  // warm-up
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// LS's weights (r) through the per-task-gradient path EPO takes: the unified step's cost for LS.
class UnifiedLs : public PweMoeLs {
 protected:
  bool needs_gradient_gram() const override { return true; }
};

using fusion::bench::median;
using fusion::bench::series;

// The routers' gradients after one step (lr 0: the routers do not move), flattened.
at::Tensor router_grads_after(PweMoeAlgorithm& algo, ParetoWeightEnsembling& pwe, Adam& adam,
                              const std::vector<Task*>& tasks, const std::vector<Batch>& batches,
                              const std::vector<double>& r) {
  algo.step(pwe, adam, tasks, batches, r, 0.0, 1);
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : pwe.router_parameters()) flat.push_back(p.grad().reshape({-1}).clone());
  return at::cat(flat);
}

int run_step(int T, int64_t batch, int reps, int64_t layers, int64_t image, bool full) {
  Arch a = make_arch(layers, image);
  SynthPool pool(a.pretrained, T);
  const Context ctx = quiet_context();
  auto pwe = ParetoWeightEnsembling::from_pool(pool, ctx, {}, "bench");
  std::vector<std::unique_ptr<HeadTask>> owned;
  std::vector<Task*> tasks;
  std::vector<Batch> batches;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int t = 0; t < T; ++t) {
    owned.push_back(std::make_unique<HeadTask>("task" + std::to_string(t), 10, a.feature_dim, 100 + t));
    tasks.push_back(owned.back().get());
    std::vector<int64_t> shape{batch};
    shape.insert(shape.end(), a.input_shape.begin(), a.input_shape.end());
    batches.push_back({at::randn(shape, g), at::randint(10, {batch}, g)});
  }
  // A preference off the centre, so that the weights differ from task to task.
  std::vector<double> r(T);
  double sum = 0;
  for (int t = 0; t < T; ++t) sum += (r[t] = 1.0 + t);
  for (double& v : r) v /= sum;
  PweMoeLs ls;
  UnifiedLs unified;
  PweMoeEpo epo;
  fusion::Adam adam(pwe->router_parameters());
  // Wall seconds, and the process's CPU seconds (all threads), which other load disturbs less.
  std::vector<double> cpu_ls, cpu_unified;
  auto time_step = [&](PweMoeAlgorithm& algo, std::vector<double>* cpu = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = fusion::bench::cpu_seconds();
    algo.step(*pwe, adam, tasks, batches, r, 0.0, 1);  // lr 0: every rep steps the same routers
    if (cpu) cpu->push_back(fusion::bench::cpu_seconds() - c0);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Warm-up, and the same gradient both ways (they differ only in rounding).
  const at::Tensor g_ls = router_grads_after(ls, *pwe, adam, tasks, batches, r);
  const at::Tensor g_unified = router_grads_after(unified, *pwe, adam, tasks, batches, r);
  const double grad_diff = (g_ls - g_unified).abs().max().item<double>() / g_ls.abs().max().item<double>();
  if (full) time_step(epo);
  std::vector<double> t_ls, t_unified, t_epo, ratios;
  for (int i = 0; i < reps; ++i) {
    if (i % 2 == 0) {
      t_ls.push_back(time_step(ls, &cpu_ls));
      t_unified.push_back(time_step(unified, &cpu_unified));
    } else {
      t_unified.push_back(time_step(unified, &cpu_unified));
      t_ls.push_back(time_step(ls, &cpu_ls));
    }
    ratios.push_back(t_unified.back() / t_ls.back());
    if (full) t_epo.push_back(time_step(epo));
  }

  // What the unified step adds for LS: a projection ⟨τ, ∂Lₜ/∂θ⟩ per task instead of one (each reads
  // every upscaled task vector), T router backward passes, zeroing the merged tensors' gradients.
  StateDict fake_grads;
  for (const auto& grp : pwe->groups())
    for (size_t k = 0; k < grp.keys.size(); ++k) fake_grads.set(grp.keys[k], at::randn(grp.base[k].sizes(), g));
  const double t_projection = seconds_of([&] { pwe->group_weight_grads(fake_grads); }, 5);

  ModelPtr merged = pwe->merge_and_unload(r);
  std::set<std::string> upscaled;
  for (const auto& grp : pwe->groups()) upscaled.insert(grp.keys.begin(), grp.keys.end());
  auto plain = [&](bool all) {
    StateDict p;
    for (const auto& [k, v] : merged->parameters()) {
      at::Tensor x = v.detach();
      if (x.is_floating_point() && (all || upscaled.count(k))) x.requires_grad_(true);
      p.set(k, x);
    }
    for (int t = 0; t < T; ++t) tasks[t]->loss(*merged, p, batches[t]).backward();
  };
  const int plain_reps = std::max(1, reps / 2);
  const double t_plain_up = seconds_of([&] { plain(false); }, plain_reps);
  const double t_plain_all = full ? seconds_of([&] { plain(true); }, plain_reps) : NAN;
  const double ls_best = *std::min_element(t_ls.begin(), t_ls.end());
  std::printf("model: %s, T = %d, batch %lld per task, %d threads, %d reps (alternated)\n", a.name.c_str(), T,
              static_cast<long long>(batch), at::get_num_threads(), reps);
  std::printf("router parameters %lld in %zu groups; upscaled task vectors %.1f MiB\n",
              static_cast<long long>(pwe->num_router_parameters()), pwe->groups().size(), mib(pwe->task_vector_bytes()));
  std::printf("                          best      median    each rep (s)\n");
  std::printf("LS step (today)        %8.3f  %8.3f    %s\n", ls_best, median(t_ls), series(t_ls).c_str());
  std::printf("unified step (LS)      %8.3f  %8.3f    %s\n", *std::min_element(t_unified.begin(), t_unified.end()),
              median(t_unified), series(t_unified).c_str());
  if (full)
    std::printf("EPO step               %8.3f  %8.3f    %s\n", *std::min_element(t_epo.begin(), t_epo.end()),
                median(t_epo), series(t_epo).c_str());
  std::printf("unified / LS: best %.3f, median %.3f, per rep pair %s (median %.3f)\n",
              *std::min_element(t_unified.begin(), t_unified.end()) / ls_best, median(t_unified) / median(t_ls),
              series(ratios).c_str(), median(ratios));
  std::printf("CPU seconds: LS %s (median %.3f); unified %s (median %.3f) -> unified / LS %.3f\n",
              series(cpu_ls).c_str(), median(cpu_ls), series(cpu_unified).c_str(), median(cpu_unified),
              median(cpu_unified) / median(cpu_ls));
  std::printf("one projection <tau, dL/dtheta> over the upscaled groups: %.3f s (best of 5); (T - 1) of them "
              "= %.1f %% of the best LS step\n",
              t_projection, 100.0 * (T - 1) * t_projection / ls_best);
  std::printf("router gradient, unified vs LS: max |diff| / max |grad| = %.2e\n", grad_diff);
  std::printf("plain merged fwd+bwd (upscaled grads) %8.3f s  -> LS/plain %.3fx\n", t_plain_up, ls_best / t_plain_up);
  if (full) std::printf("plain merged fwd+bwd (all grads)      %8.3f s  -> LS/plain %.3fx\n", t_plain_all, ls_best / t_plain_all);
  return 0;
}

// LS steps in float32 and mixed bfloat16 side by side (see the file comment).
int run_precision(const std::vector<int>& task_counts, int64_t batch, int reps, int64_t layers, int64_t image,
                  bool emulate) {
  const host::CpuBf16 cpu = host::cpu_bf16();
  const host::Precision native = host::resolve_precision(at::kBFloat16, at::Device(at::kCPU), cpu, at::hasMKLDNN(), false);
  const bool have_bf16 = native.compute == at::kBFloat16;
  const bool time_bf16 = have_bf16 || emulate;
  std::printf("CPU bf16 instructions: %s; oneDNN %s; %d threads\n", cpu.describe().c_str(),
              at::hasMKLDNN() ? "yes" : "no", at::get_num_threads());
  if (!have_bf16)
    std::printf("%s\n%s\n", native.note.c_str(),
                emulate ? "--emulate 1: timing LibTorch's bf16 emulation anyway (numerics only; the speed target "
                          "is checked where the hardware has bf16)"
                        : "bf16 is not timed: the speed target can only be checked where the hardware has bf16");
  std::vector<std::string> targets;
  for (int T : task_counts) {
    Arch a = make_arch(layers, image);
    SynthPool pool(a.pretrained, T);
    const Context ctx = quiet_context();
    auto pwe = ParetoWeightEnsembling::from_pool(pool, ctx, {}, "bench");
    std::vector<std::unique_ptr<HeadTask>> owned;
    std::vector<Task*> tasks;
    std::vector<Batch> batches;
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
    for (int t = 0; t < T; ++t) {
      owned.push_back(std::make_unique<HeadTask>("task" + std::to_string(t), 10, a.feature_dim, 100 + t));
      tasks.push_back(owned.back().get());
      std::vector<int64_t> shape{batch};
      shape.insert(shape.end(), a.input_shape.begin(), a.input_shape.end());
      batches.push_back({at::randn(shape, g), at::randint(10, {batch}, g)});
    }
    std::vector<double> r(T);
    double sum = 0;
    for (int t = 0; t < T; ++t) sum += (r[t] = 1.0 + t);
    for (double& v : r) v /= sum;
    PweMoeLs ls;
    fusion::Adam adam(pwe->router_parameters());
    auto step_in = [&](at::ScalarType dtype) {
      pwe->set_compute_dtype(dtype);
      const auto t0 = std::chrono::steady_clock::now();
      ls.step(*pwe, adam, tasks, batches, r, 0.0, 1);  // lr 0: every rep steps the same routers
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    auto grads = [&]() {
      std::vector<at::Tensor> flat;
      for (const at::Tensor& p : pwe->router_parameters()) flat.push_back(p.grad().reshape({-1}).to(at::kDouble));
      return at::cat(flat);
    };
    // Warm-up, and the router gradients both ways.
    step_in(at::kFloat);
    const at::Tensor g32 = grads();
    double grad_rel = NAN, grad_cos = NAN;
    if (time_bf16) {
      step_in(at::kBFloat16);
      const at::Tensor g16 = grads();
      grad_rel = (g16 - g32).abs().max().item<double>() / g32.abs().max().item<double>();
      grad_cos = (g16.dot(g32) / (g16.norm() * g32.norm())).item<double>();
    }
    std::vector<double> t32, t16, ratios;
    for (int i = 0; i < reps; ++i) {
      if (!time_bf16) {
        t32.push_back(step_in(at::kFloat));
        continue;
      }
      if (i % 2 == 0) {
        t32.push_back(step_in(at::kFloat));
        t16.push_back(step_in(at::kBFloat16));
      } else {
        t16.push_back(step_in(at::kBFloat16));
        t32.push_back(step_in(at::kFloat));
      }
      ratios.push_back(t16.back() / t32.back());
    }
    std::printf("\nmodel: %s, T = %d, batch %lld per task, %d reps (alternated)\n", a.name.c_str(), T,
                static_cast<long long>(batch), reps);
    std::printf("                          best      median    each rep (s)\n");
    std::printf("LS step float32        %8.3f  %8.3f    %s\n", *std::min_element(t32.begin(), t32.end()), median(t32),
                series(t32).c_str());
    char line[256];
    const std::string name = "pwe_moe_bf16_step_T" + std::to_string(T);
    if (time_bf16) {
      std::printf("LS step bf16%s  %8.3f  %8.3f    %s\n", have_bf16 ? " (mixed)  " : " (emul.)  ",
                  *std::min_element(t16.begin(), t16.end()), median(t16), series(t16).c_str());
      const double ratio = median(ratios);
      std::printf("bf16 / float32: per rep pair %s, median %.3f (target <= 0.6 where the hardware has bf16)\n",
                  series(ratios).c_str(), ratio);
      std::printf("router gradient, bf16 vs float32: max |diff| / max |grad| = %.2e, cosine %.6f\n", grad_rel, grad_cos);
      if (have_bf16)
        std::snprintf(line, sizeof(line), "TARGET %s %.3f <=0.6 %s", name.c_str(), ratio, ratio <= 0.6 ? "MET" : "MISSED");
      else
        std::snprintf(line, sizeof(line), "TARGET %s %.3f <=0.6 N/A not applicable: no bf16 hardware (emulated; a run "
                      "falls back to fp32)", name.c_str(), ratio);
    } else {
      std::snprintf(line, sizeof(line), "TARGET %s - <=0.6 N/A not applicable: no bf16 hardware (fell back to fp32)",
                    name.c_str());
    }
    targets.push_back(line);
  }
  std::printf("\n");
  for (const std::string& t : targets) std::printf("%s\n", t.c_str());
  return 0;
}


// ---------------------------------------------------------------------------------------------
// dist-step: the LS step over several ranks against one process (see the file comment).

// The intra-op threads and OpenBLAS's own pool, which runs the GEMMs and which at::set_num_threads
// does not reach (Debian's LibTorch calls the system BLAS): without it a "1 thread" rank would
// still multiply on every core.
bool set_compute_threads(int n) {
  at::set_num_threads(n);
  using SetThreads = void (*)(int);
  static const auto openblas = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (openblas) openblas(n);
  return openblas != nullptr;
}

// One collective as a rank issued it.
struct Exchange {
  std::string op;  // "all_reduce", "all_gather", "broadcast", "barrier"
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;
  int64_t bytes = 0;  // the tensor this rank hands in
};

// What one rank sends for `e` over W ranks with Gloo's algorithms: a ring all-gather forwards W − 1
// blocks of N bytes; a ring all-reduce sends 2(W − 1)/W · N; a broadcast sends (W − 1) · N from the
// root (counted for every rank: an upper bound).
double wire_bytes(const Exchange& e, int W) {
  const double n = static_cast<double>(e.bytes);
  if (e.op == "all_gather" || e.op == "broadcast") return (W - 1) * n;
  if (e.op == "all_reduce") return 2.0 * (W - 1) / W * n;
  return 0.0;
}

// The run's communicator, recording every collective that goes through it.
class CountingCommunicator : public Communicator {
 public:
  explicit CountingCommunicator(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  void all_reduce_sum(at::Tensor& t) const override {
    record("all_reduce", t);
    inner_->all_reduce_sum(t);
  }
  std::vector<at::Tensor> all_gather(const at::Tensor& t) const override {
    record("all_gather", t);
    return inner_->all_gather(t);
  }
  void broadcast(at::Tensor& t, int root) const override {
    record("broadcast", t);
    inner_->broadcast(t, root);
  }
  void barrier() const override {
    log_.push_back({"barrier", {}, at::kByte, 0});
    inner_->barrier();
  }
  std::vector<Exchange> take() const { return std::exchange(log_, {}); }

 private:
  void record(const char* op, const at::Tensor& t) const {
    log_.push_back({op, t.sizes().vec(), t.scalar_type(), static_cast<int64_t>(t.numel() * t.element_size())});
  }
  std::shared_ptr<Communicator> inner_;
  mutable std::vector<Exchange> log_;
};

// The same collectives again, with tensors of the same shapes, on `comm`.
void replay(const Communicator& comm, const std::vector<Exchange>& log) {
  for (const Exchange& e : log) {
    at::Tensor t = at::zeros(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.op == "all_reduce") comm.all_reduce_sum(t);
    else if (e.op == "all_gather") comm.all_gather(t);
    else if (e.op == "broadcast") comm.broadcast(t, 0);
    else comm.barrier();
  }
}

std::string describe(const std::vector<Exchange>& log) {
  std::string out;
  for (const Exchange& e : log) {
    std::string shape;
    for (int64_t d : e.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    out += (out.empty() ? "" : ", ") + e.op + " " + std::string(c10::toString(e.dtype)) + "[" + shape + "]";
  }
  return out;
}

int64_t payload_bytes(const std::vector<Exchange>& log) {
  int64_t n = 0;
  for (const Exchange& e : log) n += e.bytes;
  return n;
}

double sent_bytes(const std::vector<Exchange>& log, int W) {
  double n = 0;
  for (const Exchange& e : log) n += wire_bytes(e, W);
  return n;
}

// PWEMoE-LS / -EPO as one rank of W runs them: the communicator and this rank's tasks set as
// PweMoeAlgorithm::train sets them.
template <class Algo>
class RankOf : public Algo {
 public:
  RankOf(const Communicator* comm, std::vector<bool> owned) {
    this->comm_ = comm;
    this->owned_ = std::move(owned);
  }
};

at::Tensor flat_router_grads(const ParetoWeightEnsembling& pwe) {
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : pwe.router_parameters()) flat.push_back(p.grad().reshape({-1}).to(at::kDouble).clone());
  return at::cat(flat);
}

int run_dist_step(int T, int64_t batch, int reps, int64_t layers, int64_t image, int threads, bool epo) {
  const std::optional<host::LaunchEnv> env = host::read_launch_env();
  FUSION_ENSURE(env.has_value(), "dist-step: WORLD_SIZE is unset or 1");
  host::ConnectOptions co;
  co.backend = "gloo";
  co.timeout = std::chrono::seconds(900);  // the other ranks wait in a barrier while rank 0 steps alone
  const std::shared_ptr<Communicator> comm = host::connect(*env, co);
  const int W = env->world_size, rank = env->rank;
  const bool main_rank = rank == 0;
  FUSION_ENSURE(W <= T, "dist-step: ", W, " ranks for ", T, " tasks: at most one rank per task");
  const int per_rank = std::max(1, threads / W);
  const bool blas_too = set_compute_threads(per_rank);

  Arch a = make_arch(layers, image);
  SynthPool pool(a.pretrained, T);
  const Context ctx = quiet_context();
  auto pwe = ParetoWeightEnsembling::from_pool(pool, ctx, {}, "bench");
  std::vector<std::unique_ptr<HeadTask>> owned_tasks;
  std::vector<Task*> tasks;
  std::vector<Batch> batches;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int t = 0; t < T; ++t) {
    owned_tasks.push_back(std::make_unique<HeadTask>("task" + std::to_string(t), 10, a.feature_dim, 100 + t));
    tasks.push_back(owned_tasks.back().get());
    std::vector<int64_t> shape{batch};
    shape.insert(shape.end(), a.input_shape.begin(), a.input_shape.end());
    batches.push_back({at::randn(shape, g), at::randint(10, {batch}, g)});
  }
  std::vector<double> r(T);
  double sum = 0;
  for (int t = 0; t < T; ++t) sum += (r[t] = 1.0 + t);
  for (double& v : r) v /= sum;
  std::vector<bool> mine(static_cast<size_t>(T), false);
  for (int64_t t : items_of_rank(T, rank, W)) mine[static_cast<size_t>(t)] = true;
  const auto counting = std::make_shared<CountingCommunicator>(comm);
  PweMoeLs one;
  RankOf<PweMoeLs> dist(counting.get(), mine);
  fusion::Adam adam(pwe->router_parameters());
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); };

  // Rank 0 alone on every task with all the threads; the others wait (their CPU seconds are kept, to
  // show that waiting costs nothing).
  std::vector<double> idle_cpu;
  auto one_process = [&]() {
    comm->barrier();
    double s = NAN;
    const double c0 = fusion::bench::cpu_seconds();
    if (main_rank) {
      set_compute_threads(threads);
      const auto t0 = Clock::now();
      one.step(*pwe, adam, tasks, batches, r, 0.0, 1);  // lr 0: every rep steps the same routers
      s = since(t0);
    }
    comm->barrier();
    if (!main_rank) idle_cpu.push_back(fusion::bench::cpu_seconds() - c0);
    return s;
  };
  // Every rank on its tasks with threads / W threads; the step ends when the last rank is done.
  auto distributed = [&]() {
    set_compute_threads(per_rank);
    comm->barrier();
    const auto t0 = Clock::now();
    dist.step(*pwe, adam, tasks, batches, r, 0.0, 1);
    comm->barrier();
    return since(t0);
  };

  // Warm-up, the router gradient both ways, and the exchange of one step.
  one_process();
  const at::Tensor g_one = main_rank ? flat_router_grads(*pwe) : at::Tensor();
  counting->take();
  distributed();
  const std::vector<Exchange> ls_log = counting->take();
  const at::Tensor g_dist = flat_router_grads(*pwe);
  const double grad_diff =
      main_rank ? (g_dist - g_one).abs().max().item<double>() / g_one.abs().max().item<double>() : NAN;

  std::vector<double> t_one, t_dist, ratios;
  for (int i = 0; i < reps; ++i) {
    if (i % 2 == 0) {
      t_one.push_back(one_process());
      t_dist.push_back(distributed());
    } else {
      t_dist.push_back(distributed());
      t_one.push_back(one_process());
    }
    ratios.push_back(t_dist.back() / t_one.back());
  }

  // The step's collectives alone, ranks in step: the communication a step pays on this link.
  set_compute_threads(per_rank);
  const int comm_reps = 100;
  comm->barrier();
  auto t0 = Clock::now();
  for (int i = 0; i < comm_reps; ++i) replay(*comm, ls_log);
  const double ls_comm_s = since(t0) / comm_reps;

  // What every rank does whatever W (at per_rank threads): θ(r) = θ₀ + Σₜ gₜ τₜ over every
  // task vector, and the projection ⟨τₜ, ∂L/∂θ⟩ after the backward passes. Rank 0 times; the rest wait.
  double t_merge = NAN, t_projection = NAN;
  comm->barrier();
  if (main_rank) {
    const at::Tensor rt = at::tensor(std::vector<float>(r.begin(), r.end()));
    t_merge = seconds_of(
        [&] {
          c10::NoGradGuard ng;
          pwe->merge(pwe->route(rt));
        },
        3);
    StateDict fake_grads;
    for (const auto& grp : pwe->groups())
      for (size_t k = 0; k < grp.keys.size(); ++k) fake_grads.set(grp.keys[k], at::randn(grp.base[k].sizes(), g));
    t_projection = seconds_of([&] { pwe->group_weight_grads(fake_grads); }, 3);
  }
  comm->barrier();

  std::vector<Exchange> epo_log;
  double epo_comm_s = NAN;
  if (epo) {
    RankOf<PweMoeEpo> dist_epo(counting.get(), mine);
    counting->take();
    dist_epo.step(*pwe, adam, tasks, batches, r, 0.0, 1);
    epo_log = counting->take();
    comm->barrier();
    t0 = Clock::now();
    for (int i = 0; i < comm_reps; ++i) replay(*comm, epo_log);
    epo_comm_s = since(t0) / comm_reps;
  }

  // The waiting ranks' CPU seconds, to rank 0.
  const at::Tensor idle = at::tensor(std::vector<double>{idle_cpu.empty() ? 0.0 : median(idle_cpu)});
  const std::vector<at::Tensor> idles = comm->all_gather(idle);
  comm->barrier();
  if (!main_rank) return 0;

  const double one_best = *std::min_element(t_one.begin(), t_one.end());
  const double dist_best = *std::min_element(t_dist.begin(), t_dist.end());
  const double ratio = median(ratios);
  const int64_t ls_payload = payload_bytes(ls_log);
  const double ls_sent = sent_bytes(ls_log, W);
  std::printf("model: %s, T = %d, batch %lld per task, %d reps (alternated)\n", a.name.c_str(), T,
              static_cast<long long>(batch), reps);
  std::printf("%d ranks (Gloo on %s, the host's rendezvous); 1 rank x %d threads takes all %d tasks, %d ranks x %d "
              "thread%s take task t on rank t mod %d%s\n",
              W, env->master_addr.c_str(), threads, T, W, per_rank, per_rank == 1 ? "" : "s", W,
              blas_too ? " (OpenBLAS's threads set alike)" : "");
  std::printf("router parameters %lld in %zu groups; upscaled task vectors %.1f MiB (every rank holds them all)\n",
              static_cast<long long>(pwe->num_router_parameters()), pwe->groups().size(),
              mib(pwe->task_vector_bytes()));
  std::printf("                                    best      median    each rep (s)\n");
  std::printf("LS step, 1 rank x %d threads     %8.3f  %8.3f    %s\n", threads, one_best, median(t_one),
              series(t_one).c_str());
  std::printf("LS step, %d ranks x %d thread%s   %8.3f  %8.3f    %s\n", W, per_rank, per_rank == 1 ? " " : "s",
              dist_best, median(t_dist), series(t_dist).c_str());
  std::printf("%d ranks / 1 rank: per rep pair %s, median %.3f (best %.3f)\n", W, series(ratios).c_str(), ratio,
              dist_best / one_best);
  std::printf("router gradient, %d ranks vs 1 process: max |diff| / max |grad| = %.2e\n", W, grad_diff);
  std::string idle_text;
  for (size_t q = 1; q < idles.size(); ++q) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s%.3f", idle_text.empty() ? "" : " ", idles[q].item<double>());
    idle_text += buf;
  }
  std::printf("CPU seconds of %s while rank 0 stepped alone (median per step): %s\n",
              W > 2 ? ("ranks 1.." + std::to_string(W - 1)).c_str() : "rank 1", idle_text.c_str());
  std::printf("exchanged per LS step: %s; payload %lld B per rank; sent by each rank %.0f B (Gloo's ring all-gather: "
              "(W-1) x payload), %.0f B over the %d ranks\n",
              describe(ls_log).c_str(), static_cast<long long>(ls_payload), ls_sent, W * ls_sent, W);
  std::printf("those collectives alone on %s: %.3f ms per step (mean of %d)\n", env->master_addr.c_str(),
              1e3 * ls_comm_s, comm_reps);
  std::printf("every rank, whatever W (%d thread%s): route + merge theta(r) %.3f s, projection <tau, dL/dtheta> %.3f s "
              "(best of 3)\n",
              per_rank, per_rank == 1 ? "" : "s", t_merge, t_projection);
  if (epo)
    std::printf("exchanged per EPO step: %s; payload %lld B per rank; sent by each rank %.0f B; alone on %s: %.3f ms "
                "per step\n",
                describe(epo_log).c_str(), static_cast<long long>(payload_bytes(epo_log)), sent_bytes(epo_log, W),
                env->master_addr.c_str(), 1e3 * epo_comm_s);

  // Beyond this machine: each rank's step = the fixed part + its ceil(T/W) tasks + the exchange.
  // The per-task time comes from the measured W-rank step; the exchange adds its bytes over the link
  // and, per collective, W − 1 ring hops at the latency measured here (the replay above, W − 1 hops).
  const double fixed = t_merge + t_projection;
  const int here_tasks = (T + W - 1) / W;
  const double per_task = std::max(0.0, (median(t_dist) - fixed - ls_comm_s) / here_tasks);
  const double hop_s = ls_comm_s / (static_cast<double>(ls_log.size()) * (W - 1));
  std::printf("estimate over nodes (%d thread%s per rank): fixed %.3f s + ceil(T/W) x %.3f s per task (from the "
              "%d-rank step) + the exchange: %zu collectives x (W-1) hops x %.2f ms (measured here) + bytes / link\n",
              per_rank, per_rank == 1 ? "" : "s", fixed, per_task, W, ls_log.size(), 1e3 * hop_s);
  for (int w : {1, 2, 4, 8, 16}) {
    if (w > T) break;
    const int n = (T + w - 1) / w;
    double sent = 0;  // bytes each rank sends in the LS exchange at w ranks
    for (const Exchange& e : ls_log) sent += wire_bytes(e, w);
    const double latency = static_cast<double>(ls_log.size()) * (w - 1) * hop_s;
    const double compute = fixed + n * per_task;
    std::printf("  W = %2d: %d task%s per rank, compute %.2f s; sends %.0f B: %.2f us at 10 Gb/s, %.3f us at 100 "
                "Gb/s; latency %.1f ms -> step %.2f s (%.2fx W = 1)\n",
                w, n, n == 1 ? " " : "s", compute, sent, sent * 8 / 10e9 * 1e6, sent * 8 / 100e9 * 1e6, 1e3 * latency,
                compute + latency + sent * 8 / 10e9, (compute + latency + sent * 8 / 10e9) / (fixed + T * per_task));
  }
  std::printf("\nTARGET pwe_moe_ls_%dranks_step_T%d %.3f <=1.0 %s %d ranks x %d thread vs 1 rank x %d threads, median "
              "per rep pair\n",
              W, T, ratio, ratio <= 1.0 ? "MET" : "MISSED", W, per_rank, threads);
  std::printf("TARGET pwe_moe_ls_bytes_per_step_T%d_%dranks %.0f - N/A informational: bytes each rank sends per LS "
              "step\n",
              T, W, ls_sent);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  try {
    std::string mode = argc > 1 ? argv[1] : "step";
    int T = 2, reps = 3;
    int64_t batch = 16, layers = 12, image = 224;
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    bool full = true, emulate = false, epo = false;
    int nproc = 2;
    std::vector<int> task_counts;
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string k = argv[i];
      const int64_t v = std::stoll(argv[i + 1]);
      if (k == "--tasks") T = static_cast<int>(v), task_counts.push_back(static_cast<int>(v));
      else if (k == "--emulate") emulate = v != 0;
      else if (k == "--batch") batch = v;
      else if (k == "--reps") reps = static_cast<int>(v);
      else if (k == "--layers") layers = v;
      else if (k == "--image") image = v;
      else if (k == "--threads") threads = static_cast<int>(v);
      else if (k == "--full") full = v != 0;
      else if (k == "--nproc") nproc = static_cast<int>(v);
      else if (k == "--epo") epo = v != 0;
      else throw fusion::Error("unknown option " + k);
    }
    at::set_num_threads(threads);
    if (mode == "memory") return run_memory(T, layers, image);
    if (mode == "step") return run_step(T, batch, reps, layers, image, full);
    if (mode == "dist-step") {
      // Started by hand: start the ranks (this program again, with torchrun's environment) and wait.
      if (!fusion::host::read_launch_env()) {
        FUSION_ENSURE(nproc >= 2, "dist-step: --nproc ", nproc, ": expected 2 or more ranks");
        return fusion::host::launch_local(nproc, std::vector<std::string>(argv, argv + argc));
      }
      return run_dist_step(T, batch, reps, layers, image, threads, epo);
    }
    if (mode == "precision")
      return run_precision(task_counts.empty() ? std::vector<int>{2, 8} : task_counts, batch, reps, layers, image,
                           emulate);
    std::fprintf(stderr, "usage: %s memory|step|precision|dist-step [--tasks T (repeatable for precision)] [--emulate 0|1] [--batch B] [--reps N] [--layers L] [--image S] [--threads N] [--full 0|1] [--nproc W] [--epo 0|1]\n", argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
