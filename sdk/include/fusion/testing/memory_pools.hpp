#pragma once
// In-memory pools for unit tests (library fusion::testing): a ModelPool that counts what it lends
// and proves it was never modified, synthetic classification tasks with train and test splits, and
// a TaskPool holding them. Nothing here reads or writes files, except MemoryModelPool::save.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/state_dict.hpp"
#include "fusion/task_pool.hpp"

namespace fusion::testing {

/// A ModelPool over models held in memory.
///
/// The pool keeps the models it is given and never modifies them; it hands them out on `device`,
/// floating tensors in `dtype`. pretrained() returns one cached deep copy (the same object to every
/// caller, as real pools do); load() returns a fresh deep copy each call, owned by the caller. The pool
/// remembers every tensor it started with and the pretrained model it handed out, so that
/// modification() can tell whether a method changed either (through a const_cast, an in-place
/// operation on a shared tensor, or requires_grad_ on a pool tensor). It counts calls and the
/// experts alive at once, for tests of streaming methods. Not thread-safe.
class MemoryModelPool : public ModelPool {
 public:
  /// `pretrained` may be null (a pool without a pretrained model). `experts`: name and model, in
  /// the order expert_names() lists them; names must be unique (fusion::Error otherwise).
  MemoryModelPool(ConstModelPtr pretrained, std::vector<std::pair<std::string, ConstModelPtr>> experts,
                  at::Device device = at::kCPU, at::ScalarType dtype = at::kFloat);

  /// A pool of plain checkpoints (architecture "checkpoint": mergeable and savable, no forward).
  static std::shared_ptr<MemoryModelPool> from_state_dicts(
      std::optional<StateDict> pretrained, std::vector<std::pair<std::string, StateDict>> experts,
      at::Device device = at::kCPU, at::ScalarType dtype = at::kFloat);

  std::vector<std::string> expert_names() const override;
  bool has_pretrained() const override { return pretrained_ != nullptr; }
  /// The cached pretrained model. Throws fusion::Error "the model pool has no pretrained model"
  /// when there is none.
  ConstModelPtr pretrained() override;
  /// A deep copy of expert `name`. Throws fusion::Error naming the name and the experts there are.
  ModelPtr load(const std::string& name) override;
  /// Writes model.safetensors and config.json (the model's config) into `dir` with
  /// write_directory_atomic.
  void save(const Model& model, const std::filesystem::path& dir) const override;

  /// Calls of pretrained(), load(), load(name) and save().
  int64_t pretrained_calls() const { return pretrained_calls_; }
  int64_t loads() const { return loads_; }
  int64_t loads_of(const std::string& name) const;
  int64_t saves() const { return saves_; }
  /// The most loaded experts alive at once, counting the one being loaded (a method that streams
  /// the experts and drops each before the next load sees at most 2).
  int max_live_experts() const { return max_live_; }
  /// The most bytes of earlier experts' tensors still alive when an expert was loaded: a method
  /// that streams holds at most one expert's worth (its running sum may be the first expert's own
  /// tensors); one that keeps every expert holds more.
  int64_t max_lent_bytes_alive() const { return max_lent_bytes_; }
  /// The bytes of one expert (the first's; 0 without experts).
  int64_t expert_bytes() const;

  /// "" when neither the models the pool holds nor the pretrained model it handed out changed
  /// since: same keys in the same order, dtypes, shapes, devices, values (bit for bit) and no
  /// tensor that now requires grad. Otherwise one line naming the model and the key, e.g.
  /// "the pretrained model handed out by pretrained() changed: key 'x': values differ (max abs
  /// difference 1)".
  std::string modification() const;

 private:
  struct Snapshot {
    std::string what;   ///< "the pretrained model handed out by pretrained()", "expert 'a' ..."
    const Model* model; ///< the live object
    StateDict values;   ///< deep copy taken when it was made or handed out
  };
  using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  ConstModelPtr pretrained_;
  std::vector<std::pair<std::string, ConstModelPtr>> experts_;
  at::Device device_;
  at::ScalarType dtype_;
  ConstModelPtr handed_out_;  ///< the cached pretrained model on device_/dtype_
  std::vector<Snapshot> snapshots_;
  std::vector<std::weak_ptr<Model>> lent_;
  std::vector<std::pair<WeakTensor, int64_t>> lent_tensors_;
  std::map<std::string, int64_t> loads_by_name_;
  int64_t pretrained_calls_ = 0;
  int64_t loads_ = 0;
  mutable int64_t saves_ = 0;
  int max_live_ = 0;
  int64_t max_lent_bytes_ = 0;
};

/// How a SyntheticTask's data is drawn. Defaults: 3 classes of Gaussian blobs in 3 dimensions, a
/// head over 4 features, 96 train and 64 test examples.
struct SyntheticTaskOptions {
  int64_t classes = 3;       ///< number of classes (≥ 2)
  int64_t input_dim = 3;     ///< features of an input row (TinyModelConfig::input_dim)
  int64_t feature_dim = 4;   ///< width of the model's output features (TinyModelConfig::hidden)
  int64_t train_size = 96;   ///< examples in the train split; 0: the task has no train split
  int64_t test_size = 64;    ///< examples in the test split (≥ 1)
  double spread = 1.5;       ///< class means μₖ ~ N(0, spread²) per dimension
  double noise = 0.6;        ///< an input of class k ~ N(μₖ, noise²) per dimension
  uint64_t seed = 0;         ///< every draw (means, head, both splits) comes from this seed
  at::Device device = at::kCPU;      ///< where inputs, labels and the head live
  at::ScalarType dtype = at::kFloat; ///< dtype of inputs and head (labels are int64)
};

/// A classification task over synthetic Gaussian blobs, with a frozen random linear head:
/// logits = model.forward(params, inputs) · headᵀ, head ~ N(0, 1) of shape [classes, feature_dim].
/// Deterministic from its seed. train_stream(batch, seed) serves endless batches of the train split,
/// reshuffled every epoch from `seed` (the same seed gives the same batches); test_stream the same
/// of the test split, without labels. evaluate() gives
/// FusionBench's {"accuracy": top-1 in [0, 1], "loss": mean cross-entropy} on the test split.
/// Not thread-safe.
class SyntheticTask : public Task {
 public:
  SyntheticTask(std::string name, SyntheticTaskOptions options = {});

  std::string name() const override { return name_; }
  int64_t num_classes() const override { return options_.classes; }
  bool has_train_split() const override { return options_.train_size > 0; }
  /// Throws fusion::Error "task 'x' has no train split" when it has none.
  std::unique_ptr<BatchStream> train_stream(int64_t batch_size, uint64_t seed) override;
  /// Endless batches of the test split (what evaluate() scores), reshuffled every epoch from
  /// `seed`, with undefined labels: a method that adapts on test data must not read them, and one
  /// that does fails here.
  std::unique_ptr<BatchStream> test_stream(int64_t batch_size, uint64_t seed) override;
  at::Tensor logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const override;
  nlohmann::json evaluate(const Model& model) override;

  /// The whole train split as one batch (undefined tensors when there is none).
  Batch train_split() const { return {train_x_, train_y_}; }
  /// The whole test split as one batch.
  Batch test_split() const { return {test_x_, test_y_}; }
  const at::Tensor& head() const { return head_; }
  const SyntheticTaskOptions& options() const { return options_; }

  /// From this many batches served (over all of the task's streams) on, the streams serve NaN
  /// inputs: for tests of how a method reacts to a diverging loss. -1 (default): never.
  void set_nan_after(int64_t batches) { *nan_after_ = batches; }
  /// Batches served by all of its train streams so far, by its test streams, and evaluate() calls.
  int64_t batches_served() const { return *served_; }
  int64_t test_batches_served() const { return *test_served_; }
  int64_t evaluations() const { return evaluations_; }

 private:
  std::string name_;
  SyntheticTaskOptions options_;
  at::Tensor head_, train_x_, train_y_, test_x_, test_y_;
  std::shared_ptr<int64_t> served_ = std::make_shared<int64_t>(0);
  std::shared_ptr<int64_t> test_served_ = std::make_shared<int64_t>(0);
  std::shared_ptr<int64_t> nan_after_ = std::make_shared<int64_t>(-1);
  int64_t evaluations_ = 0;
};

/// A TaskPool over tasks held in memory, in the order they were added. Its evaluate() is the SDK's
/// (one {"accuracy","loss"} per task, "average", "model_info"). Not thread-safe.
class MemoryTaskPool : public TaskPool {
 public:
  MemoryTaskPool() = default;
  /// Adds `task` (its name must be new, fusion::Error otherwise) and returns it.
  Task& add(std::unique_ptr<Task> task);
  /// Makes and adds a SyntheticTask.
  SyntheticTask& add_synthetic(const std::string& name, const SyntheticTaskOptions& options = {});

  std::vector<std::string> task_names() const override;
  /// Throws fusion::Error "unknown task 'x' (tasks: a, b)".
  Task& task(const std::string& name) override;

  size_t size() const { return tasks_.size(); }
  /// The i-th task added.
  Task& at(size_t i) { return *tasks_.at(i); }

 private:
  std::vector<std::unique_ptr<Task>> tasks_;
};

}  // namespace fusion::testing
