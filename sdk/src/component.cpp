// ComponentKind names, Requirements and the one check of a component's requirements.
#include "fusion/component.hpp"

#include "fusion/error.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/task_pool.hpp"

namespace fusion {

const char* kind_name(ComponentKind kind) {
  switch (kind) {
    case ComponentKind::Algorithm: return "algorithm";
    case ComponentKind::ModelPool: return "modelpool";
    case ComponentKind::TaskPool: return "taskpool";
  }
  return "?";
}

std::string Requirements::describe() const {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  if (needs_pretrained) add("a pretrained model");
  if (min_experts > 0)
    add("at least " + std::to_string(min_experts) + (min_experts == 1 ? " expert" : " experts"));
  if (needs_train_splits)
    add("a task pool with train splits");
  else if (needs_task_pool)
    add("a task pool");
  return out.empty() ? "nothing" : out;
}

void check_requirements(const ComponentInfo& info, const ModelPool& models, TaskPool* tasks) {
  const Requirements& r = info.requirements;
  const std::string& who = info.name;
  if (r.needs_pretrained)
    FUSION_ENSURE(models.has_pretrained(), who, " needs a pretrained model: set modelpool.pretrained");
  if (r.min_experts > 0) {
    const auto have = static_cast<int64_t>(models.expert_names().size());
    FUSION_ENSURE(have >= r.min_experts, who, " needs at least ", r.min_experts,
                  r.min_experts == 1 ? " expert" : " experts", ", the model pool has ", have,
                  ": add them under [modelpool.models]");
  }
  if (r.needs_task_pool || r.needs_train_splits)
    FUSION_ENSURE(tasks != nullptr, who, " needs a task pool: add a [taskpool] section");
  if (r.needs_train_splits) {
    for (const auto& name : tasks->task_names())
      FUSION_ENSURE(tasks->task(name).has_train_split(), who,
                    " needs a train split for every task; task '", name, "' has none");
  }
}

}  // namespace fusion
