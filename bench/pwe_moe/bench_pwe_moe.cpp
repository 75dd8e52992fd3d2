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
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "pareto_weight_ensembling.hpp"
#include "precision.hpp"
#include "pwe_moe.hpp"
#include "tiny_model.hpp"

#ifdef FUSION_BENCH_HAVE_CLIP
#include "fusion/clip/vision.hpp"
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

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? NAN : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string series(const std::vector<double>& v) {
  std::string out;
  char buf[32];
  for (double x : v) {
    std::snprintf(buf, sizeof(buf), "%s%.3f", out.empty() ? "" : " ", x);
    out += buf;
  }
  return out;
}

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
    const std::clock_t c0 = std::clock();
    algo.step(*pwe, adam, tasks, batches, r, 0.0, 1);  // lr 0: every rep steps the same routers
    if (cpu) cpu->push_back(static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
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

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = argc > 1 ? argv[1] : "step";
    int T = 2, reps = 3;
    int64_t batch = 16, layers = 12, image = 224;
    int threads = static_cast<int>(std::thread::hardware_concurrency());
    bool full = true, emulate = false;
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
      else throw fusion::Error("unknown option " + k);
    }
    at::set_num_threads(threads);
    if (mode == "memory") return run_memory(T, layers, image);
    if (mode == "step") return run_step(T, batch, reps, layers, image, full);
    if (mode == "precision")
      return run_precision(task_counts.empty() ? std::vector<int>{2, 8} : task_counts, batch, reps, layers, image,
                           emulate);
    std::fprintf(stderr, "usage: %s memory|step|precision [--tasks T (repeatable for precision)] [--emulate 0|1] [--batch B] [--reps N] [--layers L] [--image S] [--threads N] [--full 0|1]\n", argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
