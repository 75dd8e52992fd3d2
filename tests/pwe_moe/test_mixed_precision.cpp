// Mixed precision in PWEMoE ([run] dtype = "bfloat16", issue 11 item 4) on a demo-sized CLIP vision
// tower (image 28, patch 7, hidden 64, 2 layers): the network's forward and backward in bfloat16,
// the routers, their Adam state, g(r), θ(r) with its gradient and the losses in float32. The
// bfloat16 path runs here whatever the CPU (LibTorch emulates it without bf16 instructions: the
// same numerics, slower), against the float32 step on the same routers and batches. And the host's
// choice of precision (host/precision.hpp): what runs where, and the one fallback line.
//
// Tolerances (bfloat16 rounds to 2^-9 relative): the per-task losses within 2 % of float32's, the
// router gradient within 10 % of its largest entry and at cosine > 0.99 to float32's.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "fusion/clip/vision.hpp"
#include "fusion/optim.hpp"
#include "precision.hpp"
#include "pwe_moe.hpp"
#include "tiny_model.hpp"
#include "training_support.hpp"

namespace {

using namespace fusion;
using namespace fusion::methods;

clip::VisionConfig demo_config() {
  clip::VisionConfig c;
  c.image_size = 28;
  c.patch_size = 7;
  c.hidden_size = 64;
  c.intermediate_size = 256;
  c.num_attention_heads = 4;
  c.num_hidden_layers = 2;
  return c;
}

// A task whose logits are the pooled features through a fixed float32 head.
class HeadTask : public Task {
 public:
  HeadTask(std::string name, int64_t dim, uint64_t seed) : name_(std::move(name)) {
    head_ = at::randn({10, dim}, at::make_generator<at::CPUGeneratorImpl>(seed)) * (3.0 / std::sqrt(double(dim)));
  }
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return 10; }
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

struct World {
  ModelPtr pretrained;
  std::vector<ModelPtr> experts;
  std::vector<std::string> names;
  std::vector<std::unique_ptr<HeadTask>> owned;
  std::vector<Task*> tasks;
  std::vector<Batch> batches;
};

// Experts θ₀ + N(0, 0.02²) per task, one batch of 8 images per task with labels the task's head
// gives the expert (so that each expert is good at its task and the losses differ).
World make_world(int T) {
  World w;
  const clip::VisionConfig cfg = demo_config();
  w.pretrained = std::make_shared<clip::ClipVisionModel>(clip::ClipVisionModel::random_parameters(cfg, 1), cfg);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int t = 0; t < T; ++t) {
    StateDict p;
    for (const auto& [k, v] : w.pretrained->parameters()) p.set(k, v + 0.02 * at::randn(v.sizes(), g));
    w.experts.push_back(w.pretrained->with_parameters(std::move(p)));
    w.names.push_back("task" + std::to_string(t));
    w.owned.push_back(std::make_unique<HeadTask>(w.names.back(), cfg.hidden_size, 100 + t));
    w.tasks.push_back(w.owned.back().get());
    at::Tensor x = at::randn({8, 3, 28, 28}, g);
    at::NoGradGuard ng;
    at::Tensor y = w.tasks.back()->logits(*w.experts.back(), w.experts.back()->parameters(), x).argmax(1);
    w.batches.push_back({x, y});
  }
  return w;
}

std::unique_ptr<ParetoWeightEnsembling> build(const World& w) {
  return ParetoWeightEnsembling::from_models(w.pretrained, w.experts, w.names, {},
                                             at::make_generator<at::CPUGeneratorImpl>(3));
}

at::Tensor flat_router_grads(const ParetoWeightEnsembling& pwe) {
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : pwe.router_parameters()) {
    EXPECT_EQ(p.grad().scalar_type(), at::kFloat);
    flat.push_back(p.grad().reshape({-1}));
  }
  return at::cat(flat).to(at::kDouble);
}

double cosine(const at::Tensor& a, const at::Tensor& b) { return (a.dot(b) / (a.norm() * b.norm())).item<double>(); }

TEST(PweMixedPrecision, ComputeCopyIsBf16AndEverythingTrainedStaysFloat32) {
  const World w = make_world(2);
  auto pwe = build(w);
  EXPECT_EQ(pwe->compute_dtype(), at::kFloat);
  const std::vector<at::Tensor> g = pwe->route(at::tensor({0.3f, 0.7f}));
  StateDict merged = pwe->merge(g);
  StateDict same = pwe->compute_parameters(merged);
  for (const auto& [k, t] : merged) EXPECT_TRUE(same.at(k).is_same(t)) << k;  // float32: no copy at all

  pwe->set_compute_dtype(at::kBFloat16);
  EXPECT_EQ(pwe->compute_dtype(), at::kBFloat16);
  std::set<std::string> upscaled;
  for (const auto& grp : pwe->groups()) {
    upscaled.insert(grp.keys.begin(), grp.keys.end());
    for (const auto& tv : grp.task_vectors) EXPECT_EQ(tv.scalar_type(), at::kFloat);
    for (const auto& r : grp.router) EXPECT_EQ(r.scalar_type(), at::kFloat);
  }
  for (const auto& k : upscaled) merged.at(k).requires_grad_(true);
  const StateDict compute = pwe->compute_parameters(merged);
  for (const auto& [k, t] : compute) {
    EXPECT_EQ(t.scalar_type(), at::kBFloat16) << k;
    // The upscaled groups' copies hang off the float32 leaves (gradients flow back); the rest are constants.
    EXPECT_EQ(t.requires_grad(), upscaled.count(k) == 1) << k;
  }
  for (const auto& [k, t] : merged) EXPECT_EQ(t.scalar_type(), at::kFloat) << k;
  // The exported / evaluated models stay float32: the host casts them for evaluation.
  for (const auto& [k, t] : pwe->merge_and_unload({0.5, 0.5})->parameters()) EXPECT_EQ(t.scalar_type(), at::kFloat) << k;
}

TEST(PweMixedPrecision, FromPoolTakesA16BitRunDtypeAsTheComputeDtype) {
  const World w = make_world(2);
  pwe_test::MemoryPool pool(w.pretrained, {{w.names[0], w.experts[0]}, {w.names[1], w.experts[1]}});
  for (at::ScalarType run : {at::kFloat, at::kBFloat16, at::kDouble}) {
    Context::Settings s;
    s.progress = false;
    s.dtype = run;
    auto pwe = ParetoWeightEnsembling::from_pool(pool, Context(s), {}, "pwe_moe_ls");
    // float32 models: a 16-bit run dtype computes in it; any other keeps the models' dtype.
    EXPECT_EQ(pwe->compute_dtype(), run == at::kBFloat16 ? at::kBFloat16 : at::kFloat) << run;
  }
}

// One step on the same routers and batches in float32 and in bfloat16 (lr 0: the routers do not move).
void compare_step(PweMoeAlgorithm& algo, int T) {
  const World w = make_world(T);
  auto p32 = build(w), p16 = build(w);
  p16->set_compute_dtype(at::kBFloat16);
  Adam a32(p32->router_parameters()), a16(p16->router_parameters());
  std::vector<double> r(T);
  for (int t = 0; t < T; ++t) r[t] = (1.0 + t) / (T * (T + 1) / 2.0);
  const PweMoeStepStats s32 = algo.step(*p32, a32, w.tasks, w.batches, r, 0.0, 1);
  const at::Tensor g32 = flat_router_grads(*p32);
  const PweMoeStepStats s16 = algo.step(*p16, a16, w.tasks, w.batches, r, 0.0, 1);
  const at::Tensor g16 = flat_router_grads(*p16);
  ASSERT_EQ(s16.losses.size(), static_cast<size_t>(T));
  for (int t = 0; t < T; ++t) EXPECT_NEAR(s16.losses[t], s32.losses[t], 0.02 * s32.losses[t]) << t;
  const double rel = (g16 - g32).abs().max().item<double>() / g32.abs().max().item<double>();
  EXPECT_LT(rel, 0.1);
  EXPECT_GT(rel, 0.0) << "bitwise float32's gradient: the step did not compute in bfloat16";
  EXPECT_GT(cosine(g16, g32), 0.99);
  for (size_t t = 0; t < s16.weights.size(); ++t) EXPECT_NEAR(s16.weights[t], s32.weights[t], 0.05) << t;
  // Adam's state is float32 beside float32 routers.
  for (const at::Tensor& m : a16.exp_avg()) EXPECT_EQ(m.scalar_type(), at::kFloat);
  for (const at::Tensor& v : a16.exp_avg_sq()) EXPECT_EQ(v.scalar_type(), at::kFloat);
  std::printf("[ mixed    ] %s T=%d: router gradient bf16 vs f32: max rel %.3g, cosine %.6f; loss[0] %.6f vs %.6f\n",
              algo.name().c_str(), T, rel, cosine(g16, g32), s16.losses[0], s32.losses[0]);
}

TEST(PweMixedPrecision, LsStepInBf16TracksTheFloat32Step) {
  PweMoeLs ls;
  compare_step(ls, 2);
}

TEST(PweMixedPrecision, EpoStepInBf16TracksTheFloat32Step) {
  PweMoeEpo epo;
  compare_step(epo, 3);
}

// A short training in bfloat16 lowers Σ rₜ Lₜ as float32's does and ends near float32's routers'
// outputs g(r).
TEST(PweMixedPrecision, ShortLsTrainingEndsNearTheFloat32One) {
  const World w = make_world(2);
  auto p32 = build(w), p16 = build(w);
  p16->set_compute_dtype(at::kBFloat16);
  PweMoeLs ls;
  Adam a32(p32->router_parameters()), a16(p16->router_parameters());
  double first32 = 0, last32 = 0, first16 = 0, last16 = 0;
  const int steps = 15;
  for (int s = 1; s <= steps; ++s) {
    const std::vector<double> r = ls.sample_preference(2, 42, s);
    const double l32 = ls.step(*p32, a32, w.tasks, w.batches, r, 1e-2, s).loss;
    const double l16 = ls.step(*p16, a16, w.tasks, w.batches, r, 1e-2, s).loss;
    if (s == 1) first32 = l32, first16 = l16;
    last32 = l32, last16 = l16;
  }
  EXPECT_LT(last16, first16);
  EXPECT_LT(last32, first32);
  for (const std::vector<float>& r : {std::vector<float>{1, 0}, {0.5f, 0.5f}, {0, 1}}) {
    at::NoGradGuard ng;
    const auto g32 = p32->route(at::tensor(r)), g16 = p16->route(at::tensor(r));
    for (size_t i = 0; i < g32.size(); ++i) EXPECT_LT((g16[i] - g32[i]).abs().max().item<double>(), 0.02) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// The host's choice ([run] dtype → storage and compute dtypes)

using fusion::host::CpuBf16;
using fusion::host::resolve_precision;

TEST(RunPrecision, Float32AndFloat64AreUnchanged) {
  for (at::ScalarType t : {at::kFloat, at::kDouble}) {
    const auto p = resolve_precision(t, at::Device(at::kCPU), CpuBf16{}, true, true);
    EXPECT_EQ(p.storage, t);
    EXPECT_EQ(p.compute, t);
    EXPECT_EQ(p.note, "");
    EXPECT_FALSE(p.mixed());
  }
}

TEST(RunPrecision, Bf16IsMixedWhereTheCpuHasBf16AndFallsBackOtherwise) {
  const at::Device cpu(at::kCPU);
  CpuBf16 avx512;
  avx512.avx512_bf16 = true;
  CpuBf16 amx;
  amx.amx_bf16 = true;
  for (const CpuBf16& c : {avx512, amx}) {
    const auto p = resolve_precision(at::kBFloat16, cpu, c, true, false);
    EXPECT_EQ(p.storage, at::kFloat);
    EXPECT_EQ(p.compute, at::kBFloat16);
    EXPECT_NE(p.note.find("GEMMs in bfloat16 (oneDNN, " + c.describe() + ")"), std::string::npos) << p.note;
  }
  const auto none = resolve_precision(at::kBFloat16, cpu, CpuBf16{}, true, false);
  EXPECT_EQ(none.storage, at::kFloat);
  EXPECT_EQ(none.compute, at::kFloat);
  EXPECT_EQ(none.note, "run.dtype = \"bfloat16\": this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16), "
                       "so the run computes in float32 (emulating bfloat16 would be slower)");
  const auto no_onednn = resolve_precision(at::kBFloat16, cpu, avx512, false, false);
  EXPECT_EQ(no_onednn.compute, at::kFloat);
  EXPECT_NE(no_onednn.note.find("without oneDNN"), std::string::npos) << no_onednn.note;
  const auto forced = resolve_precision(at::kBFloat16, cpu, CpuBf16{}, true, true);
  EXPECT_EQ(forced.compute, at::kBFloat16);
  EXPECT_NE(forced.note.find("FUSION_FORCE_BF16 is set: computing in emulated bfloat16"), std::string::npos)
      << forced.note;
}

TEST(RunPrecision, Float16IsMixedOnCudaOnly) {
  const auto cpu = resolve_precision(at::kHalf, at::Device(at::kCPU), CpuBf16{}, true, true);
  EXPECT_EQ(cpu.storage, at::kFloat);
  EXPECT_EQ(cpu.compute, at::kFloat);
  EXPECT_NE(cpu.note.find("needs CUDA"), std::string::npos) << cpu.note;
  for (at::ScalarType t : {at::kHalf, at::kBFloat16}) {
    const auto gpu = resolve_precision(t, at::Device(at::kCUDA, 0), CpuBf16{}, false, false);
    EXPECT_EQ(gpu.storage, at::kFloat);
    EXPECT_EQ(gpu.compute, t);
    EXPECT_EQ(gpu.note, "");
  }
}

// cpu_bf16() agrees with the kernel's flags for this CPU (Linux on x86: /proc/cpuinfo).
TEST(RunPrecision, DetectionAgreesWithProcCpuinfo) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      flags = line + " ";
      break;
    }
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags line";
  const CpuBf16 c = fusion::host::cpu_bf16();
  EXPECT_EQ(c.avx512_bf16, flags.find(" avx512_bf16 ") != std::string::npos) << flags;
  EXPECT_EQ(c.amx_bf16, flags.find(" amx_bf16 ") != std::string::npos) << flags;
}

}  // namespace
