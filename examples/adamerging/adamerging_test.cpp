// Unit tests of task-wise AdaMerging's numerics, on the SDK's test kit (fusion::testing: a tiny
// functional model, in-memory pools, synthetic tasks). Built and run by build_and_run.sh.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <fusion/component.hpp>
#include <fusion/error.hpp>
#include <fusion/model_pool.hpp>
#include <fusion/options.hpp>
#include <fusion/testing/fixtures.hpp>
#include <fusion/testing/gtest.hpp>
#include <fusion/testing/memory_pools.hpp>
#include <fusion/testing/tiny_model.hpp>

#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "adamerging.hpp"

namespace {

using adamerging::TaskWiseAdaMerging;
using adamerging::TaskWiseAdaMergingOptions;
namespace ft = fusion::testing;

// A synthetic task that also serves its test split as endless unlabeled batches (labels left
// undefined, so a method that read them would fail), reshuffled every epoch from the seed.
class UnlabeledTestStream : public fusion::BatchStream {
 public:
  UnlabeledTestStream(at::Tensor inputs, int64_t batch, uint64_t seed)
      : inputs_(std::move(inputs)), batch_(batch), gen_(at::make_generator<at::CPUGeneratorImpl>(seed)) {}
  fusion::Batch next() override {
    std::vector<at::Tensor> rows;
    int64_t need = batch_;
    while (need > 0) {
      if (pos_ >= order_.numel()) {
        order_ = at::randperm(inputs_.size(0), gen_, at::kLong);
        pos_ = 0;
      }
      const int64_t take = std::min(need, order_.numel() - pos_);
      rows.push_back(inputs_.index_select(0, order_.slice(0, pos_, pos_ + take).to(inputs_.device())));
      pos_ += take;
      need -= take;
    }
    ++*served_;
    return {at::cat(rows), at::Tensor()};
  }
  std::shared_ptr<int64_t> served_ = std::make_shared<int64_t>(0);

 private:
  at::Tensor inputs_, order_ = at::empty({0}, at::kLong);
  int64_t batch_, pos_ = 0;
  at::Generator gen_;
};

class UnlabeledTestTask : public ft::SyntheticTask {
 public:
  using SyntheticTask::SyntheticTask;
  std::unique_ptr<fusion::BatchStream> test_stream(int64_t batch_size, uint64_t seed) override {
    ++streams_;
    return std::make_unique<UnlabeledTestStream>(test_split().inputs, batch_size, seed);
  }
  int64_t streams_ = 0;
};

struct World {
  ft::TinySetup setup;                       // models and the pool of models
  std::shared_ptr<ft::MemoryTaskPool> tasks;  // the same tasks, serving unlabeled test batches
};

World make_world(ft::ExpertKind kind = ft::ExpertKind::FineTuned, int64_t num_tasks = 2) {
  ft::TinySetupOptions o;
  o.num_tasks = num_tasks;
  o.experts = kind;
  o.fine_tune_steps = 60;
  World w{ft::make_tiny_setup(o), std::make_shared<ft::MemoryTaskPool>()};
  for (int64_t i = 0; i < num_tasks; ++i)
    w.tasks->add(std::make_unique<UnlabeledTestTask>("task" + std::to_string(i), ft::tiny_task_options(o, i)));
  return w;
}

fusion::Context context(const std::map<std::string, fusion::Value>& values = {}, uint64_t seed = 42) {
  ft::ContextOptions co;
  co.seed = seed;
  return ft::test_context(fusion::schema_of<TaskWiseAdaMergingOptions>(), values, co);
}

TaskWiseAdaMergingOptions options_of(const fusion::Context& ctx) {
  return fusion::read_options<TaskWiseAdaMergingOptions>(ctx.config());
}

// Σₖ mean entropy of task k's whole test split under `params` (no sampling noise).
double full_entropy(const fusion::Model& model, const fusion::StateDict& params, ft::MemoryTaskPool& tasks) {
  at::NoGradGuard no_grad;
  double s = 0.0;
  for (size_t k = 0; k < tasks.size(); ++k) {
    auto& task = dynamic_cast<ft::SyntheticTask&>(tasks.at(k));
    s += adamerging::entropy_loss(task.logits(model, params, task.test_split().inputs)).item<double>();
  }
  return s;
}

std::vector<fusion::StateDict> task_vectors_of(const World& w) {
  std::vector<fusion::StateDict> out;
  for (const auto& [name, expert] : w.setup.experts)
    out.push_back(fusion::subtract(expert->parameters(), w.setup.pretrained->parameters()));
  return out;
}

TEST(EntropyLoss, HandComputedValues) {
  // Equal logits: every row is uniform over C classes, H = log C (up to the 1e-8 inside the log).
  at::Tensor uniform = at::zeros({3, 4});
  EXPECT_NEAR(adamerging::entropy_loss(uniform).item<double>(), std::log(4.0), 1e-6);
  // A two-class row with p = (σ(1), 1 − σ(1)) and a confident row.
  at::Tensor rows = at::tensor({1.0f, 0.0f, 0.0f, 50.0f}).reshape({2, 2});
  const double p = 1.0 / (1.0 + std::exp(-1.0));
  const double h0 = -(p * std::log(p + 1e-8) + (1 - p) * std::log(1 - p + 1e-8));
  EXPECT_NEAR(adamerging::entropy_loss(rows).item<double>(), h0 / 2.0, 1e-6);
  EXPECT_THROW(adamerging::entropy_loss(at::zeros({4})), fusion::Error);
}

TEST(MergeTaskWise, ValuesIntegersAndGradient) {
  fusion::StateDict base, a, b;
  base.set("w", at::tensor({1.0f, 2.0f}));
  base.set("ids", at::tensor({0, 1}, at::kLong));
  a.set("w", at::tensor({0.5f, -1.0f}));
  a.set("ids", at::tensor({7, 7}, at::kLong));
  b.set("w", at::tensor({2.0f, 4.0f}));
  b.set("ids", at::tensor({9, 9}, at::kLong));
  at::Tensor w = at::tensor({0.3f, -0.5f}).set_requires_grad(true);
  fusion::StateDict m = adamerging::merge_task_wise(base, {a, b}, w);
  // θ₀ + 0.3 τa − 0.5 τb, integers from θ₀.
  EXPECT_TRUE(at::allclose(m.at("w"), at::tensor({1.0f + 0.15f - 1.0f, 2.0f - 0.3f - 2.0f})));
  EXPECT_TRUE(at::equal(m.at("ids"), base.at("ids")));
  // d(Σ r ⊙ θ)/dwₜ = Σ r ⊙ τₜ.
  (m.at("w") * at::tensor({1.0f, 10.0f})).sum().backward();
  EXPECT_TRUE(at::allclose(w.grad(), at::tensor({0.5f - 10.0f, 2.0f + 40.0f})));
  EXPECT_THROW(adamerging::merge_task_wise(base, {a}, w), fusion::Error);
}

TEST(Options, DefaultsAndChecks) {
  const TaskWiseAdaMergingOptions d = options_of(context());
  EXPECT_EQ(d.init_values, 0.3);
  EXPECT_EQ(d.lr, 1e-3);
  EXPECT_EQ(d.max_steps, 1000);
  EXPECT_EQ(d.batch_size, 16);
  EXPECT_FALSE(d.clamp_weights);
  const auto bad_lr = [] {
    try {
      context({{"lr", 0.0}});
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  EXPECT_NE(bad_lr.find("method.lr must be positive"), std::string::npos) << bad_lr;
  EXPECT_THROW(context({{"max_steps", int64_t{0}}}), fusion::Error);
  EXPECT_THROW(context({{"init_values", INFINITY}}), fusion::Error);
}

TEST(Requirements, PretrainedExpertsAndTaskPool) {
  const fusion::ComponentInfo info = TaskWiseAdaMerging::info();
  EXPECT_EQ(info.name, "task_wise_adamerging");
  EXPECT_TRUE(info.requirements.needs_pretrained);
  EXPECT_EQ(info.requirements.min_experts, 1);
  EXPECT_TRUE(info.requirements.needs_task_pool);
  EXPECT_FALSE(info.requirements.needs_train_splits);
  World w = make_world();
  try {
    fusion::check_requirements(info, *w.setup.models, nullptr);
    ADD_FAILURE() << "no error without a task pool";
  } catch (const fusion::Error& e) {
    EXPECT_EQ(std::string(e.what()), "task_wise_adamerging needs a task pool: add a [taskpool] section");
  }
  EXPECT_NO_THROW(fusion::check_requirements(info, *w.setup.models, w.tasks.get()));
}

TEST(Gradient, ZeroWhenTheExpertIsThePretrainedModel) {
  World w = make_world(ft::ExpertKind::Identical, 1);
  const auto& pre = *w.setup.pretrained;
  const auto taus = task_vectors_of(w);
  at::Tensor lambda = at::full({1}, 0.3f).set_requires_grad(true);
  auto& task = dynamic_cast<ft::SyntheticTask&>(w.tasks->at(0));
  adamerging::entropy_loss(
      task.logits(pre, adamerging::merge_task_wise(pre.parameters(), taus, lambda), task.test_split().inputs))
      .backward();
  ASSERT_TRUE(lambda.grad().defined());
  EXPECT_EQ(lambda.grad().item<float>(), 0.0f);

  // And the whole method returns the pretrained model with λ untouched (Adam's step of a zero
  // gradient is zero).
  fusion::Context ctx = context({{"max_steps", int64_t{5}}, {"lr", 0.1}});
  fusion::Result r = TaskWiseAdaMerging(options_of(ctx)).run(*w.setup.models, w.tasks.get(), ctx);
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].metadata["lambdas"], nlohmann::json::array({0.30000001192092896}));
  EXPECT_EQ(ft::state_dict_difference(r.models[0].make()->parameters(), pre.parameters(), 0, 0), "");
}

TEST(Gradient, MatchesFiniteDifferences) {
  World w = make_world();
  const auto& pre = *w.setup.pretrained;
  // In double precision, so that central differences are accurate.
  const fusion::StateDict base = pre.parameters().to(at::kCPU, at::kDouble);
  std::vector<fusion::StateDict> taus;
  for (const auto& t : task_vectors_of(w)) taus.push_back(t.to(at::kCPU, at::kDouble));
  auto loss_at = [&](const at::Tensor& lambda) {
    at::Tensor s = at::zeros({}, at::kDouble);
    const fusion::StateDict m = adamerging::merge_task_wise(base, taus, lambda);
    for (size_t k = 0; k < w.tasks->size(); ++k) {
      auto& task = dynamic_cast<ft::SyntheticTask&>(w.tasks->at(k));
      at::Tensor x = task.test_split().inputs.slice(0, 0, 16).to(at::kDouble);
      at::Tensor features = pre.forward(m, x);
      s = s + adamerging::entropy_loss(at::matmul(features, task.head().to(at::kDouble).t()).to(at::kDouble));
    }
    return s;
  };
  at::Tensor lambda = at::tensor({0.3, 0.6}, at::kDouble).set_requires_grad(true);
  loss_at(lambda).backward();
  for (int64_t t = 0; t < 2; ++t) {
    const double h = 1e-3;
    at::Tensor up = lambda.detach().clone(), down = lambda.detach().clone();
    up[t] += h;
    down[t] -= h;
    // entropy_loss computes in float32: a tolerance to match.
    const double fd = (loss_at(up).item<double>() - loss_at(down).item<double>()) / (2 * h);
    EXPECT_NEAR(lambda.grad()[t].item<double>(), fd, 1e-4 + 1e-3 * std::abs(fd)) << "λ" << t;
    EXPECT_GT(std::abs(fd), 1e-2) << "λ" << t << ": a gradient too small to test";
  }
}

TEST(Run, LowersTheEntropyWithoutLabels) {
  World w = make_world();
  const auto& pre = *w.setup.pretrained;
  const auto taus = task_vectors_of(w);
  fusion::Context ctx = context({{"max_steps", int64_t{60}}, {"lr", 0.05}, {"batch_size", int64_t{8}}});
  fusion::Result r = TaskWiseAdaMerging(options_of(ctx)).run(*w.setup.models, w.tasks.get(), ctx);
  ASSERT_EQ(r.models.size(), 1u);
  EXPECT_EQ(r.models[0].label, "merged");
  const std::vector<double> lambdas = r.models[0].metadata.at("lambdas").get<std::vector<double>>();
  ASSERT_EQ(lambdas.size(), 2u);
  EXPECT_NE(lambdas, (std::vector<double>{0.3, 0.3}));

  // The entropy over whole test splits is lower at the learnt λ than at the initial one.
  const double before = full_entropy(
      pre, adamerging::merge_task_wise(pre.parameters(), taus, at::full({2}, 0.3f)), *w.tasks);
  const auto merged = r.models[0].make();
  const double after = full_entropy(pre, merged->parameters(), *w.tasks);
  EXPECT_LT(after, before - 1e-3) << "before " << before << ", after " << after;
  // The merged model is θ₀ + Σ λₜ τₜ at the reported λ.
  const fusion::StateDict expect = adamerging::merge_task_wise(
      pre.parameters(), taus, at::tensor(std::vector<float>(lambdas.begin(), lambdas.end())));
  EXPECT_EQ(ft::state_dict_difference(merged->parameters(), expect, 1e-5, 1e-6), "");

  EXPECT_EQ(r.info.at("trainable_params"), 2);
  EXPECT_LT(r.info.at("final_entropy").get<double>(), r.info.at("initial_entropy").get<double>());
  // Every task served one stream of 60 batches; the pool was not modified.
  for (size_t k = 0; k < w.tasks->size(); ++k) EXPECT_EQ(dynamic_cast<UnlabeledTestTask&>(w.tasks->at(k)).streams_, 1);
  EXPECT_EQ(w.setup.models->modification(), "");
}

TEST(Run, SameSeedSameLambdasOtherSeedOther) {
  World w = make_world();
  auto lambdas = [&](uint64_t seed) {
    fusion::Context ctx = context({{"max_steps", int64_t{10}}, {"lr", 0.05}, {"batch_size", int64_t{4}}}, seed);
    return TaskWiseAdaMerging(options_of(ctx))
        .run(*w.setup.models, w.tasks.get(), ctx)
        .models[0]
        .metadata.at("lambdas")
        .get<std::vector<double>>();
  };
  EXPECT_EQ(lambdas(1), lambdas(1));
  EXPECT_NE(lambdas(1), lambdas(2));
}

TEST(Run, ClampWeights) {
  World w = make_world();
  const auto& pre = *w.setup.pretrained;
  // λ starts at 1.5: clamped to 1, where clamp's gradient is zero, so λ stays and the model is
  // θ₀ + Σ τₜ.
  fusion::Context ctx =
      context({{"max_steps", int64_t{3}}, {"lr", 0.05}, {"init_values", 1.5}, {"clamp_weights", true}});
  fusion::Result r = TaskWiseAdaMerging(options_of(ctx)).run(*w.setup.models, w.tasks.get(), ctx);
  EXPECT_EQ(r.models[0].metadata.at("lambdas"), nlohmann::json::array({1.0, 1.0}));
  const fusion::StateDict expect =
      adamerging::merge_task_wise(pre.parameters(), task_vectors_of(w), at::ones({2}));
  EXPECT_EQ(ft::state_dict_difference(r.models[0].make()->parameters(), expect, 1e-5, 1e-6), "");
}

TEST(Run, TrainLogHasOneRowPerStep) {
  World w = make_world();
  ft::ScratchDir dir("adamerging_test");
  ft::ContextOptions co;
  co.run_dir = dir.path();
  fusion::Context ctx = ft::test_context(fusion::schema_of<TaskWiseAdaMergingOptions>(),
                                         {{"max_steps", int64_t{4}}, {"lr", 0.05}}, co);
  TaskWiseAdaMerging(options_of(ctx)).run(*w.setup.models, w.tasks.get(), ctx);
  std::ifstream in(dir.path() / "train_log.csv");
  std::string header, line;
  ASSERT_TRUE(std::getline(in, header));
  EXPECT_EQ(header, "step,loss,entropy_task0,entropy_task1,lambda_task0,lambda_task1,seconds");
  int rows = 0;
  while (std::getline(in, line)) ++rows;
  EXPECT_EQ(rows, 4);
}

// A task that keeps the SDK's default test_stream, which refuses.
class NoTestBatches : public fusion::Task {
 public:
  std::string name() const override { return "plain"; }
  int64_t num_classes() const override { return 2; }
  bool has_train_split() const override { return false; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t, uint64_t) override { FUSION_FAIL("no train split"); }
  at::Tensor logits(const fusion::Model&, const fusion::StateDict&, const at::Tensor&) const override {
    FUSION_FAIL("not reached");
  }
  nlohmann::json evaluate(const fusion::Model&) override { FUSION_FAIL("not reached"); }
};

TEST(Run, ATaskWithoutTestBatchesIsNamed) {
  World w = make_world();
  ft::MemoryTaskPool plain;
  plain.add(std::make_unique<NoTestBatches>());
  fusion::Context ctx = context({{"max_steps", int64_t{1}}});
  try {
    TaskWiseAdaMerging(options_of(ctx)).run(*w.setup.models, &plain, ctx);
    ADD_FAILURE() << "no error";
  } catch (const fusion::Error& e) {
    EXPECT_NE(std::string(e.what()).find("task 'plain' offers no test batches"), std::string::npos) << e.what();
  }
  // Refused before any weight is read.
  EXPECT_EQ(w.setup.models->pretrained_calls(), 0);
  EXPECT_EQ(w.setup.models->loads(), 0);
}

// The SDK's conformance suite (fusion check's checks), as a plugin author runs it on their method.
TEST(Conformance, TaskWiseAdaMerging) {
  ft::ConformanceOptions o;
  o.options = {"max_steps=20", "lr=0.05"};
  FUSION_EXPECT_CONFORMS(ft::check_algorithm<TaskWiseAdaMerging>(o));
}

}  // namespace
