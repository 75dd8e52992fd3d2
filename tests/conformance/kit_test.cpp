// The test kit itself (fusion::testing): the tiny model, the in-memory pools, the setups and the
// comparisons that the conformance suite and plugin authors' tests rely on.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/testing/fixtures.hpp"
#include "fusion/testing/memory_pools.hpp"
#include "fusion/testing/tiny_model.hpp"

namespace {

namespace ft = fusion::testing;
using fusion::StateDict;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const fusion::Error& e) {
    return e.what();
  }
  return "(no fusion::Error)";
}

ft::TinySetupOptions setup_options(int64_t num_tasks, ft::ExpertKind experts = ft::ExpertKind::FineTuned) {
  ft::TinySetupOptions o;
  o.num_tasks = num_tasks;
  o.experts = experts;
  return o;
}

ft::SyntheticTaskOptions task_options(uint64_t seed, int64_t train_size = 96, int64_t classes = 3) {
  ft::SyntheticTaskOptions o;
  o.seed = seed;
  o.train_size = train_size;
  o.classes = classes;
  return o;
}

// ---------------------------------------------------------------------------------------------
// TinyModel

TEST(TinyModel, ForwardGivesFeaturesOfTheConfiguredWidth) {
  ft::TinyModelConfig c;
  c.input_dim = 5;
  c.hidden = 7;
  auto m = ft::TinyModel::random(c, 3);
  at::Tensor y = m->forward(at::randn({11, 5}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{11, 7}));
  EXPECT_TRUE(y.isfinite().all().item<bool>());
  EXPECT_EQ(m->architecture(), "tiny_mlp");
  EXPECT_EQ(m->config(), c.to_json());
  EXPECT_EQ(ft::TinyModelConfig::from_json(m->config()).hidden, 7);
  EXPECT_NE(error_of([&] { m->forward(at::randn({2, 3})); }).find("inputs must be [N, 5]"), std::string::npos);
}

TEST(TinyModel, ParametersAreNamedLikeATransformerAndSeeded) {
  ft::TinyModelConfig c;
  auto p = ft::TinyModel::random_parameters(c, 1);
  EXPECT_TRUE(p.contains("model.encoder.layers.1.mlp.fc2.weight"));
  EXPECT_TRUE(p.contains("model.encoder.layers.0.self_attn.bias"));
  EXPECT_EQ(p.at("model.embeddings.position_ids").scalar_type(), at::kLong);
  EXPECT_TRUE(p.at("model.embeddings.weight").equal(ft::TinyModel::random_parameters(c, 1).at("model.embeddings.weight")));
  EXPECT_FALSE(p.at("model.embeddings.weight").equal(ft::TinyModel::random_parameters(c, 2).at("model.embeddings.weight")));
  c.attention = false;
  EXPECT_FALSE(ft::TinyModel::random_parameters(c, 1).contains("model.encoder.layers.0.self_attn.weight"));
}

TEST(TinyModel, ForwardReadsTheGivenParametersWithAutograd) {
  auto m = ft::TinyModel::random({}, 0);
  StateDict p;
  for (const auto& [k, t] : m->parameters())
    p.set(k, t.is_floating_point() ? t.clone().set_requires_grad(true) : t);
  at::Tensor x = at::randn({4, 3});
  m->forward(p, x).pow(2).sum().backward();
  for (const auto& [k, t] : p) {
    if (!t.is_floating_point()) continue;
    ASSERT_TRUE(t.grad().defined()) << k;
  }
  EXPECT_GT(p.at("model.encoder.layers.0.mlp.fc1.weight").grad().abs().sum().item<double>(), 0.0);
  // Other parameters, other output.
  StateDict q = m->parameters().clone();
  q.at("model.embeddings.bias").add_(1.0);
  EXPECT_FALSE(m->forward(q, x).equal(m->forward(x)));
}

TEST(TinyModel, WithParametersKeepsTheArchitectureAndChecksTheLayout) {
  auto m = ft::TinyModel::random({}, 0);
  auto n = m->with_parameters(m->parameters().clone());
  EXPECT_NE(dynamic_cast<ft::TinyModel*>(n.get()), nullptr);
  StateDict bad = m->parameters().clone();
  bad.set("model.post_layernorm.bias", at::zeros({5}));
  EXPECT_NE(error_of([&] { m->with_parameters(bad); }).find("model.post_layernorm.bias"), std::string::npos);
  bad.erase("model.post_layernorm.bias");
  EXPECT_NE(error_of([&] { ft::TinyModel t(bad); }).find("lacks key 'model.post_layernorm.bias'"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// MemoryModelPool

std::shared_ptr<ft::MemoryModelPool> pool_of(const ft::TinySetup& s) {
  return std::make_shared<ft::MemoryModelPool>(s.pretrained, s.experts);
}

TEST(MemoryModelPool, LendsCopiesAndCountsCalls) {
  auto s = ft::make_tiny_setup({});
  auto pool = pool_of(s);
  EXPECT_EQ(pool->expert_names(), (std::vector<std::string>{"task0", "task1"}));
  EXPECT_TRUE(pool->has_pretrained());
  auto p1 = pool->pretrained();
  EXPECT_EQ(p1, pool->pretrained());  // one cached object
  EXPECT_EQ(pool->pretrained_calls(), 2);
  auto a = pool->load("task0");
  auto b = pool->load("task0");
  EXPECT_NE(a->parameters().at("model.embeddings.weight").data_ptr(),
            b->parameters().at("model.embeddings.weight").data_ptr());
  EXPECT_TRUE(a->parameters().at("model.embeddings.weight").equal(s.experts[0].second->parameters().at("model.embeddings.weight")));
  EXPECT_NE(dynamic_cast<ft::TinyModel*>(a.get()), nullptr);
  EXPECT_EQ(pool->loads(), 2);
  EXPECT_EQ(pool->loads_of("task0"), 2);
  EXPECT_EQ(pool->loads_of("task1"), 0);
  EXPECT_EQ(error_of([&] { pool->load("nope"); }), "unknown expert 'nope' (experts: task0, task1)");
  ft::MemoryModelPool none(nullptr, {});
  EXPECT_FALSE(none.has_pretrained());
  EXPECT_EQ(error_of([&] { none.pretrained(); }), "the model pool has no pretrained model");
}

TEST(MemoryModelPool, SeesAModifiedPretrainedModelButNotAModifiedLoan) {
  auto s = ft::make_tiny_setup({});
  auto pool = pool_of(s);
  EXPECT_EQ(pool->modification(), "");
  pool->load("task1")->parameters().at("model.embeddings.bias").add_(1.0);  // the caller's own copy
  EXPECT_EQ(pool->modification(), "");
  auto pre = pool->pretrained();
  const_cast<fusion::Model&>(*pre).parameters().at("model.encoder.layers.0.mlp.fc1.bias").mul_(2.0);
  const std::string m = pool->modification();
  EXPECT_NE(m.find("the pretrained model handed out by pretrained() changed"), std::string::npos) << m;
  EXPECT_NE(m.find("model.encoder.layers.0.mlp.fc1.bias"), std::string::npos) << m;
  // The pool's own model is intact: a new pool over the same models starts from θ₀.
  EXPECT_EQ(pool_of(s)->modification(), "");
  EXPECT_TRUE(pool_of(s)->pretrained()->parameters().at("model.encoder.layers.0.mlp.fc1.bias").equal(
      s.pretrained->parameters().at("model.encoder.layers.0.mlp.fc1.bias")));
}

TEST(MemoryModelPool, SeesRequiresGradAndRemovedKeys) {
  auto s = ft::make_tiny_setup({});
  auto pool = pool_of(s);
  auto pre = pool->pretrained();
  const_cast<fusion::Model&>(*pre).parameters().at("model.embeddings.weight").requires_grad_(true);
  EXPECT_NE(pool->modification().find("requires grad"), std::string::npos) << pool->modification();
  auto pool2 = pool_of(s);
  const_cast<fusion::Model&>(*pool2->pretrained()).parameters().erase("model.post_layernorm.bias");
  EXPECT_NE(pool2->modification().find("key 'model.post_layernorm.bias' was removed"), std::string::npos);
}

TEST(MemoryModelPool, CountsTheExpertsAliveAtOnce) {
  auto s = ft::make_tiny_setup(setup_options(3));
  auto streaming = pool_of(s);
  for (const auto& n : streaming->expert_names()) streaming->load(n);  // each dropped at once
  EXPECT_EQ(streaming->max_live_experts(), 1);
  auto holding = pool_of(s);
  std::vector<fusion::ModelPtr> kept;
  for (const auto& n : holding->expert_names()) kept.push_back(holding->load(n));
  EXPECT_EQ(holding->max_live_experts(), 3);
  EXPECT_EQ(holding->max_lent_bytes_alive(), 2 * holding->expert_bytes());
}

TEST(MemoryModelPool, HandsOutOnItsDeviceAndDtypeAndSaves) {
  auto s = ft::make_tiny_setup({});
  ft::MemoryModelPool pool(s.pretrained, s.experts, at::kCPU, at::kDouble);
  EXPECT_EQ(pool.pretrained()->parameters().at("model.embeddings.weight").scalar_type(), at::kDouble);
  EXPECT_EQ(pool.load("task0")->parameters().at("model.embeddings.position_ids").scalar_type(), at::kLong);
  ft::ScratchDir dir("fusion_kit_save");
  pool.save(*pool.load("task1"), dir.path() / "m");
  EXPECT_EQ(pool.saves(), 1);
  StateDict back = fusion::load_safetensors(dir.path() / "m");
  EXPECT_EQ(ft::state_dict_difference(back, pool.load("task1")->parameters(), 0, 0), "");
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "m" / "config.json"));
}

TEST(MemoryModelPool, FromStateDictsMakesCheckpoints) {
  StateDict a;
  a.set("w", at::ones({2}));
  auto pool = ft::MemoryModelPool::from_state_dicts(std::nullopt, {{"a", a}});
  EXPECT_FALSE(pool->has_pretrained());
  EXPECT_EQ(pool->load("a")->architecture(), "checkpoint");
  EXPECT_NE(error_of([&] { ft::MemoryModelPool(nullptr, {{"a", pool->load("a")}, {"a", pool->load("a")}}); })
                .find("'a' is given twice"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// SyntheticTask, MemoryTaskPool

TEST(SyntheticTask, IsDeterministicFromItsSeed) {
  ft::SyntheticTask a("a", task_options(7)), b("b", task_options(7)), c("c", task_options(8));
  EXPECT_TRUE(a.test_split().inputs.equal(b.test_split().inputs));
  EXPECT_TRUE(a.train_split().labels.equal(b.train_split().labels));
  EXPECT_FALSE(a.test_split().inputs.equal(c.test_split().inputs));
  auto s1 = a.train_stream(10, 3), s2 = b.train_stream(10, 3), s3 = a.train_stream(10, 4);
  for (int i = 0; i < 12; ++i) {  // across epochs (96 examples)
    fusion::Batch x = s1->next(), y = s2->next(), z = s3->next();
    EXPECT_TRUE(x.inputs.equal(y.inputs));
    EXPECT_EQ(x.inputs.size(0), 10);
    if (i == 0) EXPECT_FALSE(x.inputs.equal(z.inputs));
  }
  EXPECT_EQ(a.batches_served(), 24);
}

TEST(SyntheticTask, EvaluatesLikeFusionBench) {
  auto s = ft::make_tiny_setup({});
  auto& task = s.tasks->task("task0");
  nlohmann::json r = task.evaluate(*s.pretrained);
  ASSERT_TRUE(r.contains("accuracy") && r.contains("loss"));
  EXPECT_GE(r["accuracy"].get<double>(), 0.0);
  EXPECT_LE(r["accuracy"].get<double>(), 1.0);
  EXPECT_GT(r["loss"].get<double>(), 0.0);
  // The fine-tuned expert is better at its task than the pretrained model.
  nlohmann::json e = task.evaluate(*s.experts[0].second);
  EXPECT_LT(e["loss"].get<double>(), r["loss"].get<double>());
  nlohmann::json all = s.tasks->evaluate(*s.pretrained);
  EXPECT_TRUE(all.contains("task1") && all.contains("average") && all.contains("model_info"));
  EXPECT_EQ(task.logits(*s.pretrained, s.pretrained->parameters(), at::randn({5, 3})).sizes(),
            (std::vector<int64_t>{5, 3}));
}

TEST(SyntheticTask, ServesTestBatchesWithoutLabels) {
  ft::SyntheticTask a("a", task_options(7, 0));
  auto s1 = a.test_stream(16, 5), s2 = a.test_stream(16, 5);
  at::Tensor seen = at::zeros({64});
  for (int i = 0; i < 4; ++i) {  // one epoch: a permutation of the 64 test inputs
    fusion::Batch b = s1->next();
    EXPECT_FALSE(b.labels.defined());
    EXPECT_TRUE(b.inputs.equal(s2->next().inputs));
    for (int64_t r = 0; r < 16; ++r) {
      at::Tensor match = (a.test_split().inputs == b.inputs[r]).all(1);
      seen += match.to(at::kFloat);
    }
  }
  EXPECT_TRUE(seen.eq(1).all().item<bool>());
  EXPECT_EQ(a.test_batches_served(), 8);
  EXPECT_EQ(a.batches_served(), 0);
}

TEST(SyntheticTask, WithoutATrainSplitAndWithNanInputs) {
  ft::SyntheticTask none("n", task_options(0, 0));
  EXPECT_FALSE(none.has_train_split());
  EXPECT_EQ(error_of([&] { none.train_stream(4, 0); }), "task 'n' has no train split");
  ft::SyntheticTask with("w", {});
  EXPECT_TRUE(none.test_split().inputs.equal(with.test_split().inputs));  // same test data
  with.set_nan_after(1);
  auto s = with.train_stream(4, 0);
  EXPECT_TRUE(s->next().inputs.isfinite().all().item<bool>());
  EXPECT_TRUE(s->next().inputs.isnan().all().item<bool>());
}

TEST(MemoryTaskPool, NamesItsTasks) {
  ft::MemoryTaskPool pool;
  pool.add_synthetic("a");
  pool.add_synthetic("b", task_options(0, 96, 4));
  EXPECT_EQ(pool.task_names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(pool.task("b").num_classes(), 4);
  EXPECT_EQ(error_of([&] { pool.task("c"); }), "unknown task 'c' (tasks: a, b)");
  EXPECT_NE(error_of([&] { pool.add_synthetic("a"); }).find("given twice"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Setups and helpers

TEST(TinySetup, IsDeterministicAndBuildsWhatItIsAsked) {
  auto a = ft::make_tiny_setup({}), b = ft::make_tiny_setup({});
  EXPECT_EQ(ft::state_dict_difference(a.experts[1].second->parameters(), b.experts[1].second->parameters(), 0, 0), "");
  EXPECT_NE(ft::state_dict_difference(a.experts[0].second->parameters(), a.pretrained->parameters()), "");
  auto same = ft::make_tiny_setup(setup_options(2, ft::ExpertKind::Identical));
  EXPECT_EQ(ft::state_dict_difference(same.experts[1].second->parameters(), same.pretrained->parameters(), 0, 0), "");
  auto named_options = setup_options(3);
  named_options.names = {"x", "y", "z"};
  named_options.train_splits = false;
  auto named = ft::make_tiny_setup(named_options);
  EXPECT_EQ(named.models->expert_names(), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_FALSE(named.tasks->task("z").has_train_split());
  auto perturbed_options = setup_options(2, ft::ExpertKind::Perturbed);
  perturbed_options.perturbation = 0.01;
  auto perturbed = ft::make_tiny_setup(perturbed_options);
  EXPECT_NE(ft::state_dict_difference(perturbed.experts[0].second->parameters(), perturbed.pretrained->parameters()), "");
  EXPECT_EQ(ft::state_dict_difference(perturbed.experts[0].second->parameters(), perturbed.pretrained->parameters(), 0, 0.05), "");
}

TEST(Helpers, FineTuneLowersTheLoss) {
  auto m = ft::TinyModel::random({}, 1);
  ft::SyntheticTask task("t", task_options(3));
  auto b = task.train_split();
  StateDict tuned = ft::fine_tune(*m, m->parameters(), task, b, 20, 0.2);
  EXPECT_LT(task.loss(*m, tuned, b).item<double>(), task.loss(*m, m->parameters(), b).item<double>());
  EXPECT_TRUE(tuned.at("model.embeddings.position_ids").equal(m->parameters().at("model.embeddings.position_ids")));
  EXPECT_FALSE(tuned.at("model.embeddings.weight").requires_grad());
}

TEST(Helpers, StateDictDifferenceNamesTheFirstDifference) {
  StateDict a, b;
  a.set("w", at::tensor({1.0f, 2.0f}));
  a.set("i", at::tensor({1, 2}, at::kLong));
  b.set("w", at::tensor({1.0f, 2.5f}));
  b.set("i", at::tensor({1, 2}, at::kLong));
  EXPECT_EQ(ft::state_dict_difference(a, a), "");
  EXPECT_EQ(ft::state_dict_difference(a, b), "key 'w': max abs difference 0.5 at rtol 1e-05, atol 1e-06");
  EXPECT_EQ(ft::state_dict_difference(a, b, 0, 0.6), "");
  b.set("i", at::tensor({1, 3}, at::kLong));
  EXPECT_EQ(ft::state_dict_difference(b, b), "");
  EXPECT_EQ(ft::state_dict_difference(a, b, 0, 1), "key 'i': integer values differ");
  b.erase("i");
  EXPECT_EQ(ft::state_dict_difference(a, b, 0, 1), "key 'i' is not expected");
  EXPECT_EQ(ft::state_dict_difference(b, a, 0, 1), "key 'i': missing");
  StateDict n;
  n.set("w", at::tensor({NAN, 1.0f}));
  EXPECT_EQ(ft::state_dict_difference(n, n, 0, 0), "");
  EXPECT_EQ(ft::non_finite(n), "key 'w' has 1 non-finite value of 2");
  EXPECT_EQ(ft::non_finite(a), "");
}

TEST(Helpers, AssignmentsAndContexts) {
  auto v = ft::parse_assignments({"weights=[0.5, 0.5]", "method.task=task0", "lr=1e-3", "on=true"});
  EXPECT_EQ(std::get<std::vector<double>>(v.at("weights")), (std::vector<double>{0.5, 0.5}));
  EXPECT_EQ(std::get<std::string>(v.at("task")), "task0");
  EXPECT_DOUBLE_EQ(std::get<double>(v.at("lr")), 1e-3);
  EXPECT_TRUE(std::get<bool>(v.at("on")));
  EXPECT_NE(error_of([] { ft::parse_assignments({"noequals"}); }).find("expected key=value"), std::string::npos);
  fusion::Schema schema;
  schema.add("lr", 0.1, "step size").range(0.0, 1.0);
  ft::ContextOptions co;
  co.seed = 9;
  fusion::Context ctx = ft::test_context(schema, {{"lr", 0.5}}, co);
  EXPECT_EQ(ctx.seed(), 9u);
  EXPECT_DOUBLE_EQ(ctx.config().get<double>("lr"), 0.5);
  EXPECT_NE(error_of([&] { ft::test_context(schema, {{"lr", 2.0}}); }).find("method.lr"), std::string::npos);
}

TEST(Helpers, ScratchDirIsRemoved) {
  std::filesystem::path p;
  {
    ft::ScratchDir d("fusion_kit_scratch");
    p = d.path();
    EXPECT_TRUE(std::filesystem::is_directory(p));
  }
  EXPECT_FALSE(std::filesystem::exists(p));
}

}  // namespace
