#include "fusion/task_pool.hpp"

#include "fusion/error.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/model_aware.hpp"

namespace fusion {

BatchStream::~BatchStream() = default;
Task::~Task() = default;
TaskPool::~TaskPool() = default;
ModelAwareTaskPool::~ModelAwareTaskPool() = default;

void adapt_to_models(TaskPool& tasks, const ModelPool& models) {
  if (auto* aware = dynamic_cast<ModelAwareTaskPool*>(&tasks)) aware->adapt_to(models);
}

EvalCachingTaskPool::~EvalCachingTaskPool() = default;

bool set_eval_cache(TaskPool& tasks, int64_t bytes) {
  FUSION_ENSURE(bytes >= 0, "set_eval_cache: negative budget ", bytes);
  auto* caching = dynamic_cast<EvalCachingTaskPool*>(&tasks);
  if (caching) caching->set_eval_cache_bytes(bytes);
  return caching != nullptr;
}

std::unique_ptr<BatchStream> Task::test_stream(int64_t /*batch_size*/, uint64_t /*seed*/) {
  FUSION_FAIL("task '", name(), "' offers no test batches (its task pool does not implement test_stream)");
}

at::Tensor Task::loss(const Model& model, const StateDict& params, const Batch& batch) const {
  at::Tensor logits = this->logits(model, params, batch.inputs);
  return at::cross_entropy_loss(logits, batch.labels);
}

nlohmann::json TaskPool::evaluate(const Model& model) {
  nlohmann::json report = nlohmann::json::object();
  double acc_sum = 0.0, loss_sum = 0.0;
  const auto names = task_names();
  for (const auto& name : names) {
    nlohmann::json r = task(name).evaluate(model);
    acc_sum += r.at("accuracy").get<double>();
    loss_sum += r.at("loss").get<double>();
    report[name] = std::move(r);
  }
  if (!names.empty()) {
    report["average"] = {{"accuracy", acc_sum / names.size()}, {"loss", loss_sum / names.size()}};
  }
  report["model_info"] = model_info(model);
  return report;
}

nlohmann::json model_info(const Model& model, int64_t trainable) {
  const int64_t all = model.parameters().numel() + trainable;
  return {{"trainable_params", trainable},
          {"all_params", all},
          {"trainable_percentage", all > 0 ? static_cast<double>(trainable) / all : 0.0}};
}

}  // namespace fusion
