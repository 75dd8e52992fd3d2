#pragma once
// train_log.csv of PWEMoE training: one row per step with the columns
//   step, loss, lr, mode, lp_failed, r_<task>…, loss_<task>…, weight_<task>…, seconds
// (loss = Σₜ wₜ Lₜ; lr of the step; mode "ls", "balance", "dominance" or "fallback"; seconds since
// training started in this process).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/train_log.hpp"
#include "pwe_moe.hpp"

namespace fusion::methods {

class StepLog {
 public:
  /// A log at `path` with a column per task of `tasks`. A resumed run passes the step it resumes
  /// from as `resumed_at`: the rows up to it are kept and the later ones (not in the checkpoint)
  /// dropped; 0 starts the file anew.
  StepLog(const std::filesystem::path& path, const std::vector<std::string>& tasks, int64_t resumed_at);
  void add(int64_t step, double lr, const std::vector<double>& r, const PweMoeStepStats& stats, double seconds);

 private:
  TrainLog log_;
};

}  // namespace fusion::methods
