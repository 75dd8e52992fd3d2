#include "reports.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <utility>

#include "fusion/classification.hpp"
#include "fusion/dtype.hpp"
#include "fusion/error.hpp"
#include "fusion/pareto.hpp"
#include "fusion/version.hpp"
#include "startup.hpp"

#if defined(FUSION_HAVE_C10_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace fusion::host {

using json = nlohmann::json;

namespace {

// Flattens a JSON object into "a.b" → scalar text, in key order.
void flatten(const json& j, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    return;
  }
  std::string text;
  if (j.is_string()) text = j.get<std::string>();
  else if (j.is_number_float()) text = short_number(j.get<double>());
  else text = j.dump();
  out.emplace_back(prefix, text);
}

// The scores of `entry` ({"accuracy", "loss"}); with `strict`, an accuracy that is not a number is
// an error naming `what`.
TaskScores scores_of(const json& entry, bool strict, const std::string& what) {
  TaskScores s;
  if (!entry.is_object()) return s;
  auto number = [&](const char* key) -> std::optional<double> {
    auto it = entry.find(key);
    if (it == entry.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  s.accuracy = number("accuracy");
  s.loss = number("loss");
  if (strict && !s.accuracy && entry.contains("accuracy"))
    FUSION_FAIL("the task pool's report of ", what, " has an accuracy that is not a number: ",
                entry["accuracy"].dump());
  return s;
}

Evaluation evaluation_of(json report, const std::vector<std::string>& tasks, bool strict) {
  Evaluation e;
  for (const auto& t : tasks) {
    auto it = report.is_object() ? report.find(t) : report.end();
    e.tasks.push_back(it == report.end() ? TaskScores{}
                                         : scores_of(*it, strict, "task '" + t + "'"));
  }
  if (report.is_object() && report.contains("average")) {
    FUSION_ENSURE(!strict || report["average"].is_object(),
                  "the task pool's report has an \"average\" that is not an object: ",
                  report["average"].dump());
    e.average = scores_of(report["average"], strict, "the average");
  }
  e.fusionbench = std::move(report);
  return e;
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace

std::string short_number(double d) {
  std::ostringstream out;
  out.precision(6);
  out << d;
  return out.str();
}

Evaluation Evaluation::from_task_pool(json report, const std::vector<std::string>& tasks) {
  return evaluation_of(std::move(report), tasks, true);
}

Evaluation Evaluation::from_report(const json& report, const std::vector<std::string>& tasks) {
  return evaluation_of(report, tasks, false);
}

std::optional<std::vector<double>> Evaluation::accuracies() const {
  std::vector<double> out;
  for (const auto& t : tasks) {
    if (!t.accuracy) return std::nullopt;
    out.push_back(*t.accuracy);
  }
  return out;
}

std::string evaluation_line(const std::string& prefix, const Evaluation& evaluation,
                            const std::vector<std::string>& tasks) {
  std::ostringstream msg;
  msg << prefix << ":";
  for (size_t i = 0; i < tasks.size(); ++i)
    if (const auto& accuracy = evaluation.tasks[i].accuracy)
      msg << ' ' << tasks[i] << '=' << short_number(*accuracy);
  // An "average" without an accuracy reads 0, as it always has.
  if (evaluation.average)
    msg << " average=" << short_number(evaluation.average->accuracy.value_or(0.0));
  return msg.str();
}

std::string results_csv(const std::vector<ModelReport>& models,
                        const std::vector<std::string>& tasks) {
  std::vector<std::string> meta_cols;
  std::vector<std::vector<std::pair<std::string, std::string>>> flat(models.size());
  for (size_t i = 0; i < models.size(); ++i) {
    flatten(models[i].metadata, "", flat[i]);
    for (const auto& kv : flat[i])
      if (std::find(meta_cols.begin(), meta_cols.end(), kv.first) == meta_cols.end())
        meta_cols.push_back(kv.first);
  }
  auto cell = [](const std::optional<double>& d) { return d ? short_number(*d) : std::string(); };
  std::ostringstream csv;
  csv << "label";
  for (const auto& c : meta_cols) csv << ',' << csv_field(c);
  for (const auto& t : tasks) csv << ',' << csv_field(t + ".accuracy") << ',' << csv_field(t + ".loss");
  if (!tasks.empty()) csv << ",average.accuracy";
  csv << '\n';
  for (size_t i = 0; i < models.size(); ++i) {
    csv << csv_field(models[i].label);
    for (const auto& c : meta_cols) {
      auto it = std::find_if(flat[i].begin(), flat[i].end(),
                             [&](const auto& kv) { return kv.first == c; });
      csv << ',' << (it == flat[i].end() ? "" : csv_field(it->second));
    }
    const Evaluation* e = models[i].evaluation ? &*models[i].evaluation : nullptr;
    for (size_t t = 0; t < tasks.size(); ++t)
      csv << ',' << (e ? cell(e->tasks[t].accuracy) : "") << ','
          << (e ? cell(e->tasks[t].loss) : "");
    if (!tasks.empty()) csv << ',' << (e && e->average ? cell(e->average->accuracy) : "");
    csv << '\n';
  }
  return csv.str();
}

std::optional<ParetoView> pareto_view(const std::vector<ModelReport>& models,
                                      const std::vector<std::string>& tasks,
                                      const std::string& method, bool sweep,
                                      const std::vector<ResolvedConfig::CompareRun>& compare,
                                      Logger& log) {
  if (tasks.size() < 2) return std::nullopt;
  std::vector<std::vector<double>> points;
  std::vector<std::string> labels;
  for (const auto& m : models) {
    if (!m.evaluation) continue;
    if (auto acc = m.evaluation->accuracies()) {
      points.push_back(std::move(*acc));
      labels.push_back(m.label);
    }
  }
  if (points.empty()) return std::nullopt;
  ParetoView view;
  view.hypervolume = hypervolume(points, std::vector<double>(tasks.size(), 0.0));
  for (size_t idx : pareto_front(points)) view.front.push_back(labels[idx]);
  // A line only through the points of one curve (Result::sweep), in the method's order.
  const bool joined = sweep && points.size() > 1;
  view.series.push_back({method, std::move(points), joined});
  for (size_t i = 0; i < compare.size(); ++i) {
    const json& other = compare[i].report;
    PlotSeries s;
    s.name = compare[i].name;
    for (const auto& m : other["models"]) {
      if (!(m.is_object() && m.contains("report"))) continue;
      if (auto acc = Evaluation::from_report(m["report"], tasks).accuracies())
        s.points.push_back(std::move(*acc));
    }
    if (s.points.empty()) {
      log.warn(run_key(&RunOptions::compare) + "[" + std::to_string(i) +
               "]: no model with accuracies for the tasks of this run; not plotted");
      continue;
    }
    s.joined = other.value("sweep", false) && s.points.size() > 1;
    view.series.push_back(std::move(s));
  }
  return view;
}

json report_json(const RunRecord& r, const json& extra) {
  const ResolvedConfig& config = r.config;
  json plugins = json::array(), refused = json::array();
  for (const auto& p : r.plugins.loaded())
    plugins.push_back({{"file", p.file.string()}, {"name", p.name}, {"version", p.version}});
  for (const auto& p : r.plugins.refused())
    refused.push_back({{"file", p.file.string()}, {"reason", p.reason}});
  json models = json::array();
  for (const auto& m : r.models)
    models.push_back({{"label", m.label},
                      {"metadata", m.metadata},
                      {"report", m.evaluation ? m.evaluation->fusionbench : json(nullptr)},
                      {"path", m.path ? json(*m.path) : json(nullptr)}});
  const Timings& t = r.timings;
  json timings = {{"plugins_s", t.plugins_s}, {"load_s", t.load_s}, {"merge_s", t.merge_s},
                  {"eval_s", t.eval_s},       {"save_s", t.save_s}, {"total_s", r.total_s}};
  const char* omp = std::getenv("OMP_WAIT_POLICY");
  json out = {{"fusion_version", FUSION_VERSION_STRING},
              {"command", r.request.command_line},
              {"method", config.method.name()},
              {"modelpool", config.modelpool.name()},
              {"taskpool", config.taskpool ? json(config.taskpool->name()) : json(nullptr)},
              {"config", r.resolved_config},
              {"device", config.device.str()},
              {"dtype", dtype_name(config.dtype)},
              {"threads", config.threads},
              {"seed", config.seed},
              {"timings", timings},
              {"peak_rss_mb", peak_rss_mb()},
              {"omp_wait_policy", omp ? json(omp) : json(nullptr)},
              {"blas", blas_kernels().describe()},
              {"tasks", r.tasks},
              {"plugins", plugins},
              {"refused_plugins", refused},
              {"info", r.info},
              {"sweep", r.sweep},
              {"models", models}};
#if defined(FUSION_HAVE_C10_CUDA)
  if (config.device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(config.device.index());
    out["cuda_peak_memory_mb"] =
        static_cast<double>(
            stats.allocated_bytes[static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE)].peak) /
        (1024.0 * 1024.0);
  }
#endif
  for (auto it = extra.begin(); it != extra.end(); ++it) out[it.key()] = it.value();
  return out;
}

}  // namespace fusion::host
