#pragma once
// A task pool that keeps its test inputs across the models a run evaluates, within the run's budget.
#include <cstdint>

#include "fusion/export.hpp"

namespace fusion {

class TaskPool;

/// What a task pool derives from, beside TaskPool, when it can keep the decoded and preprocessed
/// inputs of its test splits in memory from one evaluated model to the next: a Pareto set or a λ
/// sweep evaluates many models on the same test batches, which are then decoded and preprocessed
/// once per run instead of once per model. The host hands it the budget of `[run] eval_cache_mb`.
/// A task pool that does not derive from it is used as it is.
///
/// An interface of its own rather than a virtual of TaskPool (as ModelAwareTaskPool), so that
/// TaskPool's layout stays as it was: the host asks for it with set_eval_cache. Its typeinfo lives
/// in libfusion_sdk, so the cast works across plugins. Added in SDK 1.2 (API level 2).
class FUSION_SDK_API EvalCachingTaskPool {
 public:
  virtual ~EvalCachingTaskPool();
  /// Called by the host once, after ModelAwareTaskPool::adapt_to and before the method runs: keep
  /// at most `bytes` (≥ 0) of test inputs in memory; 0 keeps none. When the test splits take more,
  /// the pool keeps what fits and decodes the rest at every evaluation; the results are the same
  /// either way. Not thread-safe.
  virtual void set_eval_cache_bytes(int64_t bytes) = 0;
};

/// tasks.set_eval_cache_bytes(bytes) when `tasks` is an EvalCachingTaskPool; returns whether it is.
FUSION_SDK_API bool set_eval_cache(TaskPool& tasks, int64_t bytes);

}  // namespace fusion
