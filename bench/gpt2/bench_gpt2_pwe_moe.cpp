// One PWEMoE-LS training step on GPT-2 small's shape (issue 12, item 6) against a plain forward +
// backward through the same body with the same trainable parameters.
//
// The model is the body of families/gpt2 (what the `gpt2` pool gives PWEMoE: a Gpt2Model without a
// head, 124 M parameters) with random weights; the T experts are θ₀ + N(0, 0.01) noise, made on demand
// from a seeded generator so the pool holds θ₀ only. `*.mlp.*` is upscaled (each block's c_fc and
// c_proj: 56.7 M parameters per task vector), the rest merged by task arithmetic, as pwe_moe_ls does.
// Each task reads the last token of each row (gpt2::classify, pad = eos: random ids below it, so no
// row is padded) through its own random head of 2 classes, as the text_classification task does.
//
//   LS step   PweMoeLs::step at a preference off the centre, lr 0 (every rep steps the same routers):
//             θ(r) merged once, one forward + backward per task's batch, ⟨τₜ, ∂L/∂θ⟩, the routers'
//             backward, Adam;
//   plain     the model merge_and_unload(r) gives (the same θ(r)), its upscaled tensors as the only
//             leaves that need a gradient (the routers' gradient reaches θ through exactly those), one
//             forward + backward of each task's loss on the same batches.
// Alternated rep by rep so that the load of a shared machine falls on both alike; the ratio is the
// median of the per-rep-pair ratios. The losses of both passes are compared (the same θ(r) and
// batches: they agree to rounding). Ends with one line per T:
//   TARGET pwe_moe_ls_vs_plain_gpt2_T<T> <LS / plain> <=1.05 MET|MISSED
//
//   OMP_WAIT_POLICY=PASSIVE fusion_bench_gpt2_pwe_moe [--tasks 2 (repeatable)] [--batch 8] [--seq 128]
//                                                     [--reps 3] [--threads N] [--layers 12]
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench_stats.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/pool.hpp"
#include "pareto_weight_ensembling.hpp"
#include "pwe_moe.hpp"

#include "startup.hpp"

namespace {

using namespace fusion;
using namespace fusion::methods;

constexpr int64_t kPad = 50256;  // <|endoftext|>, FusionBench's pad token
constexpr int64_t kClasses = 2;

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// The pretrained body and T experts θ₀ + N(0, 0.01), each made when PWEMoE loads it.
class NoisyExpertPool : public ModelPool {
 public:
  NoisyExpertPool(ModelPtr pretrained, int T) : pretrained_(std::move(pretrained)), T_(T) {}
  std::vector<std::string> expert_names() const override {
    std::vector<std::string> names;
    for (int t = 0; t < T_; ++t) names.push_back("task" + std::to_string(t));
    return names;
  }
  bool has_pretrained() const override { return true; }
  ConstModelPtr pretrained() override { return pretrained_; }
  ModelPtr load(const std::string& name) override {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(std::hash<std::string>{}(name));
    c10::NoGradGuard no_grad;
    StateDict p;
    for (const auto& [k, v] : pretrained_->parameters()) {
      at::Tensor e = at::empty_like(v);
      e.normal_(0.0, 0.01, g);
      p.set(k, e.add_(v));
    }
    return pretrained_->with_parameters(std::move(p));
  }
  void save(const Model&, const std::filesystem::path&) const override {}

 private:
  ModelPtr pretrained_;
  int T_;
};

// A text classification task of the GPT-2 kind: the body's hidden states, the last real token of each
// row (gpt2::classify with pad = eos) and this task's own frozen head.
class LastTokenTask : public Task {
 public:
  LastTokenTask(std::string name, int64_t dim, uint64_t seed) : name_(std::move(name)) {
    head_ = at::randn({kClasses, dim}, at::make_generator<at::CPUGeneratorImpl>(seed)) * 0.02;
  }
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return kClasses; }
  bool has_train_split() const override { return true; }
  std::unique_ptr<BatchStream> train_stream(int64_t, uint64_t) override { return nullptr; }
  at::Tensor logits(const Model& m, const StateDict& p, const at::Tensor& ids) const override {
    return gpt2::classify(m.forward(p, ids), ids, gpt2::ScoreHead{head_, {}, kPad});
  }
  nlohmann::json evaluate(const Model&) override { return {}; }

 private:
  std::string name_;
  at::Tensor head_;
};

using fusion::bench::median;
using fusion::bench::series;
using fusion::bench::cpu_seconds;

std::string run(int T, int64_t batch, int64_t seq, int reps, int64_t layers) {
  const nlohmann::json config = {{"n_layer", layers},   {"n_embd", 768},         {"n_head", 12},
                                 {"vocab_size", 50257}, {"n_positions", 1024},   {"activation_function", "gelu_new"},
                                 {"pad_token_id", kPad}, {"eos_token_id", kPad}};
  const gpt2::Gpt2Config cfg = gpt2::Gpt2Config::from_json(config, "bench");
  FUSION_ENSURE(seq <= cfg.n_positions, "--seq ", seq, " exceeds n_positions ", cfg.n_positions);
  auto body = std::make_shared<gpt2::Gpt2Model>(gpt2::Gpt2Model::random_parameters(cfg, gpt2::Gpt2Head::kNone, 1),
                                                config, gpt2::Gpt2Head::kNone, "random");
  NoisyExpertPool pool(body, T);
  Context::Settings settings;
  settings.progress = false;
  const Context ctx(settings);
  const auto t_setup = std::chrono::steady_clock::now();
  auto pwe = ParetoWeightEnsembling::from_pool(pool, ctx, {}, "bench");  // upscale = {"*.mlp.*"}
  const double setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_setup).count();

  std::vector<std::unique_ptr<LastTokenTask>> owned;
  std::vector<Task*> tasks;
  std::vector<Batch> batches;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int t = 0; t < T; ++t) {
    owned.push_back(std::make_unique<LastTokenTask>("task" + std::to_string(t), cfg.n_embd, 100 + t));
    tasks.push_back(owned.back().get());
    batches.push_back({at::randint(0, kPad, {batch, seq}, g), at::randint(kClasses, {batch}, g)});
  }
  // A preference off the centre, so that the weights differ from task to task.
  std::vector<double> r(T);
  double sum = 0;
  for (int t = 0; t < T; ++t) sum += (r[t] = 1.0 + t);
  for (double& v : r) v /= sum;

  PweMoeLs ls;
  Adam adam(pwe->router_parameters());
  std::vector<double> ls_losses;
  auto ls_step = [&] { ls_losses = ls.step(*pwe, adam, tasks, batches, r, 0.0, 1).losses; };

  const ModelPtr merged = pwe->merge_and_unload(r);
  std::set<std::string> upscaled;
  int64_t upscaled_params = 0;
  for (const auto& grp : pwe->groups()) {
    upscaled.insert(grp.keys.begin(), grp.keys.end());
    for (const at::Tensor& b : grp.base) upscaled_params += b.numel();
  }
  std::vector<double> plain_losses;
  auto plain_step = [&] {
    StateDict p;
    for (const auto& [k, v] : merged->parameters()) {
      at::Tensor x = v.detach();
      if (upscaled.count(k) != 0) x.requires_grad_(true);
      p.set(k, x);
    }
    plain_losses.clear();
    for (int t = 0; t < T; ++t) {
      at::Tensor loss = tasks[t]->loss(*merged, p, batches[t]);
      plain_losses.push_back(loss.item<double>());
      loss.backward();
    }
  };
  auto timed = [](const std::function<void()>& fn, std::vector<double>& wall, std::vector<double>& cpu) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    fn();
    cpu.push_back(cpu_seconds() - c0);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };

  ls_step();  // warm-up, both
  plain_step();
  double loss_diff = 0;
  for (int t = 0; t < T; ++t) loss_diff = std::max(loss_diff, std::abs(ls_losses[t] - plain_losses[t]));
  std::vector<double> t_ls, t_plain, c_ls, c_plain, ratios, cpu_ratios;
  for (int i = 0; i < reps; ++i) {
    if (i % 2 == 0) {
      timed(ls_step, t_ls, c_ls);
      timed(plain_step, t_plain, c_plain);
    } else {
      timed(plain_step, t_plain, c_plain);
      timed(ls_step, t_ls, c_ls);
    }
    ratios.push_back(t_ls.back() / t_plain.back());
    cpu_ratios.push_back(c_ls.back() / c_plain.back());
  }
  const double ratio = median(ratios);
  std::printf("\nmodel: gpt2 body (%lld layers, n_embd %lld, vocab %lld), %lld parameters; T = %d, batch %lld x %lld "
              "tokens per task, %d threads, %d reps (alternated)\n",
              static_cast<long long>(layers), static_cast<long long>(cfg.n_embd), static_cast<long long>(cfg.vocab_size),
              static_cast<long long>(body->parameters().numel()), T, static_cast<long long>(batch),
              static_cast<long long>(seq), at::get_num_threads(), reps);
  std::printf("upscaled *.mlp.*: %zu groups, %lld parameters; task vectors %.1f MiB; router parameters %lld; "
              "setup %.1f s\n",
              pwe->groups().size(), static_cast<long long>(upscaled_params), mib(pwe->task_vector_bytes()),
              static_cast<long long>(pwe->num_router_parameters()), setup_s);
  std::printf("                          best      median    each rep (s)\n");
  std::printf("LS step                %8.3f  %8.3f    %s\n", *std::min_element(t_ls.begin(), t_ls.end()), median(t_ls),
              series(t_ls).c_str());
  std::printf("plain fwd+bwd          %8.3f  %8.3f    %s\n", *std::min_element(t_plain.begin(), t_plain.end()),
              median(t_plain), series(t_plain).c_str());
  std::printf("LS / plain (wall): per rep pair %s, median %.3f (target <= 1.05)\n", series(ratios).c_str(), ratio);
  std::printf("CPU seconds: LS %s (median %.3f); plain %s (median %.3f); LS / plain per pair %s, median %.3f\n",
              series(c_ls).c_str(), median(c_ls), series(c_plain).c_str(), median(c_plain),
              series(cpu_ratios).c_str(), median(cpu_ratios));
  std::printf("task losses, LS step vs plain pass (same theta(r), same batches): max |diff| = %.2e\n", loss_diff);
  std::fflush(stdout);
  char line[256];
  std::snprintf(line, sizeof(line), "TARGET pwe_moe_ls_vs_plain_gpt2_T%d %.3f <=1.05 %s", T, ratio,
                ratio <= 1.05 ? "MET" : "MISSED");
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  fusion::host::set_up_process();  // as `fusion` runs (host/startup.hpp)
  try {
    std::vector<int> task_counts;
    int reps = 3;
    int64_t batch = 8, seq = 128, layers = 12;
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    for (int i = 1; i < argc; i += 2) {
      const std::string k = argv[i];
      FUSION_ENSURE(i + 1 < argc, "option ", k, " needs a value");
      char* end = nullptr;
      const long long v = std::strtoll(argv[i + 1], &end, 10);
      FUSION_ENSURE(end != argv[i + 1] && *end == '\0' && v > 0, "option ", k, " needs a positive integer, got '",
                    argv[i + 1], "'");
      if (k == "--tasks") {
        FUSION_ENSURE(v >= 2, "--tasks needs at least 2 tasks, got ", v);
        task_counts.push_back(static_cast<int>(v));
      } else if (k == "--batch") batch = v;
      else if (k == "--seq") seq = v;
      else if (k == "--reps") reps = static_cast<int>(v);
      else if (k == "--threads") threads = static_cast<int>(v);
      else if (k == "--layers") layers = v;
      else FUSION_FAIL("unknown option ", k);
    }
    if (task_counts.empty()) task_counts = {2};
    at::set_num_threads(threads);
    std::vector<std::string> targets;
    for (int T : task_counts) targets.push_back(run(T, batch, seq, reps, layers));
    std::printf("\n");
    for (const std::string& t : targets) std::printf("%s\n", t.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fusion_bench_gpt2_pwe_moe: %s\n", e.what());
    return 2;
  }
}
