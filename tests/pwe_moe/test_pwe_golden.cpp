// Parity with a Python reference of the original module (make_golden.py): router structure and
// initialisation, merged parameters, forward outputs, router gradients, training trajectories
// (Adam + cosine annealing, LS and EPO).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <set>

#include "pareto_weight_ensembling.hpp"
#include "pwe_moe.hpp"
#include "tiny_model.hpp"

namespace {

using namespace fusion::methods;
using pwe_test::TinyModel;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double diff = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  EXPECT_LE(diff, tol) << what;
}

struct GoldenModel {
  std::unique_ptr<ParetoWeightEnsembling> pwe;
  std::vector<std::unique_ptr<pwe_test::BlobTask>> unused;
};

std::unique_ptr<ParetoWeightEnsembling> build(const nlohmann::json& c, int64_t hidden, bool attn) {
  auto pre = std::make_shared<TinyModel>(pwe_test::state_from_json(c.at("pretrained")));
  std::vector<fusion::ModelPtr> experts;
  std::vector<std::string> names;
  for (const auto& e : c.at("experts")) {
    experts.push_back(std::make_shared<TinyModel>(pwe_test::state_from_json(e)));
    names.push_back("t" + std::to_string(names.size()));
  }
  ParetoWeightEnsemblingOptions o;
  o.init_lambda = 0.3;
  o.router_hidden_layers = hidden;
  o.upscale_attn = attn;
  return ParetoWeightEnsembling::from_models(pre, experts, names, o, at::make_generator<at::CPUGeneratorImpl>(1));
}

// A task with a fixed head (the golden heads) for Task::loss.
class HeadTask : public fusion::Task {
 public:
  explicit HeadTask(at::Tensor head) : head_(std::move(head)) {}
  std::string name() const override { return "head"; }
  int64_t num_classes() const override { return head_.size(0); }
  bool has_train_split() const override { return true; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t, uint64_t) override { return nullptr; }
  at::Tensor logits(const fusion::Model& m, const fusion::StateDict& p, const at::Tensor& x) const override {
    return at::matmul(m.forward(p, x), head_.t());
  }
  nlohmann::json evaluate(const fusion::Model&) override { return {}; }

 private:
  at::Tensor head_;
};

TEST(PweGolden, MergedParametersForwardAndRouterGradients) {
  for (const auto& c : pwe_test::golden().at("pwe")) {
    const int64_t T = c.at("T"), hidden = c.at("router_hidden_layers");
    const bool attn = c.at("upscale_attn");
    auto pwe = build(c, hidden, attn);
    SCOPED_TRACE("T=" + std::to_string(T) + " hidden=" + std::to_string(hidden) + " attn=" + std::to_string(attn));
    // Structure: one group per block MLP (and attention), with the original's router names.
    ASSERT_EQ(pwe->groups().size(), attn ? 4u : 2u);
    std::set<std::string> prefixes;
    for (const auto& grp : pwe->groups()) prefixes.insert(grp.prefix);
    std::set<std::string> want_prefixes{"blocks.0.mlp", "blocks.1.mlp"};
    if (attn) want_prefixes.insert({"blocks.0.self_attn", "blocks.1.self_attn"});
    EXPECT_EQ(prefixes, want_prefixes);
    for (const auto& grp : pwe->groups())
      EXPECT_EQ(grp.keys.size(), grp.prefix.find("mlp") != std::string::npos ? 4u : 2u) << grp.prefix;
    const int64_t per = hidden == 2 ? 4 * T * T + 3 * T : T * T + T;
    EXPECT_EQ(pwe->num_router_parameters(), per * static_cast<int64_t>(pwe->groups().size()));
    const fusion::StateDict golden_routers = pwe_test::state_from_json(c.at("routers"));
    EXPECT_EQ(golden_routers.size(), pwe->router_state().size());
    for (const auto& [k, v] : pwe->router_state()) ASSERT_TRUE(golden_routers.contains(k)) << k;
    pwe->load_router_state(golden_routers, "golden");

    const auto r = c.at("r").get<std::vector<double>>();
    at::Tensor rt = at::tensor(std::vector<float>(r.begin(), r.end()));
    const fusion::StateDict merged = pwe->merge_differentiable(rt);
    const fusion::StateDict want = pwe_test::state_from_json(c.at("merged"));
    ASSERT_EQ(merged.size(), want.size());
    for (const auto& [k, v] : want) expect_close(merged.at(k).detach(), v, 2e-6, k);
    // the no-grad merge agrees with the differentiable one
    const fusion::StateDict m2 = pwe->merge(pwe->route(rt));
    for (const auto& [k, v] : want) expect_close(m2.at(k), v, 2e-6, k + " (merge)");

    std::vector<at::Tensor> xs;
    for (const auto& x : c.at("inputs")) xs.push_back(pwe_test::tensor_from_json(x));
    expect_close(pwe->model().forward(merged, at::cat(xs)).detach(), pwe_test::tensor_from_json(c.at("features")), 2e-5,
                 "features");

    // Router gradients of Σ rₜ Lₜ through the training step (lr 0 leaves the routers unchanged).
    std::vector<std::unique_ptr<HeadTask>> tasks;
    std::vector<fusion::Task*> tp;
    std::vector<fusion::Batch> batches;
    for (int64_t t = 0; t < T; ++t) {
      tasks.push_back(std::make_unique<HeadTask>(pwe_test::tensor_from_json(c.at("heads")[t])));
      tp.push_back(tasks.back().get());
      at::Tensor y = at::tensor(c.at("labels")[t].get<std::vector<int64_t>>());
      batches.push_back({xs[t], y});
    }
    PweMoeLs ls;
    fusion::Adam adam(pwe->router_parameters());
    const auto stats = ls.step(*pwe, adam, tp, batches, r, 0.0, 1);
    const auto losses = c.at("losses").get<std::vector<double>>();
    for (int64_t t = 0; t < T; ++t) EXPECT_NEAR(stats.losses[t], losses[t], 2e-5);
    const fusion::StateDict gw = pwe_test::state_from_json(c.at("router_grads"));
    const fusion::StateDict rs = pwe->router_state();
    for (const auto& [k, v] : gw) expect_close(rs.at(k).grad(), v, 5e-6, "grad " + k);
    // the same gradients through autograd over the differentiable merge (the original's form)
    for (auto& p : pwe->router_parameters()) p.mutable_grad() = at::Tensor();
    const fusion::StateDict md = pwe->merge_differentiable(rt);
    at::Tensor total = at::zeros({});
    for (int64_t t = 0; t < T; ++t) total = total + r[t] * tp[t]->loss(pwe->model(), md, batches[t]);
    total.backward();
    for (const auto& [k, v] : gw) expect_close(rs.at(k).grad(), v, 5e-6, "autograd grad " + k);
    // EPO's C = G Gᵀ of the per-task router gradients (invariant to the parameters' order)
    std::vector<at::Tensor> G;
    for (int64_t t = 0; t < T; ++t) {
      const fusion::StateDict mt = pwe->merge_differentiable(rt);
      auto gt = torch::autograd::grad({tp[t]->loss(pwe->model(), mt, batches[t])}, pwe->router_parameters());
      std::vector<at::Tensor> flat;
      for (auto& x : gt) flat.push_back(x.reshape({-1}));
      G.push_back(at::cat(flat).to(at::kDouble));
    }
    at::Tensor Gm = at::stack(G);
    at::Tensor C = at::mm(Gm, Gm.t());
    const auto Cw = c.at("C").get<std::vector<std::vector<double>>>();
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < T; ++j)
        EXPECT_NEAR(C[i][j].item<double>(), Cw[i][j], 1e-5 * std::max(1.0, std::abs(Cw[i][j]))) << "C " << i << j;
  }
}

TEST(PweGolden, RouterInitialisationStatistics) {
  // T = 48 experts of a 1-block tiny model: 96×48 and 48×96 weights per router.
  const int T = 48;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  auto pre = std::make_shared<TinyModel>(pwe_test::random_tiny_params(1, g));
  std::vector<fusion::ModelPtr> experts(T, pre);
  std::vector<std::string> names;
  for (int t = 0; t < T; ++t) names.push_back("t" + std::to_string(t));
  ParetoWeightEnsemblingOptions o;
  o.init_lambda = 0.3;
  auto pwe = ParetoWeightEnsembling::from_models(pre, experts, names, o, at::make_generator<at::CPUGeneratorImpl>(9));
  const auto& grp = pwe->groups().at(0);
  ASSERT_EQ(grp.router.size(), 4u);
  EXPECT_EQ(grp.router[0].sizes(), (std::vector<int64_t>{2 * T, T}));
  EXPECT_EQ(grp.router[2].sizes(), (std::vector<int64_t>{T, 2 * T}));
  for (int i : {0, 2}) {
    EXPECT_NEAR(grp.router[i].std().item<double>(), 0.01, 0.0004);
    EXPECT_NEAR(grp.router[i].mean().item<double>(), 0.0, 0.0004);
  }
  EXPECT_EQ(grp.router[1].abs().max().item<double>(), 0.0);
  EXPECT_TRUE(at::allclose(grp.router[3], at::full({T}, 0.3)));
  EXPECT_TRUE(grp.router[0].requires_grad());
  // g(r) ≈ init_lambda at initialisation, so the merge starts at task arithmetic.
  const auto out = pwe->route(at::full({T}, 1.0 / T));
  EXPECT_NEAR(out[0].mean().item<double>(), 0.3, 1e-3);
  // same seed, same routers
  auto pwe2 = ParetoWeightEnsembling::from_models(pre, experts, names, o, at::make_generator<at::CPUGeneratorImpl>(9));
  EXPECT_TRUE(at::equal(pwe2->groups()[0].router[0], grp.router[0]));
}

TEST(PweGolden, RouterCountsOfAVitB32ShapedStack) {
  // 12 blocks as ViT-B/32: 264 router parameters for T = 2 and 3,360 for T = 8 (docs/pwe_moe.md, "The module").
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  auto pre = std::make_shared<TinyModel>(pwe_test::random_tiny_params(12, g));
  for (auto [T, want] : {std::pair{2, 264}, std::pair{8, 3360}}) {
    std::vector<fusion::ModelPtr> experts(T, pre);
    std::vector<std::string> names(T, "x");
    auto pwe = ParetoWeightEnsembling::from_models(pre, experts, names, {}, at::make_generator<at::CPUGeneratorImpl>(1));
    EXPECT_EQ(pwe->num_router_parameters(), want);
    EXPECT_EQ(pwe->groups().size(), 12u);
  }
}

// upscale_attn names attention as each family does: CLIP's `self_attn` and GPT-2's `attn`
// (`transformer.h.{i}.attn.c_attn`, `.c_proj`); neither pattern takes the other's modules.
TEST(PweGolden, UpscaleAttnFindsGpt2AttentionToo) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  fusion::StateDict gpt2_named;
  for (const auto& [key, t] : pwe_test::random_tiny_params(2, g)) {
    std::string k = key;
    if (const size_t at_attn = k.find(".self_attn."); at_attn != std::string::npos) k.replace(at_attn, 11, ".attn.");
    gpt2_named.set("transformer." + k, t);
  }
  auto pre = std::make_shared<TinyModel>(gpt2_named);
  std::vector<fusion::ModelPtr> experts(2, pre);
  std::vector<std::string> names{"a", "b"};
  for (const bool attn : {false, true}) {
    ParetoWeightEnsemblingOptions o;
    o.upscale_attn = attn;
    auto pwe = ParetoWeightEnsembling::from_models(pre, experts, names, o, at::make_generator<at::CPUGeneratorImpl>(1));
    std::set<std::string> prefixes;
    for (const auto& grp : pwe->groups()) prefixes.insert(grp.prefix);
    std::set<std::string> want{"transformer.blocks.0.mlp", "transformer.blocks.1.mlp"};
    if (attn) want.insert({"transformer.blocks.0.attn", "transformer.blocks.1.attn"});
    EXPECT_EQ(prefixes, want) << "upscale_attn = " << attn;
  }
}

TEST(PweGolden, CosineScheduleMatchesPyTorch) {
  for (const auto& c : pwe_test::golden().at("cosine")) {
    const double lr = c.at("lr");
    const int64_t tmax = c.at("T_max");
    const auto lrs = c.at("lrs").get<std::vector<double>>();
    for (size_t i = 0; i < lrs.size(); ++i)
      EXPECT_NEAR(fusion::cosine_lr(lr, static_cast<int64_t>(i) + 1, tmax, 0.1), lrs[i], 1e-12) << "step " << i + 1;
  }
}

class ExposedEpo : public PweMoeEpo {
 public:
  using PweMoeEpo::loss_weights;
};

TEST(PweGolden, TrainingTrajectoriesLsAndEpo) {
  for (const auto& c : pwe_test::golden().at("train")) {
    const int64_t T = c.at("T"), steps = c.at("steps");
    const std::string method = c.at("method");
    SCOPED_TRACE(method + " T=" + std::to_string(T));
    auto pwe = build(c, 2, false);
    pwe->load_router_state(pwe_test::state_from_json(c.at("routers_init")), "golden");
    std::vector<std::unique_ptr<HeadTask>> tasks;
    std::vector<fusion::Task*> tp;
    for (int64_t t = 0; t < T; ++t) {
      tasks.push_back(std::make_unique<HeadTask>(pwe_test::tensor_from_json(c.at("heads")[t])));
      tp.push_back(tasks.back().get());
    }
    std::unique_ptr<PweMoeAlgorithm> algo;
    if (method == "ls") algo = std::make_unique<PweMoeLs>();
    else algo = std::make_unique<PweMoeEpo>();
    fusion::Adam adam(pwe->router_parameters());
    const double lr = c.at("lr");
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<fusion::Batch> batches;
      for (int64_t t = 0; t < T; ++t) {
        const auto& b = c.at("batches")[s][t];
        batches.push_back({pwe_test::tensor_from_json(b.at("x")), at::tensor(b.at("y").get<std::vector<int64_t>>())});
      }
      const auto r = c.at("rays")[s].get<std::vector<double>>();
      const auto& log = c.at("log")[s];
      const double step_lr = fusion::cosine_lr(lr, s + 1, steps, 0.1);
      EXPECT_NEAR(step_lr, log.at("lr").get<double>(), 1e-12);
      const auto st = algo->step(*pwe, adam, tp, batches, r, step_lr, s + 1);
      EXPECT_EQ(st.mode, log.at("mode").get<std::string>());
      const auto w = log.at("weights").get<std::vector<double>>();
      const auto l = log.at("losses").get<std::vector<double>>();
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_NEAR(st.losses[t], l[t], 5e-5) << "step " << s;
        EXPECT_NEAR(st.weights[t], w[t], 5e-5) << "step " << s;
      }
    }
    const fusion::StateDict want = pwe_test::state_from_json(c.at("routers_final"));
    for (const auto& [k, v] : want) expect_close(pwe->router_state().at(k).detach(), v, 2e-5, k);
    // and training moved the routers away from their initialisation
    const fusion::StateDict init = pwe_test::state_from_json(c.at("routers_init"));
    double moved = 0;
    for (const auto& [k, v] : init) moved += (pwe->router_state().at(k).detach() - v).abs().sum().item<double>();
    EXPECT_GT(moved, 1e-3);
  }
}

TEST(PweGolden, EpoFallbackIsCountedAndUsesR) {
  ExposedEpo epo;
  PweMoeStepStats st;
  at::Tensor C = at::full({2, 2}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  const auto w = epo.loss_weights({1.0, 2.0}, {0.25, 0.75}, C, st);
  EXPECT_TRUE(st.lp_failed);
  EXPECT_EQ(epo.lp_failures(), 1);
  EXPECT_NEAR(w[0], 0.5, 1e-12);  // T · r/Σr
  EXPECT_NEAR(w[1], 1.5, 1e-12);
}

}  // namespace
