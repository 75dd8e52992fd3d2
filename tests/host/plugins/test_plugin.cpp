// Tiny plugins for the host's loader and end-to-end tests; one source, one variant per
// FUSION_TEST_VARIANT_* definition.
#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "fusion/algorithm.hpp"
#include "fusion/plugin.hpp"

namespace {

using fusion::ComponentInfo;
using fusion::ConstModelPtr;
using fusion::Context;
using fusion::ModelPtr;
using fusion::Options;
using fusion::StateDict;

ModelPtr make_model(const std::vector<double>& w, const Context& ctx) {
  StateDict sd;
  sd.set("w", at::tensor(w, at::kDouble).to(ctx.device(), ctx.dtype()));
  return std::make_shared<fusion::Model>("test", std::move(sd));
}

struct TestPoolOptions {
  std::vector<double> pretrained;
  std::vector<std::vector<double>> experts;
  std::vector<std::string> names;
  static void bind(Options<TestPoolOptions>& o) {
    o("pretrained", &TestPoolOptions::pretrained, "the pretrained vector").required();
    o("experts", &TestPoolOptions::experts, "one vector per expert");
    o("names", &TestPoolOptions::names, "the experts' names");
  }
};

/// A model pool holding vectors: `pretrained` and `experts` (one row per expert, named `names`).
class TestPool : public fusion::ModelPool {
 public:
  using Options = TestPoolOptions;
  TestPool(Options options, const Context& ctx) : options_(std::move(options)), ctx_(ctx) {
    FUSION_ENSURE(options_.names.size() == options_.experts.size(),
                  "modelpool." + fusion::option_name(&Options::names), ": ", options_.names.size(),
                  " names for ", options_.experts.size(), " experts");
  }
  static ComponentInfo info() { return {"test_pool", "vectors as models (host tests)", "", {}, {}}; }
  std::vector<std::string> expert_names() const override { return options_.names; }
  bool has_pretrained() const override { return true; }
  ConstModelPtr pretrained() override { return make_model(options_.pretrained, ctx_); }
  ModelPtr load(const std::string& name) override {
    for (size_t i = 0; i < options_.names.size(); ++i)
      if (options_.names[i] == name) return make_model(options_.experts[i], ctx_);
    FUSION_FAIL("test_pool: no expert '", name, "'");
  }
  void save(const fusion::Model& model, const std::filesystem::path& dir) const override {
    std::filesystem::create_directories(dir);
    at::Tensor w = model.parameters().at("w").to(at::kCPU, at::kDouble).contiguous();
    std::ofstream out(dir / "weights.txt");
    for (int64_t i = 0; i < w.numel(); ++i) out << w.data_ptr<double>()[i] << '\n';
  }

 private:
  Options options_;
  Context ctx_;
};

/// Task i scores a model by its i-th weight: accuracy = clamp(w[i], 0, 1), loss = 1 − accuracy.
class TestTask : public fusion::Task {
 public:
  TestTask(std::string name, int64_t index) : name_(std::move(name)), index_(index) {}
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return 2; }
  bool has_train_split() const override { return false; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t, uint64_t) override {
    FUSION_FAIL("test task has no train split");
  }
  at::Tensor logits(const fusion::Model&, const StateDict&, const at::Tensor&) const override {
    FUSION_FAIL("test task has no logits");
  }
  nlohmann::json evaluate(const fusion::Model& model) override {
    at::Tensor w = model.parameters().at("w").to(at::kCPU, at::kDouble);
    double acc = std::min(1.0, std::max(0.0, w[index_].item<double>()));
    return {{"accuracy", acc}, {"loss", 1.0 - acc}};
  }

 private:
  std::string name_;
  int64_t index_;
};

struct TestTasksOptions {
  std::vector<std::string> tasks{"a", "b"};
  static void bind(Options<TestTasksOptions>& o) {
    o("tasks", &TestTasksOptions::tasks, "task i scores weight i");
  }
};

class TestTasks : public fusion::TaskPool {
 public:
  using Options = TestTasksOptions;
  explicit TestTasks(const Options& options) {
    for (size_t i = 0; i < options.tasks.size(); ++i)
      tasks_.push_back(std::make_unique<TestTask>(options.tasks[i], static_cast<int64_t>(i)));
  }
  static ComponentInfo info() {
    return {"test_tasks", "tasks scoring a vector's entries (host tests)", "", {}, {}};
  }
  std::vector<std::string> task_names() const override {
    std::vector<std::string> out;
    for (const auto& t : tasks_) out.push_back(t->name());
    return out;
  }
  fusion::Task& task(const std::string& name) override {
    for (auto& t : tasks_)
      if (t->name() == name) return *t;
    FUSION_FAIL("test_tasks: no task '", name, "'");
  }

 private:
  std::vector<std::unique_ptr<TestTask>> tasks_;
};

struct TestPretrainedOptions {
  std::string label = "pretrained";
  static void bind(Options<TestPretrainedOptions>& o) {
    o("label", &TestPretrainedOptions::label, "the result's label");
  }
};

/// Returns the pretrained model unchanged.
class TestPretrained : public fusion::Algorithm {
 public:
  using Options = TestPretrainedOptions;
  explicit TestPretrained(Options options) : options_(std::move(options)) {}
  static ComponentInfo info() {
    return {"test_pretrained", "the pretrained model (host tests)", "https://example.org/test", {},
            fusion::Requirements().pretrained()};
  }
  fusion::Result run(fusion::ModelPool& pool, fusion::TaskPool*, const Context&) override {
    fusion::Result r;
    r.add(options_.label, pool.pretrained(), {{"method", "pretrained"}});
    return r;
  }

 private:
  Options options_;
};

struct TestSweepOptions {
  std::vector<double> lambdas{0.0, 0.5, 1.0};
  int64_t fail_at = -1;
  std::string mode = "sum";
  static void bind(Options<TestSweepOptions>& o) {
    o("lambdas", &TestSweepOptions::lambdas, "scaling factors").range(0.0, 1.0);
    o("fail_at", &TestSweepOptions::fail_at, "make() of this model index throws (-1: none)").min(-1);
    o("mode", &TestSweepOptions::mode, "how task vectors combine").one_of({"sum", "mean"});
  }
};

/// θ₀ + λ Σₜ (θₜ − θ₀) for each λ of `lambdas`, made lazily.
class TestSweep : public fusion::Algorithm {
 public:
  using Options = TestSweepOptions;
  explicit TestSweep(Options options) : options_(std::move(options)) {}
  static ComponentInfo info() {
    return {"test_sweep", "a sweep over task arithmetic's λ (host tests)", "", {},
            fusion::Requirements().pretrained().experts(1)};
  }
  fusion::Result run(fusion::ModelPool& pool, fusion::TaskPool*, const Context&) override {
    fusion::Result r;
    ConstModelPtr base = pool.pretrained();
    at::Tensor theta0 = base->parameters().at("w");
    at::Tensor tv = at::zeros_like(theta0);
    for (const auto& n : pool.expert_names()) tv = tv + (pool.load(n)->parameters().at("w") - theta0);
    for (size_t i = 0; i < options_.lambdas.size(); ++i) {
      double lambda = options_.lambdas[i];
      bool fail = static_cast<int64_t>(i) == options_.fail_at;
      r.add_lazy("lambda=" + std::to_string(lambda).substr(0, 4),
                 [=]() -> ConstModelPtr {
                   FUSION_ENSURE(!fail, "test_sweep: failing on purpose at model ", i);
                   StateDict sd;
                   sd.set("w", theta0 + lambda * tv);
                   return base->with_parameters(std::move(sd));
                 },
                 {{"scaling_factor", lambda}, {"index", i}});
    }
    r.info["trainable_params"] = 0;
    r.sweep = true;
    return r;
  }

 private:
  Options options_;
};

/// The plugin that clashes: a name of its own, then test_pretrained's.
struct TestOnlyInDuplicate : TestPretrained {
  using TestPretrained::TestPretrained;
  static ComponentInfo info() {
    ComponentInfo i = TestPretrained::info();
    i.name = "test_only_in_duplicate";
    return i;
  }
};

}  // namespace

#if defined(FUSION_TEST_VARIANT_GOOD)
FUSION_PLUGIN("host_test_good", "1.2.3", reg) {
  reg.add<TestPretrained>();
  reg.add<TestSweep>();
  reg.add<TestPool>();
  reg.add<TestTasks>();
}
#elif defined(FUSION_TEST_VARIANT_DUPLICATE)
// Registers a fresh name, then one the good plugin has: the whole plugin must be refused.
FUSION_PLUGIN("host_test_duplicate", "0.0.1", reg) {
  reg.add<TestOnlyInDuplicate>();
  reg.add<TestPretrained>();
}
#elif defined(FUSION_TEST_VARIANT_INIT_THROWS)
FUSION_PLUGIN("host_test_init_throws", "0.0.1", reg) {
  (void)reg;
  FUSION_FAIL("init failed on purpose");
}
#elif defined(FUSION_TEST_VARIANT_WRONG_ABI) || defined(FUSION_TEST_VARIANT_WRONG_TORCH) || \
    defined(FUSION_TEST_VARIANT_NEWER_API) || defined(FUSION_TEST_VARIANT_OTHER_MAJOR) ||    \
    defined(FUSION_TEST_VARIANT_CXX11_ABI)
// A hand-written entry whose handshake differs from the host's.
extern "C" FUSION_PLUGIN_EXPORT int fusion_plugin_init(fusion_handshake* hs, void* registrar,
                                                       char* error, size_t error_size) noexcept {
  fusion::detail::fill_handshake(hs, "host_test_wrong", "0.0.1");
#if defined(FUSION_TEST_VARIANT_WRONG_ABI)
  hs->abi_version = 999;
#elif defined(FUSION_TEST_VARIANT_NEWER_API)
  hs->api_level = FUSION_API_LEVEL + 1;
#elif defined(FUSION_TEST_VARIANT_OTHER_MAJOR)
  hs->sdk_major = FUSION_VERSION_MAJOR + 1;
#elif defined(FUSION_TEST_VARIANT_CXX11_ABI)
  hs->cxx11_abi = _GLIBCXX_USE_CXX11_ABI ? 0 : 1;
#else
  std::snprintf(hs->torch_version, sizeof(hs->torch_version), "%s", "0.0.1");
#endif
  if (registrar != nullptr) std::abort();  // a refused plugin must never be asked to register
  (void)error;
  (void)error_size;
  return 0;
}
#elif defined(FUSION_TEST_VARIANT_NO_ENTRY)
// A shared library without fusion_plugin_init.
extern "C" FUSION_PLUGIN_EXPORT int fusion_host_test_something() { return 42; }
#else
#error "define one FUSION_TEST_VARIANT_*"
#endif
