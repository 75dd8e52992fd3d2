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
using fusion::Config;
using fusion::Context;
using fusion::ModelPtr;
using fusion::Schema;
using fusion::StateDict;
using fusion::ValueType;

ModelPtr make_model(const std::vector<double>& w, const Context& ctx) {
  StateDict sd;
  sd.set("w", at::tensor(w, at::kDouble).to(ctx.device(), ctx.dtype()));
  return std::make_shared<fusion::Model>("test", std::move(sd));
}

/// A model pool holding vectors: `pretrained` and `experts` (one row per expert, named `names`).
class TestPool : public fusion::ModelPool {
 public:
  explicit TestPool(const Context& ctx) : ctx_(ctx) {
    const Config& c = ctx.config();
    pretrained_ = c.get<std::vector<double>>("pretrained");
    experts_ = c.get<std::vector<std::vector<double>>>("experts");
    names_ = c.get<std::vector<std::string>>("names");
    FUSION_ENSURE(names_.size() == experts_.size(), "modelpool.names: ", names_.size(),
                  " names for ", experts_.size(), " experts");
  }
  static ComponentInfo info() {
    Schema s;
    s.add_required("pretrained", ValueType::DoubleList, "the pretrained vector");
    s.add("experts", std::vector<std::vector<double>>{}, "one vector per expert");
    s.add("names", std::vector<std::string>{}, "the experts' names");
    return {"test_pool", "vectors as models (host tests)", "", s};
  }
  std::vector<std::string> expert_names() const override { return names_; }
  bool has_pretrained() const override { return true; }
  ModelPtr pretrained() override { return make_model(pretrained_, ctx_); }
  ModelPtr load(const std::string& name) override {
    for (size_t i = 0; i < names_.size(); ++i)
      if (names_[i] == name) return make_model(experts_[i], ctx_);
    FUSION_FAIL("test_pool: no expert '", name, "'");
  }
  void save(const fusion::Model& model, const std::filesystem::path& dir) const override {
    std::filesystem::create_directories(dir);
    at::Tensor w = model.parameters().at("w").to(at::kCPU, at::kDouble).contiguous();
    std::ofstream out(dir / "weights.txt");
    for (int64_t i = 0; i < w.numel(); ++i) out << w.data_ptr<double>()[i] << '\n';
  }

 private:
  Context ctx_;
  std::vector<double> pretrained_;
  std::vector<std::vector<double>> experts_;
  std::vector<std::string> names_;
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

class TestTasks : public fusion::TaskPool {
 public:
  explicit TestTasks(const Context& ctx) {
    auto names = ctx.config().get<std::vector<std::string>>("tasks");
    for (size_t i = 0; i < names.size(); ++i)
      tasks_.push_back(std::make_unique<TestTask>(names[i], static_cast<int64_t>(i)));
  }
  static ComponentInfo info() {
    Schema s;
    s.add("tasks", std::vector<std::string>{"a", "b"}, "task i scores weight i");
    return {"test_tasks", "tasks scoring a vector's entries (host tests)", "", s};
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

/// Returns the pretrained model unchanged.
class TestPretrained : public fusion::Algorithm {
 public:
  explicit TestPretrained(const Context& ctx) : label_(ctx.config().get<std::string>("label")) {}
  static ComponentInfo info() {
    Schema s;
    s.add("label", std::string("pretrained"), "the result's label");
    return {"test_pretrained", "the pretrained model (host tests)", "https://example.org/test", s};
  }
  fusion::Result run(fusion::ModelPool& pool, fusion::TaskPool*, const Context&) override {
    fusion::Result r;
    r.add(label_, pool.pretrained(), {{"method", "pretrained"}});
    return r;
  }

 private:
  std::string label_;
};

/// θ₀ + λ Σₜ (θₜ − θ₀) for each λ of `lambdas`, made lazily.
class TestSweep : public fusion::Algorithm {
 public:
  explicit TestSweep(const Context& ctx)
      : lambdas_(ctx.config().get<std::vector<double>>("lambdas")),
        fail_at_(ctx.config().get<int64_t>("fail_at")) {}
  static ComponentInfo info() {
    Schema s;
    s.add("lambdas", std::vector<double>{0.0, 0.5, 1.0}, "scaling factors").range(0.0, 1.0);
    s.add("fail_at", int64_t{-1}, "make() of this model index throws (-1: none)")
        .range(-1, std::nullopt);
    s.add("mode", std::string("sum"), "how task vectors combine").one_of({"sum", "mean"});
    return {"test_sweep", "a sweep over task arithmetic's λ (host tests)", "", s};
  }
  fusion::Result run(fusion::ModelPool& pool, fusion::TaskPool*, const Context&) override {
    fusion::Result r;
    ModelPtr base = pool.pretrained();
    at::Tensor theta0 = base->parameters().at("w");
    at::Tensor tv = at::zeros_like(theta0);
    for (const auto& n : pool.expert_names()) tv = tv + (pool.load(n)->parameters().at("w") - theta0);
    for (size_t i = 0; i < lambdas_.size(); ++i) {
      double lambda = lambdas_[i];
      bool fail = static_cast<int64_t>(i) == fail_at_;
      r.add_lazy("lambda=" + std::to_string(lambda).substr(0, 4),
                 [=]() -> ModelPtr {
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
  std::vector<double> lambdas_;
  int64_t fail_at_;
};

template <typename T>
auto factory() {
  return [](const Context& ctx) { return std::make_unique<T>(ctx); };
}

}  // namespace

#if defined(FUSION_TEST_VARIANT_GOOD)
FUSION_PLUGIN("host_test_good", "1.2.3", reg) {
  reg.add_algorithm(TestPretrained::info(), factory<TestPretrained>());
  reg.add_algorithm(TestSweep::info(), factory<TestSweep>());
  reg.add_model_pool(TestPool::info(), factory<TestPool>());
  reg.add_task_pool(TestTasks::info(), factory<TestTasks>());
}
#elif defined(FUSION_TEST_VARIANT_DUPLICATE)
// Registers a fresh name, then one the good plugin has: the whole plugin must be refused.
FUSION_PLUGIN("host_test_duplicate", "0.0.1", reg) {
  ComponentInfo other = TestPretrained::info();
  other.name = "test_only_in_duplicate";
  reg.add_algorithm(other, factory<TestPretrained>());
  reg.add_algorithm(TestPretrained::info(), factory<TestPretrained>());
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
