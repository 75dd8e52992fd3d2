#include "run_command.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <set>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/dtype.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/files.hpp"
#include "fusion/model_aware.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/version.hpp"
#include "pareto_plot.hpp"
#include "reports.hpp"

namespace fusion::host {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Creates the run directory and proves it writable before anything is written into it.
void prepare_run_dir(const fs::path& dir) {
  const std::string key = run_key(&RunOptions::out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  FUSION_ENSURE(!ec, key, ": cannot create output folder '", dir.string(), "': ", ec.message());
  FUSION_ENSURE(fs::is_directory(dir, ec), key, ": '", dir.string(), "' is not a folder");
  fs::path probe = dir / (".fusion_write_test." + std::to_string(::getpid()));
  std::ofstream out(probe);
  bool ok = out.is_open() && static_cast<bool>(out << "x");
  out.close();
  fs::remove(probe, ec);
  FUSION_ENSURE(ok, key, ": output folder '", dir.string(), "' is not writable");
}

// Stage 1, last step: the run directory, its log, the run's seed and threads, and the resolved
// config (config.toml). Returns the resolved config for report.json.
json start_run(const RunRequest& request, const ResolvedConfig& config, Logger& log) {
  prepare_run_dir(config.run_dir);
  log.set_file(config.run_dir / "log.txt");
  at::manual_seed(config.seed);
  at::set_num_threads(config.threads);
  log.info("fusion " + std::string(FUSION_VERSION_STRING) + ": " + request.config.string() +
           " -> " + config.run_dir.string() + " (device " + config.device.str() + ", " +
           dtype_name(config.dtype) + ", " + std::to_string(config.threads) + " threads, seed " +
           std::to_string(config.seed) + ")");
  if (!config.precision_note.empty()) log.info(config.precision_note);
  const ResolvedSections sections = resolved_sections(config);
  write_file_atomic(config.run_dir / "config.toml", resolved_config_toml(sections));
  return resolved_config_json(sections);
}

// The run's component objects.
struct Components {
  std::unique_ptr<ModelPool> model_pool;
  std::unique_ptr<TaskPool> task_pool;  ///< null without a [taskpool]
  std::unique_ptr<Algorithm> algorithm;
  Context method_context;
  std::vector<std::string> tasks;  ///< the task pool's task names (none without one)
};

// Stage 2: the pools and the method, each made with its checked options; the task pool adapted to the
// model pool. What the method declared it needs is checked before any weight is read (the pools read
// nothing when they are made, and adapting reads config files only).
Components instantiate(const ResolvedConfig& config, const std::shared_ptr<Logger>& logger) {
  Context::Settings settings;
  settings.logger = logger;
  settings.device = config.device;
  settings.dtype = config.dtype;
  settings.seed = config.seed;
  settings.threads = config.threads;
  settings.run_dir = config.run_dir;
  settings.progress = config.run.progress;
  const Context base(settings);
  // Mixed precision: the pools keep float32 (weights, heads, batches), the method computes in
  // config.dtype. Otherwise every component shares one context.
  Context::Settings storage_settings = settings;
  storage_settings.dtype = config.storage_dtype;
  const Context storage = config.storage_dtype == config.dtype ? base : Context(storage_settings);
  Components c;
  c.model_pool = config.modelpool.component->model_pool(storage.with_config(config.modelpool.config));
  FUSION_ENSURE(c.model_pool, "model pool '", config.modelpool.name(), "' returned no object");
  if (config.taskpool) {
    c.task_pool = config.taskpool->component->task_pool(storage.with_config(config.taskpool->config));
    FUSION_ENSURE(c.task_pool, "task pool '", config.taskpool->name(), "' returned no object");
    // What the task pool takes from the models (an input size, a text tower), and what it refuses.
    adapt_to_models(*c.task_pool, *c.model_pool);
    // The memory it may keep test inputs in between the models it evaluates.
    set_eval_cache(*c.task_pool, config.run.eval_cache_mb * (int64_t{1} << 20));
    c.tasks = c.task_pool->task_names();
  }
  check_requirements(config.method.component->info, *c.model_pool, c.task_pool.get());
  c.method_context = base.with_config(config.method.config);
  c.algorithm = config.method.component->algorithm(c.method_context);
  FUSION_ENSURE(c.algorithm, "algorithm '", config.method.name(), "' returned no object");
  return c;
}

// Stage 4: each model of `result` in turn: made, evaluated (with a task pool), saved (when asked),
// dropped. Making counts as merge time.
std::vector<ModelReport> evaluate_models(Result& result, const Components& c,
                                         const ResolvedConfig& config, Logger& log, Timings& time) {
  const std::string& method = config.method.name();
  std::vector<ModelReport> reports;
  std::set<std::string> used_dirs;
  const size_t n_models = result.models.size();
  for (size_t i = 0; i < n_models; ++i) {
    ResultModel& rm = result.models[i];
    FUSION_ENSURE(rm.make, "method '", method, "' returned model '", rm.label,
                  "' with nothing to make it");
    Stopwatch make_time;
    ConstModelPtr model = rm.make();
    time.merge_s += make_time.seconds();
    FUSION_ENSURE(model, "method '", method, "' made no model for '", rm.label, "'");
    ModelReport report;
    report.label = rm.label;
    if (!rm.metadata.is_null()) report.metadata = rm.metadata;
    const std::string prefix = "model " + std::to_string(i + 1) + "/" + std::to_string(n_models) +
                               " '" + rm.label + "'";
    if (c.task_pool) {
      Stopwatch t;
      // Mixed precision: evaluated through a copy in the compute dtype (the model is saved as it is).
      json fusionbench = config.dtype == config.storage_dtype
                             ? c.task_pool->evaluate(*model)
                             : c.task_pool->evaluate(*model->with_parameters(
                                   model->parameters().to(config.device, config.dtype)));
      time.eval_s += t.seconds();
      report.evaluation = Evaluation::from_task_pool(std::move(fusionbench), c.tasks);
      log.info(evaluation_line(prefix, *report.evaluation, c.tasks));
    }
    if (config.save_models) {
      const std::string base = sanitize_label(rm.label);
      std::string dir = base;
      for (int k = 2; used_dirs.count(dir); ++k) dir = base + "_" + std::to_string(k);
      used_dirs.insert(dir);
      Stopwatch t;
      c.model_pool->save(*model, config.run_dir / "models" / dir);
      time.save_s += t.seconds();
      report.path = (fs::path("models") / dir).string();
      log.info(prefix + ": saved to " + (config.run_dir / "models" / dir).string());
    }
    model.reset();
    rm.make = nullptr;  // drops a model the result held
    reports.push_back(std::move(report));
  }
  return reports;
}

// Stage 5, the Pareto part: hypervolume, front and pareto.svg (two tasks or more), as report.json
// keys. A plot that cannot be drawn is a warning.
json write_pareto(const std::vector<ModelReport>& models, const std::vector<std::string>& tasks,
                  const ResolvedConfig& config, bool sweep, Logger& log) {
  json keys = json::object();
  const std::string& method = config.method.name();
  std::optional<ParetoView> view = pareto_view(models, tasks, method, sweep, config.compare, log);
  if (!view) return keys;
  keys["hypervolume"] = view->hypervolume;
  keys["pareto_front"] = view->front;
  try {
    write_pareto_plot(config.run_dir / "pareto.svg", tasks, view->series, method);
    keys["pareto_plot"] = "pareto.svg";
  } catch (const std::exception& e) {
    log.warn(std::string("pareto.svg not written: ") + e.what());
  }
  return keys;
}

}  // namespace

std::string sanitize_label(const std::string& label) {
  std::string out;
  for (char c : label) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
              c == '=';
    out += ok ? c : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "model";
  return out;
}

void run(const RunRequest& request, const std::shared_ptr<Logger>& logger) {
  const Stopwatch total;
  Logger& log = *logger;
  Timings time;

  // 1. Resolve the config: the file and its overrides, the plugins, each section checked against
  //    its component; then the run directory, its log and the resolved config.toml.
  const ConfigFile file = read_config(request);
  PluginHost plugins(log);
  {
    const Stopwatch t;
    load_plugins(plugins, file.run.plugins);
    time.plugins_s = t.seconds();
  }
  const ResolvedConfig config = resolve_config(file, plugins);
  const json resolved = start_run(request, config, log);

  // 2. Instantiate the components; the method's requirements are checked before any weight is read.
  Stopwatch load_time;
  Components components = instantiate(config, logger);
  time.load_s = load_time.seconds();

  // 3. Execute the method.
  const std::string& method = config.method.name();
  log.info("running " + method);
  Stopwatch merge_time;
  Result result = components.algorithm->run(*components.model_pool, components.task_pool.get(),
                                            components.method_context);
  time.merge_s = merge_time.seconds();
  FUSION_ENSURE(!result.models.empty(), "method '", method, "' returned no model");

  // 4. Evaluate the models: make, evaluate, save and drop each in turn.
  const std::vector<ModelReport> models = evaluate_models(result, components, config, log, time);

  // 5. Write the reports: results.csv, the Pareto view, and report.json last, atomically.
  const std::vector<std::string>& tasks = components.tasks;
  write_file_atomic(config.run_dir / "results.csv", results_csv(models, tasks));
  const json pareto = write_pareto(models, tasks, config, result.sweep, log);
  RunRecord record{request, config, resolved, plugins, tasks, models, result.info, result.sweep};
  record.timings = time;
  record.total_s = total.seconds();
  write_file_atomic(config.run_dir / "report.json", report_json(record, pareto).dump(2) + "\n");
  log.info("done in " + short_number(total.seconds()) + " s: " +
           (config.run_dir / "report.json").string());
}

}  // namespace fusion::host
