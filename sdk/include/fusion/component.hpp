#pragma once
#include <cstdint>
#include <string>

#include "fusion/config.hpp"
#include "fusion/export.hpp"

namespace fusion {

class ModelPool;
class TaskPool;

enum class ComponentKind { Algorithm, ModelPool, TaskPool };
FUSION_SDK_API const char* kind_name(ComponentKind kind);  ///< "algorithm", "modelpool", "taskpool"

/// What a component needs from the run before it can do anything. The host checks these before any
/// weight is read (check_requirements), so a component never re-checks them by hand.
///
///   Requirements().pretrained().experts(1).task_pool()
struct FUSION_SDK_API Requirements {
  bool needs_pretrained = false;   ///< a pretrained model (modelpool.pretrained)
  int64_t min_experts = 0;         ///< at least this many experts (modelpool.models)
  bool needs_task_pool = false;    ///< a [taskpool]
  bool needs_train_splits = false; ///< every task has a train split (implies a task pool)

  Requirements& pretrained() { needs_pretrained = true; return *this; }
  Requirements& experts(int64_t n) { min_experts = n; return *this; }
  Requirements& task_pool() { needs_task_pool = true; return *this; }
  Requirements& train_splits() { needs_task_pool = needs_train_splits = true; return *this; }

  /// "a pretrained model, at least 2 experts, a task pool" ("nothing" when empty).
  std::string describe() const;
};

/// What `fusion plugins` and `fusion describe` show about a component, and what the host checks
/// before it runs. With Registrar::add<T>() the schema comes from T's options binding.
struct FUSION_SDK_API ComponentInfo {
  std::string name;          ///< registry key, snake_case as in FusionBench: "task_arithmetic"
  std::string summary;       ///< one line
  std::string reference;     ///< paper or doc link ("" if none)
  Schema schema;             ///< the options of its config table
  Requirements requirements;  ///< what it needs from the run (algorithms)
};

/// Checks `info.requirements` against the run's pools. Throws fusion::Error with one line in one
/// format, naming the component:
///   "task_arithmetic needs a pretrained model: set modelpool.pretrained"
///   "simple_average needs at least 1 expert, the model pool has 0: add them under [modelpool.models]"
///   "pwe_moe_ls needs a task pool: add a [taskpool] section"
///   "x needs a train split for every task; task 'y' has none"
/// Reads no weight: only ModelPool::has_pretrained(), expert_names() and Task::has_train_split().
FUSION_SDK_API void check_requirements(const ComponentInfo& info, const ModelPool& models, TaskPool* tasks);

}  // namespace fusion
