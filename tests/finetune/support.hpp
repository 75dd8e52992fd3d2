#pragma once
// Fixtures for the finetune tests: an in-memory model pool, a tiny linear "vision tower", and
// synthetic classification tasks (Gaussian blobs as feature vectors, or bright squares as images)
// with frozen random heads.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"

namespace finetune_test {

using fusion::Batch;
using fusion::ConstModelPtr;
using fusion::Model;
using fusion::ModelPtr;
using fusion::StateDict;

/// features = tanh(x · W1ᵀ + b1) · W2ᵀ + b2, plus an integer tensor that must never train.
class TinyTower : public Model {
 public:
  explicit TinyTower(StateDict p) : Model("tiny_tower", std::move(p)) {}
  at::Tensor forward(const StateDict& p, const at::Tensor& x) const override {
    at::Tensor h = at::tanh(at::linear(x, p.at("vision_model.encoder.layers.0.mlp.fc1.weight"),
                                       p.at("vision_model.encoder.layers.0.mlp.fc1.bias")));
    return at::linear(h, p.at("vision_model.post_layernorm.weight"), p.at("vision_model.post_layernorm.bias"));
  }
  std::shared_ptr<Model> with_parameters(StateDict params) const override {
    fusion::check_same_layout(parameters_, params, "model", "new parameters");
    return std::make_shared<TinyTower>(std::move(params));
  }
};

inline ModelPtr make_tower(int64_t din, int64_t hidden, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  StateDict p;
  p.set("vision_model.embeddings.position_ids", at::arange(4, at::kLong));
  p.set("vision_model.encoder.layers.0.mlp.fc1.weight", at::randn({hidden, din}, g) * 0.3);
  p.set("vision_model.encoder.layers.0.mlp.fc1.bias", at::zeros({hidden}));
  p.set("vision_model.post_layernorm.weight", at::randn({hidden, hidden}, g) * 0.3);
  p.set("vision_model.post_layernorm.bias", at::zeros({hidden}));
  return std::make_shared<TinyTower>(std::move(p));
}

class MemoryPool : public fusion::ModelPool {
 public:
  explicit MemoryPool(ModelPtr pretrained) : pretrained_(std::move(pretrained)) {}
  std::vector<std::string> expert_names() const override { return {}; }
  bool has_pretrained() const override { return pretrained_ != nullptr; }
  ConstModelPtr pretrained() override { return pretrained_; }
  ModelPtr load(const std::string& name) override { FUSION_FAIL("no expert ", name); }
  void save(const Model&, const std::filesystem::path&) const override {}

 private:
  ModelPtr pretrained_;
};

/// A fixed labelled data set served in shuffled batches, forever.
class VectorStream : public fusion::BatchStream {
 public:
  VectorStream(at::Tensor x, at::Tensor y, int64_t batch, uint64_t seed)
      : x_(std::move(x)), y_(std::move(y)), batch_(batch), gen_(at::detail::createCPUGenerator(seed)) {}
  Batch next() override {
    at::Tensor idx = at::randint(x_.size(0), {batch_}, gen_, at::kLong);
    return {x_.index_select(0, idx), y_.index_select(0, idx)};
  }

 private:
  at::Tensor x_, y_;
  int64_t batch_;
  at::Generator gen_;
};

/// A task over fixed tensors with a frozen linear head (logits = features · headᵀ), or with no
/// head at all (logits() throws: the multitask pretraining must bring its own).
class SyntheticTask : public fusion::Task {
 public:
  SyntheticTask(std::string name, at::Tensor x, at::Tensor y, int64_t classes, at::Tensor head)
      : name_(std::move(name)), x_(std::move(x)), y_(std::move(y)), classes_(classes), head_(std::move(head)) {}
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return classes_; }
  bool has_train_split() const override { return true; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t batch, uint64_t seed) override {
    return std::make_unique<VectorStream>(x_, y_, batch, seed);
  }
  at::Tensor logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const override {
    FUSION_ENSURE(head_.defined(), "task ", name_, " has no head");
    return at::matmul(model.forward(params, inputs), head_.t());
  }
  nlohmann::json evaluate(const Model& model) override {
    at::NoGradGuard g;
    at::Tensor l = logits(model, model.parameters(), x_);
    return {{"accuracy", l.argmax(1).eq(y_).to(at::kDouble).mean().item<double>()},
            {"loss", at::cross_entropy_loss(l, y_).item<double>()}};
  }
  /// Mean cross-entropy over the whole data set under `params`.
  double full_loss(const Model& model, const StateDict& params) const {
    at::NoGradGuard g;
    return at::cross_entropy_loss(logits(model, params, x_), y_).item<double>();
  }
  const at::Tensor& x() const { return x_; }
  const at::Tensor& y() const { return y_; }

 private:
  std::string name_;
  at::Tensor x_, y_;
  int64_t classes_;
  at::Tensor head_;
};

class SimplePool : public fusion::TaskPool {
 public:
  void add(std::unique_ptr<SyntheticTask> t) { tasks_.push_back(std::move(t)); }
  std::vector<std::string> task_names() const override {
    std::vector<std::string> n;
    for (const auto& t : tasks_) n.push_back(t->name());
    return n;
  }
  fusion::Task& task(const std::string& name) override {
    for (auto& t : tasks_)
      if (t->name() == name) return *t;
    FUSION_FAIL("unknown task ", name);
  }
  SyntheticTask& at(size_t i) { return *tasks_[i]; }

 private:
  std::vector<std::unique_ptr<SyntheticTask>> tasks_;
};

/// Gaussian blobs: class c centred at a random mean, n points each, in `din` dimensions.
inline SyntheticTask* blobs(SimplePool& pool, const std::string& name, int64_t din, int64_t classes,
                            int64_t n, int64_t hidden, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor means = at::randn({classes, din}, g) * 2.0;
  at::Tensor y = at::arange(classes, at::kLong).repeat_interleave(n);
  at::Tensor x = means.index_select(0, y) + at::randn({classes * n, din}, g) * 0.5;
  at::Tensor head = at::randn({classes, hidden}, g);
  pool.add(std::make_unique<SyntheticTask>(name, x, y, classes, head));
  return &pool.at(pool.task_names().size() - 1);
}

/// Images [n·classes, 3, S, S]: class c lights up the c-th patch-sized square, plus noise.
inline void add_square_task(SimplePool& pool, const std::string& name, int64_t classes, int64_t n,
                            int64_t size, int64_t patch, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor y = at::arange(classes, at::kLong).repeat_interleave(n);
  at::Tensor x = at::randn({classes * n, 3, size, size}, g) * 0.3;
  const int64_t across = size / patch;
  for (int64_t i = 0; i < classes * n; ++i) {
    const int64_t c = y[i].item<int64_t>();
    const int64_t r = (c / across) * patch, col = (c % across) * patch;
    x[i].slice(1, r, r + patch).slice(2, col, col + patch).add_(2.0);
  }
  pool.add(std::make_unique<SyntheticTask>(name, x, y, classes, at::Tensor()));
}

/// A Context for method T's options (checked against its binding), in run_dir, silent.
template <class T>
fusion::Context method_context(std::map<std::string, fusion::Value> values, const std::filesystem::path& run_dir,
                               uint64_t seed = 42) {
  fusion::Context::Settings s;
  s.seed = seed;
  s.run_dir = run_dir;
  s.progress = false;
  return fusion::Context(s).with_config(
      fusion::Config::validate("method", values, fusion::schema_of<typename T::Options>()));
}

/// Method T made as the host makes it: from the options in `ctx`'s checked config.
template <class T>
std::unique_ptr<T> make_method(const fusion::Context& ctx) {
  return std::make_unique<T>(fusion::read_options<typename T::Options>(ctx.config()));
}

/// A fresh empty folder under the system's temporary directory.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() /
           ("fusion_finetune_test_" + name + "_" + std::to_string(std::random_device{}()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace finetune_test
