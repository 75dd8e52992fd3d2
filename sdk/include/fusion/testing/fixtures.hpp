#pragma once
// Ready-made test setups (library fusion::testing): a tiny pretrained model with one expert and one
// synthetic task per name, a Context for a method's options, state-dict comparison, and a scratch
// folder.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "fusion/model.hpp"
#include "fusion/state_dict.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/testing/memory_pools.hpp"
#include "fusion/testing/tiny_model.hpp"

namespace fusion::testing {

/// What the experts of a tiny setup are.
enum class ExpertKind {
  FineTuned,  ///< the pretrained model fine-tuned on its task's train split (full-batch descent)
  Identical,  ///< deep copies of the pretrained model (every task vector is zero)
  Perturbed,  ///< the pretrained model plus N(0, perturbation²) noise, from the setup's seed
};

/// How make_tiny_setup builds its models and tasks.
struct TinySetupOptions {
  int64_t num_tasks = 2;                    ///< tasks, and experts (one per task, the same names)
  std::vector<std::string> names;           ///< their names (empty: "task0", "task1", ...)
  ExpertKind experts = ExpertKind::FineTuned;
  int64_t fine_tune_steps = 30;             ///< FineTuned: gradient steps on the train split
  double fine_tune_lr = 0.2;                ///< FineTuned: step size
  double perturbation = 0.1;                ///< Perturbed: noise scale
  bool train_splits = true;                 ///< false: no task has a train split
  TinyModelConfig model;                    ///< the architecture
  SyntheticTaskOptions task;                ///< base options of every task; input_dim, feature_dim,
                                            ///< device, dtype and seed are set by the setup
  uint64_t seed = 0;                        ///< every draw derives from it (derive_seed)
  at::Device device = at::kCPU;             ///< where the pools hand out models and data
  at::ScalarType dtype = at::kFloat;        ///< dtype of the models' floating tensors and inputs
};

/// A tiny world: a pretrained TinyModel, one expert per task, their pools.
struct TinySetup {
  std::shared_ptr<const TinyModel> pretrained;                ///< on the CPU, float32
  std::vector<std::pair<std::string, ConstModelPtr>> experts;  ///< on the CPU, float32
  std::shared_ptr<MemoryModelPool> models;   ///< pretrained + experts, on options.device/dtype
  std::shared_ptr<MemoryTaskPool> tasks;     ///< SyntheticTasks of the experts' names
};

/// The task options make_tiny_setup gives task `index` (classes 3, 4, 3, 4, ...; seed derived from
/// options.seed and the index; train split unless options.train_splits is false).
SyntheticTaskOptions tiny_task_options(const TinySetupOptions& options, int64_t index);

/// A pretrained TinyModel (seed-derived), `num_tasks` SyntheticTasks and one expert per task, as
/// `options` say; the same options give the same setup.
TinySetup make_tiny_setup(const TinySetupOptions& options = {});

/// A copy of `params` after `steps` steps of full-batch gradient descent (step size `lr`) on
/// task.loss(model, params, batch): a quick, deterministic "expert" of a task. Integer tensors are
/// copied unchanged. Returns detached tensors.
StateDict fine_tune(const Model& model, const StateDict& params, const Task& task, const Batch& batch,
                    int64_t steps, double lr);

/// How test_context makes a Context.
struct ContextOptions {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  uint64_t seed = 42;
  std::filesystem::path run_dir;     ///< "" : none (methods that write files need one)
  bool progress = false;
  std::shared_ptr<Logger> logger;    ///< null: a new one at Warn level (quiet tests)
};

/// `key=value` assignments as a config table: each value is read as TOML (`0.5`, `[0.3, 0.7]`,
/// `"text"`, `true`; a bare word is a string). A key may carry a `method.` prefix. Throws
/// fusion::Error naming the assignment when it is malformed.
std::map<std::string, Value> parse_assignments(const std::vector<std::string>& assignments);

/// A Context whose config() is `values` checked against `schema` as the host checks `[method]`
/// (defaults filled in; fusion::Error naming `method.key` for a bad value).
Context test_context(const Schema& schema, const std::map<std::string, Value>& values = {},
                     const ContextOptions& options = {});

/// "" when `actual` holds exactly the keys of `expected` (in any order) with the same dtypes and
/// shapes, floating values within |a − e| ≤ atol + rtol·|e| (NaN matches NaN) and other values
/// equal; otherwise one line naming the first key that differs and how ("key 'x': max abs
/// difference 0.25 at rtol 1e-05, atol 1e-06"). Tensors may be on any device.
std::string state_dict_difference(const StateDict& actual, const StateDict& expected, double rtol = 1e-5,
                                  double atol = 1e-6);

/// "" when every floating tensor of `params` is finite; otherwise one line naming the first key
/// that is not ("key 'x' has 3 non-finite values of 12").
std::string non_finite(const StateDict& params);

/// A fresh empty folder under the system's temporary folder, removed with everything in it when
/// the object is destroyed (unless keep() was called).
class ScratchDir {
 public:
  /// `prefix` starts the folder's name ("fusion_test_" + a random suffix otherwise).
  explicit ScratchDir(const std::string& prefix = "fusion_test");
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  void keep() { keep_ = true; }

 private:
  std::filesystem::path path_;
  bool keep_ = false;
};

}  // namespace fusion::testing
