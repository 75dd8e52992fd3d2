#pragma once
// What a PWEMoE router checkpoint records of the training that wrote it, and how a resume is
// checked against it (docs/pwe_moe.md, "Resuming").
//
// The record is a JSON object stored as the checkpoint's metadata entry "training" (inside the
// safetensors header, so it is written atomically with the routers):
//
//   {"format": 1,
//    "run": {"seed": 42, "dtype": "float32"},
//    "method": {"name": "pwe_moe_ls", "init_lambda": 0.3, "router_hidden_layers": 2,
//               "upscale": ["*.mlp.*"], "upscale_attn": false, "lr": 0.01, "num_steps": 2000,
//               "save_interval": 1000, "batch_size": 16, "alpha": 1.0},   // pwe_moe_epo: + "epo_eps"
//    "modelpool": {"models": ["sun397", "stanford_cars"]},
//    "lr_schedule": [{"from_step": 0, "num_steps": 2000}]}
//
// "run", "method" and "modelpool" hold what defines the trajectory, keyed as in the config
// (run.seed, run.dtype, method.<option>, and the experts in order, modelpool.models). "lr_schedule" is not
// compared: it says which num_steps the cosine schedule used from which step on (a resume with
// another num_steps adds an entry; one from a checkpoint without a record starts at its step).
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace fusion::methods {

/// The metadata key of the record in a router checkpoint.
inline constexpr const char* kTrainingRecordKey = "training";

/// The record of a checkpoint's metadata: nullopt when it has none (a checkpoint written before
/// records existed). fusion::Error naming `origin` when the entry is not a JSON object with
/// "run", "method" and "modelpool" objects.
std::optional<nlohmann::json> training_record_of(const std::map<std::string, std::string>& metadata,
                                                 const std::string& origin);

/// How this run's options compare with a checkpoint's record.
struct TrainingComparison {
  /// The differences that refuse the resume, one per option, in the record's order (the sections
  /// run, method, modelpool; in each the checkpoint's keys alphabetically, then those only this
  /// run has): "method.lr: checkpoint 0.05, config 0.01". A num_steps other than the record's is not one of
  /// them unless it is below the checkpoint's step.
  std::vector<std::string> refused;
  /// The record's num_steps when this run's differs from it and is not below the checkpoint's step:
  /// the resume continues to this run's num_steps (the later steps on its schedule).
  std::optional<int64_t> num_steps_changed_from;
};

/// Compares `current` (a record made for this run) with `recorded` (the checkpoint's, written
/// after `checkpoint_step` steps). Every key of "run", "method" and "modelpool" of either side is
/// compared by its JSON text; a key one side lacks shows as "(none)".
TrainingComparison compare_training_records(const nlohmann::json& recorded, const nlohmann::json& current,
                                            int64_t checkpoint_step);

/// A value as the comparison shows it: numbers and booleans as JSON writes them, strings quoted,
/// lists as "[a, b]".
std::string shown_value(const nlohmann::json& v);

}  // namespace fusion::methods
