#pragma once
// `fusion run`, last stages: each model's typed report, and what the run writes from it: the log
// line of each evaluated model, results.csv, the Pareto view (hypervolume, front, the series of
// pareto.svg) and report.json. A task pool's FusionBench-shaped JSON is read once, into Evaluation;
// everything after uses the typed values.
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "fusion/context.hpp"
#include "pareto_plot.hpp"
#include "plugin_host.hpp"
#include "run_config.hpp"

namespace fusion::host {

/// One task's scores; absent where the report has none.
struct TaskScores {
  std::optional<double> accuracy;
  std::optional<double> loss;
};

/// A model's evaluation on the run's tasks, typed from TaskPool::evaluate's report
/// ({"<task>": {"accuracy", "loss"}, ..., "average": {...}, "model_info": {...}}).
struct Evaluation {
  std::vector<TaskScores> tasks;      ///< one per task of the run, in the task pool's order
  std::optional<TaskScores> average;  ///< when the report has "average"
  nlohmann::json fusionbench;         ///< the report as the task pool returned it (report.json)

  /// From this run's task pool. Throws fusion::Error when an accuracy is given but is not a number
  /// (the log line, the hypervolume and the plot read it); a loss that is not a number is absent.
  static Evaluation from_task_pool(nlohmann::json report, const std::vector<std::string>& tasks);
  /// From a model's "report" in another run's report.json: whatever is not a number is absent.
  static Evaluation from_report(const nlohmann::json& report,
                                const std::vector<std::string>& tasks);

  /// Every task's accuracy, or nullopt when one is missing (the model is then no Pareto point).
  std::optional<std::vector<double>> accuracies() const;
};

/// What the run reports about one of the method's models.
struct ModelReport {
  std::string label;
  nlohmann::json metadata = nlohmann::json::object();  ///< what produced it (ResultModel::metadata)
  std::optional<Evaluation> evaluation;                ///< when the run has a task pool
  std::optional<std::string> path;                     ///< where it was saved, in the run directory
};

/// A number as results.csv and the log write it: 6 significant digits ("0.475", "1e-05").
std::string short_number(double d);

/// The log line of an evaluated model: "<prefix>: a=0.55 b=0.4 average=0.475".
std::string evaluation_line(const std::string& prefix, const Evaluation& evaluation,
                            const std::vector<std::string>& tasks);

/// results.csv: label, the metadata's keys (flattened as "a.b", in order of first appearance),
/// "<task>.accuracy" and "<task>.loss" per task, and "average.accuracy" when there are tasks.
std::string results_csv(const std::vector<ModelReport>& models,
                        const std::vector<std::string>& tasks);

/// The Pareto view of a run with two tasks or more.
struct ParetoView {
  double hypervolume = 0.0;        ///< of this run's points, over the reference 0 in every task
  std::vector<std::string> front;  ///< labels of this run's non-dominated models, in model order
  std::vector<PlotSeries> series;  ///< this run's points, then each compared run's (pareto.svg)
};

/// The Pareto view of `models` (those with an accuracy for every task), or nullopt when there are
/// fewer than two tasks or no such model. `sweep` joins this run's points with a line; each run of
/// `compare` is a series of its own, or a warning when it has no model with all of `tasks`.
std::optional<ParetoView> pareto_view(const std::vector<ModelReport>& models,
                                      const std::vector<std::string>& tasks,
                                      const std::string& method, bool sweep,
                                      const std::vector<ResolvedConfig::CompareRun>& compare,
                                      Logger& log);

/// Seconds spent in each part of the run (report.json "timings").
struct Timings {
  double plugins_s = 0.0;
  double load_s = 0.0;
  double merge_s = 0.0;  ///< Algorithm::run and each ResultModel::make
  double eval_s = 0.0;
  double save_s = 0.0;
};

/// Everything report.json records about a run.
struct RunRecord {
  const RunRequest& request;
  const ResolvedConfig& config;
  const nlohmann::json& resolved_config;  ///< resolved_config_json(...)
  const PluginHost& plugins;
  const std::vector<std::string>& tasks;
  const std::vector<ModelReport>& models;
  const nlohmann::json& info;  ///< Result::info
  bool sweep = false;          ///< Result::sweep
  Timings timings;
  double total_s = 0.0;
};

/// report.json's document. `extra` (the Pareto keys) is merged in at the top level.
nlohmann::json report_json(const RunRecord& record, const nlohmann::json& extra);

}  // namespace fusion::host
