#include "run_command.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <chrono>
#include <fstream>
#include <set>

#include "fusion/algorithm.hpp"
#include "fusion/checkpoint_stream.hpp"
#include "fusion/component.hpp"
#include "fusion/dtype.hpp"
#include "fusion/eval_cache.hpp"
#include "fusion/files.hpp"
#include "fusion/model_aware.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/version.hpp"
#include "distributed.hpp"
#include "fusion/distributed.hpp"
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
// With several processes only rank 0 writes (the run directory, its log, config.toml); the others
// log warnings and errors to stderr only.
json start_run(const RunRequest& request, const ResolvedConfig& config, Logger& log, const Communicator& comm,
               const std::string& backend) {
  if (comm.is_main()) {
    set_interruption_cleanup(config.run_dir, config.run_dir / "log.txt");  // SIGINT/SIGTERM from now on
    prepare_run_dir(config.run_dir);
    log.set_file(config.run_dir / "log.txt");
  }
  at::manual_seed(config.seed);
  at::set_num_threads(config.threads);
  log.info("fusion " + std::string(FUSION_VERSION_STRING) + ": " + request.config.string() +
           " -> " + config.run_dir.string() + " (device " + config.device.str() + ", " +
           dtype_name(config.dtype) + ", " + std::to_string(config.threads) + " threads, seed " +
           std::to_string(config.seed) + ")");
  if (comm.distributed())
    log.info(std::to_string(comm.world_size()) + " processes (" + backend + " backend" +
             (config.run.backend == "auto" ? " (auto)" : "") + ", timeout " +
             std::to_string(config.run.timeout_s) + " s): this is rank 0, the one that writes " +
             config.run_dir.string());
  if (!config.precision_note.empty()) log.info(config.precision_note);
  const ResolvedSections sections = resolved_sections(config);
  if (comm.is_main()) write_file_atomic(config.run_dir / "config.toml", resolved_config_toml(sections));
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
  settings.progress = config.run.progress && communicator(Context()).is_main();
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

// Whether `pool` evaluates a model as the SDK's TaskPool::evaluate does (it does not override it):
// then a model's report is its tasks' Task::evaluate reports, "average" and model_info, and the
// host may evaluate one task of a model on one rank. A pool with an evaluate() of its own may add
// keys or side effects: its models are evaluated
// whole, through it. Uses GCC's bound member function extension to read which function the pool's
// vtable holds; other compilers take every pool as overriding it.
bool evaluates_as_the_sdk(TaskPool& pool) {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpmf-conversions"
  struct Plain : TaskPool {
    std::vector<std::string> task_names() const override { return {}; }
    Task& task(const std::string& name) override { FUSION_FAIL("no task '", name, "'"); }
  } plain;
  using Evaluate = json (*)(TaskPool*, const Model&);
  json (TaskPool::*evaluate)(const Model&) = &TaskPool::evaluate;
  return (Evaluate)(pool.*evaluate) == (Evaluate)(plain.*evaluate);
#pragma GCC diagnostic pop
#else
  (void)pool;
  return false;
#endif
}

// Stage 4 over several processes. With a task pool that evaluates as the SDK does, the run's
// (model, task) pairs, in model-major order, are cut into one contiguous block per rank (their
// counts differ by one at most; a block boundary inside a model makes it once more: at most
// world − 1 makes more than in one process), each
// pair evaluated with Task::evaluate; a model's report is then put together as TaskPool::evaluate
// does (tasks in order, "average" summed in task order, model_info). Otherwise model i is evaluated
// whole by rank i mod world. The reports travel as JSON text (which keeps every double exactly), so
// they are those of one process. Rank 0 makes and saves every model when models are saved, and
// writes everything.
std::vector<ModelReport> evaluate_models_distributed(Result& result, const Components& c,
                                                     const ResolvedConfig& config, Logger& log, Timings& time,
                                                     const Communicator& comm) {
  const std::string& method = config.method.name();
  const size_t n_models = result.models.size();
  const size_t n_tasks = c.tasks.size();
  const bool by_pair = c.task_pool && n_tasks > 0 && evaluates_as_the_sdk(*c.task_pool);
  const auto world = static_cast<size_t>(comm.world_size()), rank = static_cast<size_t>(comm.rank());
  // The tasks of each model this rank evaluates (by_pair), or the models it evaluates whole.
  std::vector<std::vector<size_t>> tasks_here(n_models);
  std::vector<bool> whole_here(n_models, false);
  if (by_pair) {
    const size_t pairs = n_models * n_tasks;
    for (size_t p = rank * pairs / world; p < (rank + 1) * pairs / world; ++p) tasks_here[p / n_tasks].push_back(p % n_tasks);
    log.info("evaluation: " + std::to_string(n_models) + " model" + (n_models == 1 ? "" : "s") + " x " +
             std::to_string(n_tasks) + " task" + (n_tasks == 1 ? "" : "s") + " = " + std::to_string(pairs) +
             " (model, task) pairs over " + std::to_string(world) + " processes, " + std::to_string(pairs / world) +
             (pairs % world ? " or " + std::to_string(pairs / world + 1) : "") + " each");
  } else if (c.task_pool) {
    for (int64_t i : items_of_rank(static_cast<int64_t>(n_models), comm.rank(), comm.world_size()))
      whole_here[static_cast<size_t>(i)] = true;
    log.info("evaluation: " + std::to_string(n_models) + " model" + (n_models == 1 ? "" : "s") + " over " +
             std::to_string(world) + " processes, each evaluated whole by one (task pool '" + config.taskpool->name() +
             "' has an evaluate() of its own)");
  }
  json evaluated = json::object();  // model index → the task pool's report, or {task → Task::evaluate's, model_info}
  std::set<std::string> used_dirs;
  std::vector<std::optional<std::string>> paths(n_models);
  for (size_t i = 0; i < n_models; ++i) {
    const bool evaluate_here = whole_here[i] || !tasks_here[i].empty();
    const bool save_here = config.save_models && comm.is_main();
    ResultModel& rm = result.models[i];
    if (!evaluate_here && !save_here) {
      rm.make = nullptr;
      continue;
    }
    FUSION_ENSURE(rm.make, "method '", method, "' returned model '", rm.label, "' with nothing to make it");
    Stopwatch make_time;
    ConstModelPtr model = rm.make();
    time.merge_s += make_time.seconds();
    FUSION_ENSURE(model, "method '", method, "' made no model for '", rm.label, "'");
    if (evaluate_here) {
      Stopwatch t;
      // Mixed precision: evaluated through a copy in the compute dtype (the model is saved as it is).
      const ConstModelPtr evaluated_model =
          config.dtype == config.storage_dtype
              ? model
              : ConstModelPtr(model->with_parameters(model->parameters().to(config.device, config.dtype)));
      if (whole_here[i]) {
        evaluated[std::to_string(i)] = c.task_pool->evaluate(*evaluated_model);
      } else {
        json part = json::object();
        for (size_t k : tasks_here[i]) part[c.tasks[k]] = c.task_pool->task(c.tasks[k]).evaluate(*evaluated_model);
        part["model_info"] = model_info(*evaluated_model);
        evaluated[std::to_string(i)] = std::move(part);
      }
      time.eval_s += t.seconds();
    }
    if (save_here) {
      const std::string base = sanitize_label(rm.label);
      std::string dir = base;
      for (int k = 2; used_dirs.count(dir); ++k) dir = base + "_" + std::to_string(k);
      used_dirs.insert(dir);
      Stopwatch t;
      c.model_pool->save(*model, config.run_dir / "models" / dir);
      time.save_s += t.seconds();
      paths[i] = (fs::path("models") / dir).string();
      log.info("model " + std::to_string(i + 1) + "/" + std::to_string(n_models) + " '" + rm.label +
               "': saved to " + (config.run_dir / "models" / dir).string());
    }
    model.reset();
    rm.make = nullptr;
  }
  // Gather every rank's reports: their lengths, then the texts padded to the longest.
  const std::string text = evaluated.dump();
  at::Tensor length = at::full({1}, static_cast<int64_t>(text.size()), at::kLong);
  int64_t longest = 0;
  for (const at::Tensor& l : comm.all_gather(length)) longest = std::max(longest, l.item<int64_t>());
  at::Tensor mine_bytes = at::zeros({longest}, at::kByte);
  std::memcpy(mine_bytes.data_ptr<uint8_t>(), text.data(), text.size());
  std::vector<at::Tensor> all = comm.all_gather(mine_bytes);
  json gathered = json::object();
  for (const at::Tensor& b : all) {
    const auto* p = b.data_ptr<uint8_t>();
    const json part = json::parse(std::string(p, p + strnlen(reinterpret_cast<const char*>(p), b.numel())));
    for (const auto& [k, v] : part.items()) {
      if (!by_pair) {
        gathered[k] = v;
        continue;
      }
      json& model = gathered[k];
      for (const auto& [key, value] : v.items()) model[key] = value;
    }
  }
  std::vector<ModelReport> reports;
  for (size_t i = 0; i < n_models; ++i) {
    const ResultModel& rm = result.models[i];
    ModelReport report;
    report.label = rm.label;
    if (!rm.metadata.is_null()) report.metadata = rm.metadata;
    if (c.task_pool) {
      json fusionbench = gathered.at(std::to_string(i));
      if (by_pair) {
        // TaskPool::evaluate's report: the tasks, their mean accuracy and loss (summed in task order), model_info.
        double acc_sum = 0.0, loss_sum = 0.0;
        for (const std::string& task : c.tasks) {
          const json& r = fusionbench.at(task);
          acc_sum += r.at("accuracy").get<double>();
          loss_sum += r.at("loss").get<double>();
        }
        fusionbench["average"] = {{"accuracy", acc_sum / static_cast<double>(n_tasks)},
                                  {"loss", loss_sum / static_cast<double>(n_tasks)}};
      }
      report.evaluation = Evaluation::from_task_pool(std::move(fusionbench), c.tasks);
      log.info(evaluation_line("model " + std::to_string(i + 1) + "/" + std::to_string(n_models) + " '" +
                                   rm.label + "'",
                               *report.evaluation, c.tasks));
    }
    report.path = paths[i];
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
  // Several processes (torchrun's environment, or fusion run --nproc N): join the others first, so
  // that a peer that never comes is found before anything is loaded.
  std::shared_ptr<Communicator> comm;
  std::string backend;  // the one chosen ("auto" resolved)
  const std::optional<LaunchEnv> env = read_launch_env();
  if (env) {
    ConnectOptions co;
    co.backend = file.run.backend;
    co.timeout = std::chrono::seconds(file.run.timeout_s);
    co.cuda_device = file.run.device.rfind("cuda", 0) == 0 || (file.run.device == "auto" && cuda_device_count() > 0);
    comm = connect(*env, co);
    backend = resolved_backend(co);
    if (env->rank != 0) log.set_level(LogLevel::Warn);
  }
  struct Installed {
    explicit Installed(std::shared_ptr<Communicator> c) { set_communicator(std::move(c)); }
    ~Installed() { set_communicator(nullptr); }
  } installed(comm);
  const Communicator& world = communicator(Context());
  PluginHost plugins(log);
  {
    const Stopwatch t;
    load_plugins(plugins, file.run.plugins);
    time.plugins_s = t.seconds();
  }
  const ResolvedConfig config = [&] {
    ResolvedConfig c = resolve_config(file, plugins);
    // Over several processes, "auto" and "cuda" put each local rank on its own GPU.
    if (env && c.device.is_cuda() && (file.run.device == "auto" || file.run.device == "cuda"))
      c.device = rank_cuda_device(*env);
    return c;
  }();
  const json resolved = start_run(request, config, log, world, backend);

  // 2. Instantiate the components; the method's requirements are checked before any weight is read.
  Stopwatch load_time;
  Components components = instantiate(config, logger);
  time.load_s = load_time.seconds();

  // 3. Execute the method. When this process saves the models, a merge that streams from the files
  //    writes each model into an unnamed file of the run folder as it computes it, and the save
  //    links that file instead of writing it again (detail::OutputFile).
  struct OutputFolder {
    explicit OutputFolder(const fs::path& folder) { detail::set_output_folder(folder); }
    ~OutputFolder() { detail::set_output_folder(fs::path()); }
  } output_folder(config.save_models && world.is_main() ? config.run_dir : fs::path());
  const std::string& method = config.method.name();
  log.info("running " + method);
  Stopwatch merge_time;
  Result result = components.algorithm->run(*components.model_pool, components.task_pool.get(),
                                            components.method_context);
  time.merge_s = merge_time.seconds();
  FUSION_ENSURE(!result.models.empty(), "method '", method, "' returned no model");

  // 4. Evaluate the models: make, evaluate, save and drop each in turn.
  const std::vector<ModelReport> models =
      world.distributed() ? evaluate_models_distributed(result, components, config, log, time, world)
                          : evaluate_models(result, components, config, log, time);
  if (!world.is_main()) {
    world.barrier();  // rank 0 has written everything
    return;
  }

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
  world.barrier();
}

}  // namespace fusion::host
