#include "router_checkpoints.hpp"

#include <c10/core/GradMode.h>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "training_record.hpp"

namespace fusion::methods {

namespace fs = std::filesystem;

namespace {
const std::string kPrefix = "routers_step=", kSuffix = ".safetensors";
}  // namespace

fs::path router_checkpoint_path(const fs::path& dir, int64_t step) {
  return dir / (kPrefix + std::to_string(step) + kSuffix);
}

fs::path latest_router_checkpoint(const fs::path& dir) {
  fs::path best;
  int64_t best_step = -1;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return best;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= kPrefix.size() + kSuffix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0 ||
        name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
      continue;
    const std::string num = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t s = std::stoll(num);
    if (s > best_step) {
      best_step = s;
      best = entry.path();
    }
  }
  return best;
}

void save_router_checkpoint(const fs::path& path, const ParetoWeightEnsembling& pwe, Adam& adam, int64_t step,
                            const std::string& method, uint64_t seed, const nlohmann::json& training) {
  const StateDict routers = pwe.router_state();
  StateDict sd = routers.detach();
  size_t i = 0;
  for (const auto& [name, t] : routers) {
    sd.set("optimizer." + name + ".exp_avg", adam.exp_avg()[i]);
    sd.set("optimizer." + name + ".exp_avg_sq", adam.exp_avg_sq()[i]);
    ++i;
  }
  std::string tasks;
  for (size_t k = 0; k < pwe.expert_names().size(); ++k) tasks += (k ? "," : "") + pwe.expert_names()[k];
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"method", method},
      {"step", std::to_string(step)},
      {"optimizer_steps", std::to_string(adam.steps())},
      {"num_tasks", std::to_string(pwe.num_tasks())},
      {"tasks", tasks},
      {"seed", std::to_string(seed)},
      {option_name(&ParetoWeightEnsemblingOptions::router_hidden_layers),
       std::to_string(pwe.options().router_hidden_layers)}};
  if (!training.is_null()) metadata[kTrainingRecordKey] = training.dump();
  save_safetensors(path, sd, metadata);
}

int64_t load_router_checkpoint(const fs::path& path, ParetoWeightEnsembling& pwe, Adam* adam) {
  FUSION_ENSURE(fs::exists(path), path.string(), ": router checkpoint not found");
  SafetensorsFile file(path);
  const auto& meta = file.metadata();
  auto it = meta.find("num_tasks");
  if (it != meta.end())
    FUSION_ENSURE(it->second == std::to_string(pwe.num_tasks()), path.string(), ": the checkpoint has routers for ",
                  it->second, " tasks, the model pool has ", pwe.num_tasks());
  StateDict sd = file.read_all(pwe.router_parameters().front().device(), at::kFloat);
  pwe.load_router_state(sd, path.string());
  int64_t step = 0;
  if ((it = meta.find("step")) != meta.end()) step = std::stoll(it->second);
  if (adam != nullptr) {
    const StateDict routers = pwe.router_state();
    size_t i = 0;
    c10::NoGradGuard no_grad;
    for (const auto& [name, t] : routers) {
      const at::Tensor* m = sd.find("optimizer." + name + ".exp_avg");
      const at::Tensor* v = sd.find("optimizer." + name + ".exp_avg_sq");
      FUSION_ENSURE(m && v, path.string(), ": optimizer state of '", name, "' is missing; cannot resume");
      adam->exp_avg()[i].copy_(*m);
      adam->exp_avg_sq()[i].copy_(*v);
      ++i;
    }
    int64_t opt_steps = step;
    if ((it = meta.find("optimizer_steps")) != meta.end()) opt_steps = std::stoll(it->second);
    adam->set_steps(opt_steps);
  }
  return step;
}

std::map<std::string, std::string> router_checkpoint_metadata(const fs::path& path) {
  return SafetensorsFile(path).metadata();
}

}  // namespace fusion::methods
