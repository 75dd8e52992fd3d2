// End-to-end PWEMoE on Gaussian-blob tasks: training lowers the loss, resume equals an
// uninterrupted run, the seed fixes the routers, checkpoint_path evaluates without training, the
// Result, exports, and bad input.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "fusion/component.hpp"
#include "fusion/config.hpp"
#include "fusion/options.hpp"
#include "fusion/safetensors.hpp"
#include "pwe_moe.hpp"
#include "tiny_model.hpp"
#include "training_support.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fusion::methods;

using pwe_test::context;
using pwe_test::fresh_dir;
using pwe_test::max_diff;
using pwe_test::routers_of;
using pwe_test::small_options;

// Mean Σ rₜ Lₜ on each task's whole train split over a few fixed preference vectors.
double scalarised_loss(ParetoWeightEnsembling& pwe, pwe_test::BlobTaskPool& tasks) {
  c10::NoGradGuard ng;
  double total = 0;
  const std::vector<std::vector<double>> prefs = {{0.5, 0.5}, {0.9, 0.1}, {0.1, 0.9}};
  for (const auto& r : prefs) {
    fusion::ModelPtr m = pwe.merge_and_unload(r);
    for (size_t t = 0; t < r.size(); ++t)
      total += r[t] * tasks.tasks[t]->loss(*m, m->parameters(), tasks.tasks[t]->train_batch()).item<double>();
  }
  return total / prefs.size();
}

TEST(PweTraining, LsLowersTheScalarisedLossAndWritesLogAndCheckpoints) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("ls");
  auto ctx = context(dir);
  PweMoeLs ls(small_options(60, 30));
  auto pwe = ParetoWeightEnsembling::from_pool(*s.pool, ctx, ls.options().model, "pwe_moe_ls");
  EXPECT_EQ(s.pool->loads, 2);  // each expert loaded once
  const double before = scalarised_loss(*pwe, *s.tasks);
  std::vector<fusion::Task*> tasks{s.tasks->tasks[0].get(), s.tasks->tasks[1].get()};
  const auto info = ls.train(*pwe, tasks, ctx);
  const double after = scalarised_loss(*pwe, *s.tasks);
  EXPECT_LT(after, before * 0.95) << "before " << before << " after " << after;
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "routers_step=30.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "routers_step=60.safetensors"));
  std::ifstream log(dir / "train_log.csv");
  std::string header, line;
  std::getline(log, header);
  EXPECT_EQ(header.rfind("step,loss,lr,mode,lp_failed,r_task0,r_task1,loss_task0", 0), 0u) << header;
  int rows = 0;
  while (std::getline(log, line)) ++rows;
  EXPECT_EQ(rows, 60);
  EXPECT_EQ(info.at("modes").at("ls").get<int>(), 60);
}

TEST(PweTraining, ResumeEqualsUninterruptedRunAndSeedFixesRouters) {
  auto s = pwe_test::make_blob_setup(2);
  std::vector<fusion::Task*> tasks{s.tasks->tasks[0].get(), s.tasks->tasks[1].get()};
  auto run_train = [&](const fs::path& dir, PweMoeOptions o, uint64_t seed) {
    auto ctx = context(dir, seed);
    PweMoeEpo algo(o);  // EPO: the longer path (per-task gradients, LP)
    auto pwe = ParetoWeightEnsembling::from_pool(*s.pool, ctx, o.model, "pwe_moe_epo");
    algo.train(*pwe, tasks, ctx);
    return pwe->router_state().detach().clone();
  };
  const fs::path a = fresh_dir("a"), b = fresh_dir("b"), c = fresh_dir("c");
  const auto full = run_train(a, small_options(40, 20), 42);
  // b: the same run, "interrupted" after step 20: its later checkpoint and log rows are dropped.
  run_train(b, small_options(40, 20), 42);
  fs::remove(b / "checkpoints" / "routers_step=40.safetensors");
  auto o = small_options(40, 20);
  o.resume = true;
  const auto resumed = run_train(b, o, 42);
  EXPECT_LE(max_diff(full, resumed), 1e-6);
  EXPECT_GT(max_diff(full, routers_of(b / "checkpoints" / "routers_step=20.safetensors")), 1e-4);
  std::ifstream log(b / "train_log.csv");
  std::string line;
  int rows = -1;
  while (std::getline(log, line)) ++rows;
  EXPECT_EQ(rows, 40);
  // same seed → same routers; another seed → others
  EXPECT_EQ(max_diff(full, run_train(c, small_options(40, 20), 42)), 0.0);
  EXPECT_GT(max_diff(full, run_train(fresh_dir("d"), small_options(40, 20), 7)), 1e-4);
}

TEST(PweTraining, RunReturnsTheParetoSetAndCheckpointPathSkipsTraining) {
  auto s = pwe_test::make_blob_setup(2);
  const fs::path dir = fresh_dir("run");
  auto o = small_options(20, 10);
  o.eval_random = 3;
  o.export_preferences = {{1.0, 3.0}};
  PweMoeLs ls(o);
  const fusion::Result res = ls.run(*s.pool, s.tasks.get(), context(dir));
  ASSERT_EQ(res.models.size(), 11u + 3u);
  EXPECT_FALSE(res.sweep);  // random preferences follow the grid: not one curve
  EXPECT_EQ(res.models.front().label, "r=[0.00,1.00]");
  EXPECT_EQ(res.models[5].label, "r=[0.50,0.50]");
  EXPECT_EQ(res.models[5].metadata.at("preference").get<std::vector<double>>(), (std::vector<double>{0.5, 0.5}));
  EXPECT_EQ(res.models.back().metadata.at("source"), "random");
  EXPECT_EQ(res.info.at("trainable_params").get<int64_t>(), 2 * (4 * 4 + 3 * 2));
  EXPECT_EQ(s.pool->saves, 1);
  EXPECT_TRUE(fs::exists(dir / "exports" / "r_0.2500_0.7500_" / "model.safetensors"));
  // a lazily made model is a plain model of the pool's architecture that evaluates
  fusion::ConstModelPtr m = res.models[5].make();
  EXPECT_EQ(m->architecture(), "tiny_mlp_transformer");
  EXPECT_FALSE(m->parameters().at("blocks.0.mlp.fc1.weight").requires_grad());
  const auto rep = s.tasks->task("task0").evaluate(*m);
  EXPECT_GE(rep.at("accuracy").get<double>(), 0.0);

  // checkpoint_path: evaluate the trained routers without training (and without the train splits,
  // so run() itself needs no task pool; the host requires one for the evaluation)
  auto o2 = small_options(20, 10);
  o2.checkpoint_path = (dir / "checkpoints" / "routers_step=20.safetensors").string();
  PweMoeLs again(o2);
  const fs::path eval_dir = fresh_dir("eval");
  const fusion::Result res2 = again.run(*s.pool, nullptr, context(eval_dir));
  ASSERT_EQ(res2.models.size(), 11u);
  EXPECT_TRUE(res2.sweep);  // two tasks, grid only: r = (1 − t, t) in order
  fusion::ConstModelPtr m2 = res2.models[5].make();
  for (const auto& [k, v] : m->parameters())
    if (v.is_floating_point()) EXPECT_TRUE(at::allclose(v, m2->parameters().at(k), 0, 1e-7)) << k;
  EXPECT_FALSE(fs::exists(eval_dir / "train_log.csv"));
  EXPECT_FALSE(fs::exists(eval_dir / "checkpoints"));
}

TEST(PweTraining, ManyTasksEvaluateEqualWeightAndOneHotPoints) {
  PweMoeLs ls;
  const auto p = ls.evaluation_preferences(8, 1);
  ASSERT_EQ(p.size(), 9u);
  EXPECT_EQ(p[0], std::vector<double>(8, 0.125));
  EXPECT_EQ(p[3][2], 1.0);
  EXPECT_EQ(ls.evaluation_preferences(3, 1).size(), 66u);
}

TEST(PweTraining, NanLossStopsNamingTheStepAndKeepsTheLastCheckpoint) {
  auto s = pwe_test::make_blob_setup(2);
  s.tasks->tasks[1]->nan_after = 14;  // the 15th batch of a stream is NaN (step 15)
  const fs::path dir = fresh_dir("nan");
  PweMoeLs ls(small_options(40, 10));
  try {
    ls.run(*s.pool, s.tasks.get(), context(dir));
    FAIL() << "expected an error";
  } catch (const fusion::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("task 'task1'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("step 15"), std::string::npos) << msg;
    EXPECT_NE(msg.find("routers_step=10.safetensors"), std::string::npos) << msg;
  }
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "routers_step=10.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "routers_step=20.safetensors"));
}

TEST(PweBadInput, PreferenceVectors) {
  auto s = pwe_test::make_blob_setup(2);
  auto ctx = context(fresh_dir("pref"));
  auto pwe = ParetoWeightEnsembling::from_pool(*s.pool, ctx, {}, "pwe_moe_ls");
  auto expect_error = [&](std::vector<double> r, const std::string& needle) {
    try {
      pwe->merge_and_unload(r);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const fusion::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({0.2, 0.3, 0.5}, "3 entries, expected one per task (T = 2)");
  expect_error({-0.1, 1.1}, "negative");
  expect_error({NAN, 1.0}, "not finite");
  expect_error({0.0, 0.0}, "all zero");
  EXPECT_EQ(pwe->checked_preference({2.0, 6.0}, "x"), (std::vector<double>{0.25, 0.75}));
  // export entries are checked before training
  auto o = small_options();
  o.export_preferences = {{0.5, 0.5, 0.0}};
  PweMoeLs ls(o);
  try {
    ls.run(*s.pool, s.tasks.get(), ctx);
    ADD_FAILURE();
  } catch (const fusion::Error& e) {
    EXPECT_NE(std::string(e.what()).find("method.export[0]"), std::string::npos) << e.what();
  }
}

TEST(PweBadInput, PoolsAndTasks) {
  auto s = pwe_test::make_blob_setup(2);
  auto ctx = context(fresh_dir("bad"));
  auto msg_of = [](auto&& fn) {
    try {
      fn();
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  // The requirements, checked by the host before any weight is read (one format for every component)
  pwe_test::MemoryPool one(s.pretrained, {{"task0", s.pool->load("task0")}});
  EXPECT_EQ(msg_of([&] { fusion::check_requirements(PweMoeLs::info(), one, s.tasks.get()); }),
            "pwe_moe_ls needs at least 2 experts, the model pool has 1: add them under [modelpool.models]");
  // Training needs the task pool; evaluating trained routers (checkpoint_path) does not, so run() checks it.
  EXPECT_EQ(msg_of([&] { fusion::check_requirements(PweMoeEpo::info(), *s.pool, nullptr); }), "<no error>");
  EXPECT_EQ(msg_of([&] { PweMoeEpo().run(*s.pool, nullptr, ctx); }),
            "pwe_moe_epo trains its routers on the tasks' train splits: add a [taskpool], or set "
            "method.checkpoint_path to evaluate trained routers");
  pwe_test::MemoryPool no_pretrained(nullptr, {{"task0", s.pool->load("task0")}, {"task1", s.pool->load("task1")}});
  EXPECT_EQ(msg_of([&] { fusion::check_requirements(PweMoeLs::info(), no_pretrained, s.tasks.get()); }),
            "pwe_moe_ls needs a pretrained model: set modelpool.pretrained");
  EXPECT_EQ(msg_of([&] { fusion::check_requirements(PweMoeLs::info(), *s.pool, s.tasks.get()); }), "<no error>");
  // an expert whose shapes differ
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  fusion::StateDict odd = s.pretrained->parameters().clone();
  odd.set("blocks.1.mlp.fc1.weight", at::zeros({7, 4}));
  pwe_test::MemoryPool bad(s.pretrained, {{"task0", s.pool->load("task0")},
                                         {"task1", std::make_shared<pwe_test::TinyModel>(odd)}});
  const std::string m1 = msg_of([&] { ParetoWeightEnsembling::from_pool(bad, ctx, {}, "pwe_moe_ls"); });
  EXPECT_NE(m1.find("blocks.1.mlp.fc1.weight"), std::string::npos) << m1;
  // an expert with a missing key
  fusion::StateDict missing = s.pretrained->parameters().clone();
  missing.erase("norm.bias");
  pwe_test::MemoryPool bad2(s.pretrained, {{"task0", s.pool->load("task0")},
                                          {"task1", std::make_shared<fusion::Model>("tiny", missing)}});
  const std::string m2 = msg_of([&] { ParetoWeightEnsembling::from_pool(bad2, ctx, {}, "pwe_moe_ls"); });
  EXPECT_NE(m2.find("norm.bias"), std::string::npos) << m2;
  // a task without a train split: refused when training (checkpoint_path empty), which needs it
  s.tasks->tasks[1] = std::make_unique<pwe_test::BlobTask>("task1", 3, 9, /*has_train=*/false);
  const std::string m3 = msg_of([&] { PweMoeLs(small_options()).run(*s.pool, s.tasks.get(), ctx); });
  EXPECT_EQ(m3, "pwe_moe_ls: task 'task1' has no train split, which training needs");
  // an expert without a task of its name
  pwe_test::BlobTaskPool other;
  other.tasks.push_back(std::make_unique<pwe_test::BlobTask>("task0", 3, 8));
  other.tasks.push_back(std::make_unique<pwe_test::BlobTask>("other", 3, 9));
  EXPECT_EQ(msg_of([&] { PweMoeLs(small_options()).run(*s.pool, &other, ctx); }),
            "pwe_moe_ls: expert 'task1' has no task of the same name in the task pool (tasks: task0, other)");
  // patterns that match nothing; a pattern without ".*"; a router depth out of range
  ParetoWeightEnsemblingOptions o;
  o.upscale = {"*.ffn.*"};
  EXPECT_NE(msg_of([&] { ParetoWeightEnsembling::from_pool(*s.pool, ctx, o, "pwe_moe_ls"); }).find("match no parameter"),
            std::string::npos);
  o.upscale = {"*.mlp"};
  EXPECT_NE(msg_of([&] { ParetoWeightEnsembling::from_pool(*s.pool, ctx, o, "pwe_moe_ls"); }).find("must end with"),
            std::string::npos);
  o.upscale = {"*.mlp.*"};
  o.router_hidden_layers = 3;
  EXPECT_EQ(msg_of([&] { ParetoWeightEnsembling::from_pool(*s.pool, ctx, o, "pwe_moe_ls"); }),
            "method.router_hidden_layers = 3: must be 1 or 2");
  // options that contradict each other
  PweMoeOptions po;
  po.resume = true;
  po.checkpoint_path = "routers.safetensors";
  EXPECT_EQ(msg_of([&] { PweMoeEpo{po}; }),
            "method.resume and method.checkpoint_path are both set: resume continues training, checkpoint_path "
            "evaluates without training");
  // a checkpoint for another number of tasks
  EXPECT_NE(msg_of([&] {
              PweMoeOptions p2;
              p2.checkpoint_path = "/nonexistent/routers.safetensors";
              PweMoeLs(p2).run(*s.pool, nullptr, ctx);
            }).find("not found"),
            std::string::npos);
}

TEST(PweConfig, SchemaDefaultsAndOverrides) {
  const auto info = PweMoeLs::info();
  EXPECT_EQ(info.name, "pwe_moe_ls");
  EXPECT_EQ(PweMoeEpo::info().name, "pwe_moe_epo");
  EXPECT_EQ(info.requirements.describe(), "a pretrained model, at least 2 experts");
  EXPECT_EQ(PweMoeEpo::info().requirements.describe(), info.requirements.describe());
  const fusion::Schema& schema = fusion::schema_of<PweMoeOptions>();
  // the options in the order `fusion describe` shows them (as before SDK 1.0)
  std::vector<std::string> names;
  for (const auto& spec : schema.options()) names.push_back(spec.name);
  EXPECT_EQ(names, (std::vector<std::string>{"init_lambda", "router_hidden_layers", "upscale", "upscale_attn", "lr",
                                             "num_steps", "save_interval", "batch_size", "alpha", "eval_grid",
                                             "eval_grid_m", "eval_random", "eval_preferences", "export", "resume",
                                             "checkpoint_path", "epo_eps"}));
  const fusion::Config c = fusion::Config::validate("method", {{"lr", 0.05}, {"upscale_attn", true}}, schema);
  const PweMoeOptions o = fusion::read_options<PweMoeOptions>(c);
  EXPECT_DOUBLE_EQ(o.lr, 0.05);
  EXPECT_TRUE(o.model.upscale_attn);
  EXPECT_DOUBLE_EQ(o.model.init_lambda, 0.3);
  EXPECT_EQ(o.num_steps, 2000);
  EXPECT_EQ(o.save_interval, 1000);
  EXPECT_EQ(o.batch_size, 16);
  EXPECT_EQ(o.model.router_hidden_layers, 2);
  EXPECT_EQ(o.model.upscale, std::vector<std::string>{"*.mlp.*"});
  EXPECT_TRUE(o.export_preferences.empty());
  EXPECT_TRUE(o.eval_preferences.empty());
  EXPECT_EQ(o.checkpoint_path, "");
  EXPECT_THROW(fusion::Config::validate("method", {{"lr_typo", 0.1}}, schema), fusion::Error);
  // the binding's checks, each naming section.key
  auto refused = [&](const std::string& key, fusion::Value v) {
    try {
      fusion::Config::validate("method", {{key, v}}, schema);
    } catch (const fusion::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  EXPECT_EQ(refused("upscale", std::vector<std::string>{"*.mlp.*", "*.mlp"}),
            "method.upscale: pattern '*.mlp' must end with \".*\" (it names a module, e.g. \"*.mlp.*\")");
  EXPECT_NE(refused("router_hidden_layers", int64_t{3}).find("method.router_hidden_layers"), std::string::npos);
  EXPECT_NE(refused("init_lambda", std::numeric_limits<double>::infinity()).find("method.init_lambda"),
            std::string::npos);
  EXPECT_NE(refused("save_interval", int64_t{0}).find("method.save_interval"), std::string::npos);
  const PweMoeOptions nested = fusion::read_options<PweMoeOptions>(
      fusion::Config::validate("method", {{"router_hidden_layers", int64_t{1}}, {"init_lambda", 0.5}}, schema));
  EXPECT_EQ(nested.model.router_hidden_layers, 1);
  EXPECT_DOUBLE_EQ(nested.model.init_lambda, 0.5);
}

}  // namespace
