#pragma once
// Test fixtures for PWEMoE: a tiny functional "transformer", an in-memory model pool, and
// Gaussian-blob classification tasks with fixed heads. The same architecture is defined in
// make_golden.py (TinyNet).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fusion/error.hpp"
#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/task_pool.hpp"

namespace pwe_test {

using fusion::Model;
using fusion::ModelPtr;
using fusion::StateDict;

constexpr int64_t kDin = 3, kD = 4, kH = 6;

/// h = embed(x); per block: h += tanh(self_attn(h)); h += fc2(gelu(fc1(h))); out = layer_norm(h).
class TinyModel : public Model {
 public:
  explicit TinyModel(StateDict p) : Model("tiny_mlp_transformer", std::move(p), {{"hidden", kD}}) {}
  at::Tensor forward(const StateDict& p, const at::Tensor& x) const override {
    at::Tensor h = at::linear(x, p.at("embed.weight"), p.at("embed.bias"));
    for (int b = 0;; ++b) {
      const std::string pre = "blocks." + std::to_string(b) + ".";
      if (!p.contains(pre + "self_attn.weight")) break;
      h = h + at::tanh(at::linear(h, p.at(pre + "self_attn.weight"), p.at(pre + "self_attn.bias")));
      at::Tensor m = at::gelu(at::linear(h, p.at(pre + "mlp.fc1.weight"), p.at(pre + "mlp.fc1.bias")));
      h = h + at::linear(m, p.at(pre + "mlp.fc2.weight"), p.at(pre + "mlp.fc2.bias"));
    }
    return at::layer_norm(h, {kD}, p.at("norm.weight"), p.at("norm.bias"), 1e-5);
  }
  std::shared_ptr<Model> with_parameters(StateDict params) const override {
    fusion::check_same_layout(parameters_, params, "model", "new parameters");
    return std::make_shared<TinyModel>(std::move(params));
  }
};

/// Random parameters of a TinyModel with `blocks` blocks.
inline StateDict random_tiny_params(int blocks, at::Generator gen, double scale = 0.5) {
  StateDict p;
  auto rnd = [&](std::vector<int64_t> shape) { return at::randn(shape, gen) * scale; };
  p.set("position_ids", at::arange(3, at::kLong));
  p.set("embed.weight", rnd({kD, kDin}));
  p.set("embed.bias", rnd({kD}));
  for (int b = 0; b < blocks; ++b) {
    const std::string pre = "blocks." + std::to_string(b) + ".";
    p.set(pre + "self_attn.weight", rnd({kD, kD}));
    p.set(pre + "self_attn.bias", rnd({kD}));
    p.set(pre + "mlp.fc1.weight", rnd({kH, kD}));
    p.set(pre + "mlp.fc1.bias", rnd({kH}));
    p.set(pre + "mlp.fc2.weight", rnd({kD, kH}));
    p.set(pre + "mlp.fc2.bias", rnd({kD}));
  }
  p.set("norm.weight", at::ones({kD}));
  p.set("norm.bias", at::zeros({kD}));
  return p;
}

/// Named models held in memory; load() returns a fresh copy (the caller owns it), counting loads.
class MemoryPool : public fusion::ModelPool {
 public:
  MemoryPool(ModelPtr pretrained, std::vector<std::pair<std::string, ModelPtr>> experts)
      : pretrained_(std::move(pretrained)), experts_(std::move(experts)) {}
  std::vector<std::string> expert_names() const override {
    std::vector<std::string> n;
    for (const auto& e : experts_) n.push_back(e.first);
    return n;
  }
  bool has_pretrained() const override { return pretrained_ != nullptr; }
  fusion::ConstModelPtr pretrained() override {
    FUSION_ENSURE(pretrained_ != nullptr, "no pretrained model");
    return pretrained_;
  }
  ModelPtr load(const std::string& name) override {
    for (const auto& e : experts_)
      if (e.first == name) {
        ++loads;
        return e.second->with_parameters(e.second->parameters().clone());
      }
    FUSION_FAIL("unknown model '", name, "'");
  }
  void save(const Model& model, const std::filesystem::path& dir) const override {
    std::filesystem::create_directories(dir);
    fusion::save_safetensors(dir / "model.safetensors", model.parameters());
    ++saves;
  }
  int loads = 0;
  mutable int saves = 0;

 private:
  ModelPtr pretrained_;
  std::vector<std::pair<std::string, ModelPtr>> experts_;
};

/// Endless shuffled batches over a fixed train split; reshuffled every epoch from its seed.
class TensorStream : public fusion::BatchStream {
 public:
  TensorStream(at::Tensor x, at::Tensor y, int64_t batch, uint64_t seed, int64_t nan_after,
               std::shared_ptr<int64_t> served)
      : x_(std::move(x)), y_(std::move(y)), batch_(batch), gen_(at::make_generator<at::CPUGeneratorImpl>(seed)),
        nan_after_(nan_after), served_(std::move(served)) {}
  fusion::Batch next() override {
    std::vector<at::Tensor> idx;
    int64_t need = batch_;
    while (need > 0) {
      if (pos_ >= perm_.numel()) {
        perm_ = at::randperm(x_.size(0), gen_);
        pos_ = 0;
      }
      const int64_t take = std::min(need, perm_.numel() - pos_);
      idx.push_back(perm_.narrow(0, pos_, take));
      pos_ += take;
      need -= take;
    }
    at::Tensor i = at::cat(idx);
    fusion::Batch b{x_.index_select(0, i), y_.index_select(0, i)};
    if (nan_after_ >= 0 && *served_ >= nan_after_) b.inputs.fill_(std::numeric_limits<float>::quiet_NaN());
    ++*served_;
    return b;
  }

 private:
  at::Tensor x_, y_, perm_;
  int64_t batch_, pos_ = 0;
  at::Generator gen_;
  int64_t nan_after_;
  std::shared_ptr<int64_t> served_;  // batches served by every stream of the task
};

/// A Gaussian-blob classification task: class k's inputs are N(μₖ, 0.6²); a fixed random head.
class BlobTask : public fusion::Task {
 public:
  BlobTask(std::string name, int64_t classes, uint64_t seed, bool has_train = true)
      : name_(std::move(name)), classes_(classes), has_train_(has_train) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
    head_ = at::randn({classes, kD}, g);
    at::Tensor mu = at::randn({classes, kDin}, g) * 1.5;
    auto make = [&](int64_t n) {
      at::Tensor y = at::randint(classes, {n}, g);
      at::Tensor x = mu.index_select(0, y) + 0.6 * at::randn({n, kDin}, g);
      return std::make_pair(x, y);
    };
    std::tie(train_x_, train_y_) = make(96);
    std::tie(test_x_, test_y_) = make(64);
  }
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return classes_; }
  bool has_train_split() const override { return has_train_; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t batch, uint64_t seed) override {
    FUSION_ENSURE(has_train_, "task '", name_, "' has no train split");
    return std::make_unique<TensorStream>(train_x_, train_y_, batch, seed, nan_after, served_);
  }
  at::Tensor logits(const Model& model, const StateDict& params, const at::Tensor& x) const override {
    return at::matmul(model.forward(params, x), head_.t());
  }
  nlohmann::json evaluate(const Model& model) override {
    c10::NoGradGuard ng;
    at::Tensor lg = logits(model, model.parameters(), test_x_);
    const double acc = (lg.argmax(1) == test_y_).to(at::kFloat).mean().item<double>();
    return {{"accuracy", acc}, {"loss", at::cross_entropy_loss(lg, test_y_).item<double>()}};
  }
  fusion::Batch train_batch() const { return {train_x_, train_y_}; }
  int64_t nan_after = -1;  ///< from this many batches on (over all its streams), NaN inputs

 private:
  std::string name_;
  int64_t classes_;
  bool has_train_;
  at::Tensor head_, train_x_, train_y_, test_x_, test_y_;
  std::shared_ptr<int64_t> served_ = std::make_shared<int64_t>(0);
};

class BlobTaskPool : public fusion::TaskPool {
 public:
  std::vector<std::string> task_names() const override {
    std::vector<std::string> n;
    for (const auto& t : tasks) n.push_back(t->name());
    return n;
  }
  fusion::Task& task(const std::string& name) override {
    for (auto& t : tasks)
      if (t->name() == name) return *t;
    FUSION_FAIL("unknown task '", name, "'");
  }
  std::vector<std::unique_ptr<BlobTask>> tasks;
};

/// Fine-tunes `params` on `task`'s train split (full-batch gradient descent): a tiny "expert".
inline StateDict fine_tune(const TinyModel& arch, StateDict params, const BlobTask& task, int steps, double lr) {
  params = params.clone();
  for (const auto& [k, t] : params)
    if (t.is_floating_point()) const_cast<at::Tensor&>(t).requires_grad_(true);
  const fusion::Batch b = task.train_batch();
  for (int s = 0; s < steps; ++s) {
    at::Tensor loss = task.loss(arch, params, b);
    loss.backward();
    c10::NoGradGuard ng;
    for (const auto& [k, t] : params)
      if (t.is_floating_point()) {
        at::Tensor& tt = const_cast<at::Tensor&>(t);
        tt.sub_(tt.grad() * lr);
        tt.mutable_grad().zero_();
      }
  }
  return params.detach();
}

/// T blob tasks, a pretrained tiny model and one expert per task fine-tuned on it.
struct BlobSetup {
  std::shared_ptr<MemoryPool> pool;
  std::shared_ptr<BlobTaskPool> tasks;
  ModelPtr pretrained;
};

inline BlobSetup make_blob_setup(int T, uint64_t seed = 5, int blocks = 2) {
  BlobSetup s;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto pre = std::make_shared<TinyModel>(random_tiny_params(blocks, g));
  s.pretrained = pre;
  s.tasks = std::make_shared<BlobTaskPool>();
  std::vector<std::pair<std::string, ModelPtr>> experts;
  for (int t = 0; t < T; ++t) {
    s.tasks->tasks.push_back(std::make_unique<BlobTask>("task" + std::to_string(t), 3 + t % 2, seed * 100 + t));
    StateDict ft = fine_tune(*pre, pre->parameters(), *s.tasks->tasks.back(), 60, 0.2);
    experts.emplace_back("task" + std::to_string(t), std::make_shared<TinyModel>(ft));
  }
  s.pool = std::make_shared<MemoryPool>(pre, experts);
  return s;
}

/// StateDict from the golden JSON ({key: {"shape", "data"}}); integer keys by name.
inline at::Tensor tensor_from_json(const nlohmann::json& j, at::ScalarType dtype = at::kFloat) {
  std::vector<int64_t> shape = j.at("shape").get<std::vector<int64_t>>();
  std::vector<double> data = j.at("data").get<std::vector<double>>();
  return at::tensor(data, at::TensorOptions().dtype(at::kDouble)).reshape(shape).to(dtype);
}

inline StateDict state_from_json(const nlohmann::json& j) {
  StateDict sd;
  for (auto it = j.begin(); it != j.end(); ++it)
    sd.set(it.key(), tensor_from_json(it.value(), it.key() == "position_ids" ? at::kLong : at::kFloat));
  return sd;
}

#ifdef PWE_TEST_DATA_DIR
inline const nlohmann::json& golden() {
  static const nlohmann::json g = [] {
    std::ifstream in(std::string(PWE_TEST_DATA_DIR) + "/golden.json");
    FUSION_ENSURE(in.good(), "cannot read golden.json");
    return nlohmann::json::parse(in);
  }();
  return g;
}
#endif

}  // namespace pwe_test
