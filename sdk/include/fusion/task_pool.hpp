#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fusion/context.hpp"
#include "fusion/export.hpp"
#include "fusion/model.hpp"

namespace fusion {

/// One labelled batch: inputs ready for Model::forward (on the run's device) and int64 labels.
struct Batch {
  at::Tensor inputs;
  at::Tensor labels;
};

/// An endless stream of labelled batches from a task's train split, reshuffled every epoch from
/// the seed it was made with. Owned by the caller; not thread-safe.
class FUSION_SDK_API BatchStream {
 public:
  virtual ~BatchStream();
  virtual Batch next() = 0;
};

/// One classification task: its splits, its frozen classification head, its loss and metrics.
class FUSION_SDK_API Task {
 public:
  virtual ~Task();
  virtual std::string name() const = 0;
  virtual int64_t num_classes() const = 0;
  virtual bool has_train_split() const = 0;
  /// Endless shuffled batches of the train split. Throws fusion::Error when the task has none.
  virtual std::unique_ptr<BatchStream> train_stream(int64_t batch_size, uint64_t seed) = 0;
  /// Endless batches of the test split, reshuffled every epoch from `seed`, for methods that adapt
  /// on unlabeled test data (AdaMerging's entropy minimisation): they must not read the labels.
  /// The base class throws fusion::Error ("task 'x' offers no test batches").
  virtual std::unique_ptr<BatchStream> test_stream(int64_t batch_size, uint64_t seed);
  /// Class logits for `inputs`: the model's features under `params`, through this task's frozen
  /// head. Differentiable in `params`.
  virtual at::Tensor logits(const Model& model, const StateDict& params,
                            const at::Tensor& inputs) const = 0;
  /// Mean cross-entropy of logits(...) against `labels`.
  at::Tensor loss(const Model& model, const StateDict& params, const Batch& batch) const;
  /// The model on this task's test split: {"accuracy": top-1 in [0, 1], "loss": mean CE, ...}.
  virtual nlohmann::json evaluate(const Model& model) = 0;
};

/// Named tasks. evaluate() runs a model on every task's test split and returns FusionBench's
/// report shape: one {"accuracy","loss"} object per task, "average" over tasks, and "model_info".
class FUSION_SDK_API TaskPool {
 public:
  virtual ~TaskPool();
  virtual std::vector<std::string> task_names() const = 0;
  /// Throws fusion::Error for an unknown name.
  virtual Task& task(const std::string& name) = 0;
  virtual nlohmann::json evaluate(const Model& model);
};

/// {"trainable_params", "all_params", "trainable_percentage"} for a model with `trainable`
/// trainable parameters (as FusionBench's report).
FUSION_SDK_API nlohmann::json model_info(const Model& model, int64_t trainable = 0);

}  // namespace fusion
