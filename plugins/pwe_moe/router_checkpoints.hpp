#pragma once
// Router checkpoints of PWEMoE training: `routers_step=<s>.safetensors` in run_dir/checkpoints/,
// holding the routers under the original module's names, Adam's moments under
// "optimizer.<name>.exp_avg" and "optimizer.<name>.exp_avg_sq", and metadata: method, step,
// optimizer_steps, num_tasks, tasks, seed, router_hidden_layers, and (since resumes are checked)
// "training", the record of the options that define the training (training_record.hpp).
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "fusion/optim.hpp"
#include "pareto_weight_ensembling.hpp"

namespace fusion::methods {

/// dir / "routers_step=<step>.safetensors".
std::filesystem::path router_checkpoint_path(const std::filesystem::path& dir, int64_t step);

/// The checkpoint with the highest step in `dir` ("" when there is none).
std::filesystem::path latest_router_checkpoint(const std::filesystem::path& dir);

/// Writes the routers of `pwe` and Adam's state after `step` steps to `path` atomically (its folder
/// is created); `method` and `seed` name the run in the metadata, `training` (when not null) is
/// stored as the metadata entry "training" (training_record.hpp), in the same header.
void save_router_checkpoint(const std::filesystem::path& path, const ParetoWeightEnsembling& pwe, Adam& adam,
                            int64_t step, const std::string& method, uint64_t seed,
                            const nlohmann::json& training = nlohmann::json());

/// Loads the routers of a checkpoint into `pwe` and, when `adam` is given, its optimizer state;
/// returns the checkpoint's step. fusion::Error for a missing file, another number of tasks, a
/// missing or misshapen router weight, or (with `adam`) missing optimizer state.
int64_t load_router_checkpoint(const std::filesystem::path& path, ParetoWeightEnsembling& pwe, Adam* adam);

/// The metadata of a checkpoint.
std::map<std::string, std::string> router_checkpoint_metadata(const std::filesystem::path& path);

}  // namespace fusion::methods
