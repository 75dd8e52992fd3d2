#pragma once
// Fixtures for the finetune tests. The tiny model, its blob tasks, the pools, the Context and the
// scratch folders come from the test kit (fusion/testing/); what it has no equivalent for is here:
// image tasks (bright squares) without a head, for multitask_pretrain, which brings its own heads.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/error.hpp"
#include "fusion/model.hpp"
#include "fusion/options.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/testing/fixtures.hpp"
#include "fusion/testing/memory_pools.hpp"

namespace finetune_test {

using fusion::Batch;
using fusion::Model;
using fusion::StateDict;

/// A fixed labelled data set served in batches drawn with replacement, forever.
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

/// A pretrained TinyModel over 6 input features, of width 8 (the kit's MLP width 6, 2 layers with
/// attention), and two Gaussian-blob tasks with train splits: "blobs" (4 classes, 128 train
/// examples) and "other" (5 classes). The experts are copies of the pretrained model.
inline fusion::testing::TinySetup blob_setup() {
  fusion::testing::TinySetupOptions o;
  o.names = {"blobs", "other"};
  o.experts = fusion::testing::ExpertKind::Identical;
  o.model.input_dim = 6;
  o.model.hidden = 8;
  o.task.classes = 4;
  o.task.train_size = 128;
  o.seed = 1;
  return fusion::testing::make_tiny_setup(o);
}

/// A task over fixed images with no head (logits() throws: the multitask pretraining must bring its
/// own).
class ImageTask : public fusion::Task {
 public:
  ImageTask(std::string name, at::Tensor x, at::Tensor y, int64_t classes)
      : name_(std::move(name)), x_(std::move(x)), y_(std::move(y)), classes_(classes) {}
  std::string name() const override { return name_; }
  int64_t num_classes() const override { return classes_; }
  bool has_train_split() const override { return true; }
  std::unique_ptr<fusion::BatchStream> train_stream(int64_t batch, uint64_t seed) override {
    return std::make_unique<VectorStream>(x_, y_, batch, seed);
  }
  at::Tensor logits(const Model&, const StateDict&, const at::Tensor&) const override {
    FUSION_FAIL("task ", name_, " has no head");
  }
  nlohmann::json evaluate(const Model&) override { FUSION_FAIL("task ", name_, " has no head"); }
  const at::Tensor& x() const { return x_; }
  const at::Tensor& y() const { return y_; }

 private:
  std::string name_;
  at::Tensor x_, y_;
  int64_t classes_;
};

/// Images [n·classes, 3, S, S]: class c lights up the c-th patch-sized square, plus noise.
inline ImageTask& add_square_task(fusion::testing::MemoryTaskPool& pool, const std::string& name, int64_t classes,
                                  int64_t n, int64_t size, int64_t patch, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor y = at::arange(classes, at::kLong).repeat_interleave(n);
  at::Tensor x = at::randn({classes * n, 3, size, size}, g) * 0.3;
  const int64_t across = size / patch;
  for (int64_t i = 0; i < classes * n; ++i) {
    const int64_t c = y[i].item<int64_t>();
    const int64_t r = (c / across) * patch, col = (c % across) * patch;
    x[i].slice(1, r, r + patch).slice(2, col, col + patch).add_(2.0);
  }
  return static_cast<ImageTask&>(pool.add(std::make_unique<ImageTask>(name, x, y, classes)));
}

/// A Context for method T's options (checked against its binding), in run_dir, silent, seed 42.
template <class T>
fusion::Context method_context(const std::map<std::string, fusion::Value>& values,
                               const std::filesystem::path& run_dir) {
  fusion::testing::ContextOptions o;
  o.run_dir = run_dir;
  return fusion::testing::test_context(fusion::schema_of<typename T::Options>(), values, o);
}

/// Method T made as the host makes it: from the options in `ctx`'s checked config.
template <class T>
std::unique_ptr<T> make_method(const fusion::Context& ctx) {
  return std::make_unique<T>(fusion::read_options<typename T::Options>(ctx.config()));
}

}  // namespace finetune_test
