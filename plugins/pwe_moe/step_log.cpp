#include "step_log.hpp"

namespace fusion::methods {

namespace {
std::vector<std::string> columns(const std::vector<std::string>& tasks) {
  std::vector<std::string> c{"step", "loss", option_name(&PweMoeOptions::lr), "mode", "lp_failed"};
  for (const char* what : {"r_", "loss_", "weight_"})
    for (const auto& t : tasks) c.push_back(what + t);
  c.push_back("seconds");
  return c;
}
}  // namespace

StepLog::StepLog(const std::filesystem::path& path, const std::vector<std::string>& tasks, int64_t resumed_at)
    : log_(path, columns(tasks), resumed_at > 0 ? resumed_at : -1) {}

void StepLog::add(int64_t step, double lr, const std::vector<double>& r, const PweMoeStepStats& stats,
                  double seconds) {
  std::vector<TrainLog::Cell> row{step, stats.loss, lr, stats.mode, int64_t{stats.lp_failed ? 1 : 0}};
  for (const auto* values : {&r, &stats.losses, &stats.weights})
    for (double v : *values) row.emplace_back(v);
  row.emplace_back(seconds);
  log_.add(row);
}

}  // namespace fusion::methods
