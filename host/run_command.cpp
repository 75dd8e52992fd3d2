#include "run_command.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "fusion/algorithm.hpp"
#include "fusion/component.hpp"
#include "fusion/dtype.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/pareto.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/task_pool.hpp"
#include "fusion/version.hpp"

#if defined(FUSION_HAVE_C10_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace fusion::host {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::vector<std::string> kSections = {"run", "method", "modelpool", "taskpool"};

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

json value_to_json(const Value& v) {
  struct Visitor {
    json operator()(bool b) const { return b; }
    json operator()(int64_t i) const { return i; }
    json operator()(double d) const { return d; }
    json operator()(const std::string& s) const { return s; }
    json operator()(const std::vector<double>& l) const { return l; }
    json operator()(const std::vector<std::string>& l) const { return l; }
    json operator()(const std::vector<std::vector<double>>& m) const { return m; }
    json operator()(const StringMap& m) const {
      json out = json::object();
      for (const auto& [k, s] : m) out[k] = s;
      return out;
    }
  };
  return std::visit(Visitor{}, v);
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_number(double d) {
  std::ostringstream out;
  out.precision(6);
  out << d;
  return out.str();
}

// Flattens a JSON object into "a.b" → scalar text, in key order.
void flatten(const json& j, const std::string& prefix, std::vector<std::pair<std::string, std::string>>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    return;
  }
  std::string text;
  if (j.is_string()) text = j.get<std::string>();
  else if (j.is_number_float()) text = csv_number(j.get<double>());
  else text = j.dump();
  out.emplace_back(prefix, text);
}

// Creates the run directory and proves it writable before anything is written into it.
void prepare_run_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  FUSION_ENSURE(!ec, "run.out_dir: cannot create output folder '", dir.string(), "': ",
                ec.message());
  FUSION_ENSURE(fs::is_directory(dir, ec), "run.out_dir: '", dir.string(), "' is not a folder");
  fs::path probe = dir / (".fusion_write_test." + std::to_string(::getpid()));
  {
    std::ofstream out(probe);
    bool ok = out.is_open() && static_cast<bool>(out << "x");
    out.close();
    fs::remove(probe, ec);
    FUSION_ENSURE(ok, "run.out_dir: output folder '", dir.string(), "' is not writable");
  }
}

// Reads another run's report.json for the Pareto plot (`[run] compare`).
json read_compare_report(const std::string& path, size_t index) {
  std::string where = "run.compare[" + std::to_string(index) + "]";
  std::ifstream in(path);
  FUSION_ENSURE(in.is_open(), where, ": cannot read report '", path, "'");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    FUSION_FAIL(where, ": '", path, "' is not a report.json (", e.what(), ")");
  }
  FUSION_ENSURE(j.is_object() && j.contains("models") && j["models"].is_array(), where, ": '",
                path, "' is not a fusion report.json (no \"models\" list)");
  return j;
}

// Accuracy vector of a FusionBench-shaped evaluation report for `tasks`; empty if any is missing.
std::vector<double> accuracies(const json& report, const std::vector<std::string>& tasks) {
  std::vector<double> out;
  if (!report.is_object()) return {};
  for (const auto& t : tasks) {
    auto it = report.find(t);
    if (it == report.end() || !it->is_object() || !it->contains("accuracy") ||
        !(*it)["accuracy"].is_number())
      return {};
    out.push_back((*it)["accuracy"].get<double>());
  }
  return out;
}

std::string device_name(const at::Device& d) { return d.str(); }

}  // namespace

bool cuda_compiled() { return at::detail::getCUDAHooks().hasCUDART(); }

int cuda_device_count() {
  try {
    return at::detail::getCUDAHooks().getNumGPUs();
  } catch (...) {
    return 0;
  }
}

Schema run_schema() {
  Schema s;
  s.add_optional("out_dir", ValueType::String,
                 "output folder of the run (default: outputs/<method name>)");
  s.add("device", std::string("auto"),
        "\"auto\" (CUDA when LibTorch has it and a GPU is there, else CPU), \"cpu\", \"cuda\" or "
        "\"cuda:N\"");
  s.add("dtype", std::string("float32"), "floating-point type of the models")
      .one_of({"float32", "float16", "bfloat16", "float64"});
  s.add("seed", int64_t{42}, "seed of every random generator").range(0, std::nullopt);
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  s.add("threads", static_cast<int64_t>(hw), "intra-op CPU threads (default: all cores)")
      .range(1, 4096);
  s.add("plugins", std::vector<std::string>{},
        "more plugin libraries or folders to load, after the default search path");
  s.add("progress", true, "show progress bars");
  s.add_optional("save_models", ValueType::Bool,
                 "save every resulting model under models/ (default: false with a [taskpool], "
                 "models are always saved without one)");
  s.add("compare", std::vector<std::string>{},
        "report.json files of other runs to draw beside this one in pareto.svg");
  return s;
}

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

at::Device resolve_device(const std::string& spec) {
  const int gpus = cuda_device_count();
  if (spec == "cpu") return at::Device(at::kCPU);
  if (spec == "auto") return gpus > 0 ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  int index = -1;
  if (spec == "cuda") {
    index = 0;
  } else if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 && spec.size() < 9 &&
             std::all_of(spec.begin() + 5, spec.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    index = std::stoi(spec.substr(5));
  } else {
    FUSION_FAIL("run.device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"", spec, "\"");
  }
  FUSION_ENSURE(cuda_compiled(), "run.device: \"", spec,
                "\" asked for, but this LibTorch was built without CUDA (use \"cpu\" or \"auto\")");
  FUSION_ENSURE(gpus > 0, "run.device: \"", spec, "\" asked for, but no CUDA GPU is visible");
  FUSION_ENSURE(index < gpus, "run.device: \"", spec, "\" asked for, but only ", gpus,
                " CUDA GPU(s) are visible (cuda:0 … cuda:", gpus - 1, ")");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void run(const RunRequest& request, const std::shared_ptr<Logger>& logger) {
  Stopwatch total;
  Logger& log = *logger;

  // 1. The configuration: file, overrides, sections, [run].
  RunConfig rc = RunConfig::from_file(request.config);
  for (const auto& o : request.overrides) rc.apply_override(o);
  const std::string origin = request.config.string();
  for (const auto& s : rc.sections()) {
    if (std::find(kSections.begin(), kSections.end(), s) == kSections.end())
      FUSION_FAIL(origin, ": unknown section [", s, "]; known sections: [run], [method], "
                  "[modelpool], [taskpool]");
  }
  const Config run_cfg = Config::validate("run", rc.section("run"), run_schema(), {});
  auto section_values = [&](const std::string& section) {
    auto values = rc.section(section);
    auto it = values.find("name");
    if (it != values.end() && !std::holds_alternative<std::string>(it->second))
      FUSION_FAIL(section, ".name: expected string, got ", type_name(type_of(it->second)), " ",
                  to_toml_string(it->second));
    return values;
  };
  FUSION_ENSURE(rc.has_section("method"), origin,
                ": no [method] section (it names the merging method: [method] name = \"...\")");
  FUSION_ENSURE(rc.has_section("modelpool"), origin,
                ": no [modelpool] section (it names the models: [modelpool] name = \"...\")");
  auto method_values = section_values("method");
  auto pool_values = section_values("modelpool");
  std::map<std::string, Value> task_values;
  const bool have_tasks = rc.has_section("taskpool");
  if (have_tasks) task_values = section_values("taskpool");

  // 2. Plugins: the default search path, then [run] plugins.
  Stopwatch plugin_time;
  PluginHost plugins(log);
  plugins.add_builtins();
  plugins.load_default();
  {
    auto extra = run_cfg.get<std::vector<std::string>>("plugins");
    for (size_t i = 0; i < extra.size(); ++i) {
      std::error_code ec;
      std::string where = "run.plugins[" + std::to_string(i) + "]";
      FUSION_ENSURE(fs::exists(extra[i], ec), where, ": '", extra[i], "' does not exist");
      size_t before = plugins.refused().size();
      plugins.load_path(extra[i]);
      if (plugins.refused().size() > before) {
        const auto& r = plugins.refused()[before];
        FUSION_FAIL(where, ": plugin ", r.file.string(), " refused: ", r.reason);
      }
    }
  }
  const double plugins_s = plugin_time.seconds();

  // 3. Components and their checked options.
  const std::string method_name = rc.component_name("method");
  const Component& method = plugins.require(ComponentKind::Algorithm, "method", method_name);
  const Config method_cfg = Config::validate("method", method_values, method.info.schema);
  const Component& pool = plugins.require(ComponentKind::ModelPool, "modelpool",
                                          rc.component_name("modelpool"));
  const Config pool_cfg = Config::validate("modelpool", pool_values, pool.info.schema);
  const Component* taskpool = nullptr;
  Config task_cfg;
  if (have_tasks) {
    taskpool = &plugins.require(ComponentKind::TaskPool, "taskpool", rc.component_name("taskpool"));
    task_cfg = Config::validate("taskpool", task_values, taskpool->info.schema);
  }

  // 4. [run]: device, dtype, seed, threads, outputs.
  const at::Device device = resolve_device(run_cfg.get<std::string>("device"));
  const at::ScalarType dtype = parse_dtype(run_cfg.get<std::string>("dtype"), "run.dtype");
  const auto seed = static_cast<uint64_t>(run_cfg.get<int64_t>("seed"));
  const auto threads = static_cast<int>(run_cfg.get<int64_t>("threads"));
  const bool save_models =
      run_cfg.has("save_models") ? run_cfg.get<bool>("save_models") : !have_tasks;
  FUSION_ENSURE(save_models || have_tasks, "run.save_models: false without a [taskpool] would "
                "produce nothing (no evaluation, no saved model)");
  const fs::path run_dir = run_cfg.has("out_dir") ? fs::path(run_cfg.get<std::string>("out_dir"))
                                                  : fs::path("outputs") / method_name;
  std::vector<json> compare_reports;
  {
    auto compare = run_cfg.get<std::vector<std::string>>("compare");
    for (size_t i = 0; i < compare.size(); ++i)
      compare_reports.push_back(read_compare_report(compare[i], i));
  }

  // 5. The run directory, its log and the resolved config.
  prepare_run_dir(run_dir);
  log.set_file(run_dir / "log.txt");
  at::manual_seed(seed);
  at::set_num_threads(threads);
  log.info("fusion " + std::string(FUSION_VERSION_STRING) + ": " + request.config.string() +
           " -> " + run_dir.string() + " (device " + device_name(device) + ", " +
           dtype_name(dtype) + ", " + std::to_string(threads) + " threads, seed " +
           std::to_string(seed) + ")");

  std::vector<std::pair<std::string, Config>> resolved = {{"run", run_cfg},
                                                          {"method", method_cfg},
                                                          {"modelpool", pool_cfg}};
  if (taskpool) resolved.emplace_back("taskpool", task_cfg);
  RunConfig resolved_doc = rc;
  json config_json = json::object();
  for (const auto& [section, cfg] : resolved) {
    json& sj = config_json[section];
    sj = json::object();
    std::string name = rc.component_name(section);
    if (section != "run") sj["name"] = name;
    for (const auto& [key, value] : cfg.values()) {
      resolved_doc.apply_override(section + "." + key + "=" + to_toml_string(value));
      sj[key] = value_to_json(value);
    }
  }
  // The effective values of [run] options whose default is computed.
  resolved_doc.apply_override("run.out_dir=" + to_toml_string(Value(run_dir.string())));
  resolved_doc.apply_override(std::string("run.save_models=") + (save_models ? "true" : "false"));
  config_json["run"]["out_dir"] = run_dir.string();
  config_json["run"]["save_models"] = save_models;
  write_file_atomic(run_dir / "config.toml", resolved_doc.to_toml());

  // 6. The components.
  Stopwatch load_time;
  Context::Settings settings;
  settings.logger = logger;
  settings.device = device;
  settings.dtype = dtype;
  settings.seed = seed;
  settings.threads = threads;
  settings.run_dir = run_dir;
  settings.progress = run_cfg.get<bool>("progress");
  const Context base(settings);
  std::unique_ptr<ModelPool> model_pool = pool.model_pool(base.with_config(pool_cfg));
  FUSION_ENSURE(model_pool, "model pool '", pool.info.name, "' returned no object");
  std::unique_ptr<TaskPool> task_pool;
  if (taskpool) {
    task_pool = taskpool->task_pool(base.with_config(task_cfg));
    FUSION_ENSURE(task_pool, "task pool '", taskpool->info.name, "' returned no object");
  }
  // What the method declared it needs, checked before any weight is read.
  check_requirements(method.info, *model_pool, task_pool.get());
  const Context method_ctx = base.with_config(method_cfg);
  std::unique_ptr<Algorithm> algorithm = method.algorithm(method_ctx);
  FUSION_ENSURE(algorithm, "algorithm '", method.info.name, "' returned no object");
  double load_s = load_time.seconds();

  // 7. The method.
  log.info("running " + method_name);
  Stopwatch merge_time;
  Result result = algorithm->run(*model_pool, task_pool.get(), method_ctx);
  double merge_s = merge_time.seconds();
  FUSION_ENSURE(!result.models.empty(), "method '", method_name, "' returned no model");

  // 8. Each model in turn: make, evaluate, save, drop.
  std::vector<std::string> task_names = task_pool ? task_pool->task_names() : std::vector<std::string>{};
  double eval_s = 0.0, save_s = 0.0;
  json models = json::array();
  std::set<std::string> used_dirs;
  const size_t n_models = result.models.size();
  for (size_t i = 0; i < n_models; ++i) {
    ResultModel& rm = result.models[i];
    FUSION_ENSURE(rm.make, "method '", method_name, "' returned model '", rm.label,
                  "' with nothing to make it");
    Stopwatch make_time;
    ModelPtr model = rm.make();
    merge_s += make_time.seconds();
    FUSION_ENSURE(model, "method '", method_name, "' made no model for '", rm.label, "'");
    json entry = {{"label", rm.label},
                  {"metadata", rm.metadata.is_null() ? json::object() : rm.metadata},
                  {"report", nullptr},
                  {"path", nullptr}};
    std::string prefix = "model " + std::to_string(i + 1) + "/" + std::to_string(n_models) +
                         " '" + rm.label + "'";
    if (task_pool) {
      Stopwatch t;
      entry["report"] = task_pool->evaluate(*model);
      eval_s += t.seconds();
      std::ostringstream msg;
      msg << prefix << ":";
      for (const auto& name : task_names) {
        const json& r = entry["report"];
        if (r.contains(name) && r[name].contains("accuracy"))
          msg << ' ' << name << '=' << csv_number(r[name]["accuracy"].get<double>());
      }
      if (entry["report"].contains("average"))
        msg << " average=" << csv_number(entry["report"]["average"].value("accuracy", 0.0));
      log.info(msg.str());
    }
    if (save_models) {
      std::string dir = sanitize_label(rm.label);
      for (int k = 2; used_dirs.count(dir); ++k) dir = sanitize_label(rm.label) + "_" + std::to_string(k);
      used_dirs.insert(dir);
      Stopwatch t;
      model_pool->save(*model, run_dir / "models" / dir);
      save_s += t.seconds();
      entry["path"] = (fs::path("models") / dir).string();
      log.info(prefix + ": saved to " + (run_dir / "models" / dir).string());
    }
    model.reset();
    rm.make = nullptr;  // drops a model the result held
    models.push_back(std::move(entry));
  }

  // 9. results.csv
  {
    std::vector<std::string> meta_cols;
    std::vector<std::vector<std::pair<std::string, std::string>>> flat(models.size());
    for (size_t i = 0; i < models.size(); ++i) {
      flatten(models[i]["metadata"], "", flat[i]);
      for (const auto& kv : flat[i])
        if (std::find(meta_cols.begin(), meta_cols.end(), kv.first) == meta_cols.end())
          meta_cols.push_back(kv.first);
    }
    std::ostringstream csv;
    csv << "label";
    for (const auto& c : meta_cols) csv << ',' << csv_field(c);
    for (const auto& t : task_names) csv << ',' << csv_field(t + ".accuracy") << ',' << csv_field(t + ".loss");
    if (!task_names.empty()) csv << ",average.accuracy";
    csv << '\n';
    for (size_t i = 0; i < models.size(); ++i) {
      csv << csv_field(models[i]["label"].get<std::string>());
      for (const auto& c : meta_cols) {
        auto it = std::find_if(flat[i].begin(), flat[i].end(), [&](const auto& kv) { return kv.first == c; });
        csv << ',' << (it == flat[i].end() ? "" : csv_field(it->second));
      }
      const json& r = models[i]["report"];
      for (const auto& t : task_names) {
        auto num = [&](const char* k) {
          return r.is_object() && r.contains(t) && r[t].contains(k) && r[t][k].is_number()
                     ? csv_number(r[t][k].get<double>()) : std::string();
        };
        csv << ',' << num("accuracy") << ',' << num("loss");
      }
      if (!task_names.empty()) {
        bool has = r.is_object() && r.contains("average") && r["average"].contains("accuracy");
        csv << ',' << (has ? csv_number(r["average"]["accuracy"].get<double>()) : std::string());
      }
      csv << '\n';
    }
    write_file_atomic(run_dir / "results.csv", csv.str());
  }

  // 10. The Pareto view: hypervolume and pareto.svg (two tasks or more).
  json report = json::object();
  if (task_names.size() >= 2) {
    std::vector<std::vector<double>> points;
    std::vector<std::string> labels;
    for (const auto& m : models) {
      auto acc = accuracies(m["report"], task_names);
      if (acc.size() == task_names.size()) {
        points.push_back(acc);
        labels.push_back(m["label"].get<std::string>());
      }
    }
    if (!points.empty()) {
      report["hypervolume"] = hypervolume(points, std::vector<double>(task_names.size(), 0.0));
      json front = json::array();
      for (size_t idx : pareto_front(points)) front.push_back(labels[idx]);
      report["pareto_front"] = front;
      std::vector<PlotSeries> series;
      // A line only through the points of one curve (Result::sweep), in the method's order.
      series.push_back({method_name, points, result.sweep && points.size() > 1});
      for (size_t i = 0; i < compare_reports.size(); ++i) {
        const json& other = compare_reports[i];
        PlotSeries s;
        s.name = other.contains("method") && other["method"].is_string()
                     ? other["method"].get<std::string>()
                     : fs::path(run_cfg.get<std::vector<std::string>>("compare")[i]).parent_path().filename().string();
        for (const auto& m : other["models"]) {
          auto acc = m.is_object() && m.contains("report") ? accuracies(m["report"], task_names)
                                                           : std::vector<double>{};
          if (acc.size() == task_names.size()) s.points.push_back(acc);
        }
        if (s.points.empty()) {
          log.warn("run.compare[" + std::to_string(i) + "]: no model with accuracies for the tasks of this run; not plotted");
          continue;
        }
        s.joined = other.value("sweep", false) && s.points.size() > 1;
        series.push_back(std::move(s));
      }
      try {
        write_pareto_plot(run_dir / "pareto.svg", task_names, series, method_name);
        report["pareto_plot"] = "pareto.svg";
      } catch (const std::exception& e) {
        log.warn(std::string("pareto.svg not written: ") + e.what());
      }
    }
  }

  // 11. report.json, last and atomically.
  json plugins_json = json::array(), refused_json = json::array();
  for (const auto& p : plugins.loaded())
    plugins_json.push_back({{"file", p.file.string()}, {"name", p.name}, {"version", p.version}});
  for (const auto& r : plugins.refused())
    refused_json.push_back({{"file", r.file.string()}, {"reason", r.reason}});
  json timings = {{"plugins_s", plugins_s}, {"load_s", load_s}, {"merge_s", merge_s},
                  {"eval_s", eval_s},       {"save_s", save_s}, {"total_s", total.seconds()}};
  json out = {{"fusion_version", FUSION_VERSION_STRING},
              {"command", request.command_line},
              {"method", method_name},
              {"modelpool", rc.component_name("modelpool")},
              {"taskpool", taskpool ? json(rc.component_name("taskpool")) : json(nullptr)},
              {"config", config_json},
              {"device", device_name(device)},
              {"dtype", dtype_name(dtype)},
              {"threads", threads},
              {"seed", seed},
              {"timings", timings},
              {"peak_rss_mb", peak_rss_mb()},
              {"omp_wait_policy", std::getenv("OMP_WAIT_POLICY") ? json(std::getenv("OMP_WAIT_POLICY")) : json(nullptr)},
              {"tasks", task_names},
              {"plugins", plugins_json},
              {"refused_plugins", refused_json},
              {"info", result.info},
              {"sweep", result.sweep},
              {"models", models}};
#if defined(FUSION_HAVE_C10_CUDA)
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    out["cuda_peak_memory_mb"] =
        static_cast<double>(
            stats.allocated_bytes[static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE)].peak) /
        (1024.0 * 1024.0);
  }
#endif
  for (auto it = report.begin(); it != report.end(); ++it) out[it.key()] = it.value();
  write_file_atomic(run_dir / "report.json", out.dump(2) + "\n");
  log.info("done in " + csv_number(total.seconds()) + " s: " + (run_dir / "report.json").string());
}

}  // namespace fusion::host
