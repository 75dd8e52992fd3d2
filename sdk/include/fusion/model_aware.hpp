#pragma once
// A task pool that takes settings from the run's models before the method runs.
#include "fusion/export.hpp"

namespace fusion {

class ModelPool;
class TaskPool;

/// What a task pool derives from, beside TaskPool, to learn about the models it will evaluate
/// before anything runs: defaults that depend on the models (the input size of a vision tower, the
/// folder of a text tower) and a setting that contradicts them refused before any weight or data is
/// read. A task pool that does not derive from it is used as it is.
///
/// An interface of its own rather than a virtual of TaskPool, so that TaskPool's layout (and every
/// task pool built against an SDK without it) stays as it was: the host asks for it with
/// adapt_to_models. Its typeinfo lives in libfusion_sdk, so the cast works across plugins.
class FUSION_SDK_API ModelAwareTaskPool {
 public:
  virtual ~ModelAwareTaskPool();
  /// Called once by the host, right after both pools are made and before the method's requirements
  /// are checked and the method runs. Reads what `models` says of its models without loading any:
  /// ModelPool::has_pretrained, CheckpointModelPool::path_of and the files there (config.json).
  /// Throws fusion::Error, one line naming this pool's option, for models it cannot evaluate.
  /// Not thread-safe.
  virtual void adapt_to(const ModelPool& models) = 0;
};

/// tasks.adapt_to(models) when `tasks` is a ModelAwareTaskPool; nothing otherwise.
FUSION_SDK_API void adapt_to_models(TaskPool& tasks, const ModelPool& models);

}  // namespace fusion
