#include "run_config.hpp"

#include <ATen/detail/CUDAHooksInterface.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "fusion/dtype.hpp"
#include "fusion/error.hpp"
#include "precision.hpp"

namespace fusion::host {

namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t hardware_threads() {
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  const int64_t ranks = local ? std::atoll(local) : 1;
  return ranks > 1 ? std::max<int64_t>(1, cores / ranks) : cores;
}

void RunOptions::bind(Options<RunOptions>& o) {
  o("out_dir", &RunOptions::out_dir, "output folder of the run (default: outputs/<method name>)");
  o("device", &RunOptions::device,
    "\"auto\" (CUDA when LibTorch has it and a GPU is there, else CPU), \"cpu\", \"cuda\" or "
    "\"cuda:N\"");
  o("dtype", &RunOptions::dtype,
    "floating-point type of the models; \"bfloat16\" (\"float16\" on CUDA) is mixed precision: weights, "
    "merges and saved models in float32, the network's GEMMs in the 16-bit type (float32 where the CPU has no "
    "bfloat16 instructions)")
      .one_of({"float32", "float16", "bfloat16", "float64"});
  o("seed", &RunOptions::seed, "seed of every random generator").min(0);
  o("threads", &RunOptions::threads, "intra-op CPU threads (default: all cores)").range(1, 4096);
  o("plugins", &RunOptions::plugins,
    "more plugin libraries or folders to load, after the default search path");
  o("progress", &RunOptions::progress, "show progress bars");
  o("save_models", &RunOptions::save_models,
    "save every resulting model under models/ (default: false with a [taskpool], models are "
    "always saved without one)");
  o("compare", &RunOptions::compare,
    "report.json files of other runs to draw beside this one in pareto.svg");
  o("eval_cache_mb", &RunOptions::eval_cache_mb,
    "MiB of decoded and preprocessed test images the task pool keeps in memory from one evaluated model to the "
    "next (a Pareto set, a λ sweep), so each is decoded once per run; what does not fit is decoded for every "
    "model, with the same results (0: none)")
      .range(0, int64_t{1} << 30);
  o("backend", &RunOptions::backend,
    "how the processes of a run over several (fusion run --nproc N, or torchrun's RANK/WORLD_SIZE/MASTER_ADDR/"
    "MASTER_PORT) talk: \"gloo\" (CPU tensors), \"nccl\" (CUDA, where LibTorch has it), \"auto\" (NCCL for a CUDA "
    "device where available, else Gloo)")
      .one_of({"auto", "gloo", "nccl"});
  o("timeout_s", &RunOptions::timeout_s,
    "seconds a process of a run over several waits for the others (rendezvous, each collective) before it stops "
    "with an error naming its rank")
      .range(1, 86400);
}

const Schema& run_schema() { return schema_of<RunOptions>(); }

bool cuda_compiled() { return at::detail::getCUDAHooks().hasCUDART(); }

int cuda_device_count() {
  try {
    return at::detail::getCUDAHooks().getNumGPUs();
  } catch (...) {
    return 0;
  }
}

at::Device resolve_device(const std::string& spec) {
  const std::string key = run_key(&RunOptions::device);
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
    FUSION_FAIL(key, ": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"", spec, "\"");
  }
  FUSION_ENSURE(cuda_compiled(), key, ": \"", spec,
                "\" asked for, but this LibTorch was built without CUDA (use \"cpu\" or \"auto\")");
  FUSION_ENSURE(gpus > 0, key, ": \"", spec, "\" asked for, but no CUDA GPU is visible");
  FUSION_ENSURE(index < gpus, key, ": \"", spec, "\" asked for, but only ", gpus,
                " CUDA GPU(s) are visible (cuda:0 … cuda:", gpus - 1, ")");
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// ---------------------------------------------------------------------------------------------
// Reading the file

namespace {

const std::vector<std::string> kSections = {"run", "method", "modelpool", "taskpool"};

// A component section's values, its `name` checked to be a string.
ConfigFile::Section component_section(const RunConfig& rc, const std::string& section) {
  ConfigFile::Section out{rc.component_name(section), rc.section(section)};
  auto it = out.values.find("name");
  if (it != out.values.end() && !std::holds_alternative<std::string>(it->second))
    FUSION_FAIL(section, ".name: expected string, got ", type_name(type_of(it->second)), " ",
                to_toml_string(it->second));
  return out;
}

}  // namespace

ConfigFile read_config(const RunRequest& request) {
  RunConfig rc = RunConfig::from_file(request.config);
  for (const auto& o : request.overrides) rc.apply_override(o);
  ConfigFile file;
  file.origin = request.config.string();
  for (const auto& s : rc.sections()) {
    if (std::find(kSections.begin(), kSections.end(), s) == kSections.end())
      FUSION_FAIL(file.origin, ": unknown section [", s, "]; known sections: [run], [method], "
                  "[modelpool], [taskpool]");
  }
  file.run_config = Config::validate("run", rc.section("run"), run_schema(), {});
  file.run = read_options<RunOptions>(file.run_config);
  FUSION_ENSURE(rc.has_section("method"), file.origin,
                ": no [method] section (it names the merging method: [method] name = \"...\")");
  FUSION_ENSURE(rc.has_section("modelpool"), file.origin,
                ": no [modelpool] section (it names the models: [modelpool] name = \"...\")");
  file.method = component_section(rc, "method");
  file.modelpool = component_section(rc, "modelpool");
  if (rc.has_section("taskpool")) file.taskpool = component_section(rc, "taskpool");
  return file;
}

void load_plugins(PluginHost& plugins, const std::vector<std::string>& extra) {
  plugins.add_builtins();
  plugins.load_default();
  for (size_t i = 0; i < extra.size(); ++i) {
    std::error_code ec;
    const std::string where = run_key(&RunOptions::plugins) + "[" + std::to_string(i) + "]";
    FUSION_ENSURE(fs::exists(extra[i], ec), where, ": '", extra[i], "' does not exist");
    const size_t before = plugins.refused().size();
    plugins.load_path(extra[i]);
    if (plugins.refused().size() > before) {
      const auto& r = plugins.refused()[before];
      FUSION_FAIL(where, ": plugin ", r.file.string(), " refused: ", r.reason);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Resolving

namespace {

ChosenComponent choose(const PluginHost& plugins, ComponentKind kind, const std::string& section,
                       const ConfigFile::Section& values) {
  ChosenComponent c;
  c.component = &plugins.require(kind, section, values.component);
  c.config = Config::validate(section, values.values, c.component->info.schema);
  return c;
}

// Another run's report.json, for the Pareto plot.
json read_compare_report(const std::string& path, const std::string& where) {
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

}  // namespace

ResolvedConfig resolve_config(const ConfigFile& file, const PluginHost& plugins) {
  ResolvedConfig out;
  out.origin = file.origin;
  out.run_config = file.run_config;
  out.run = file.run;
  out.method = choose(plugins, ComponentKind::Algorithm, "method", file.method);
  out.modelpool = choose(plugins, ComponentKind::ModelPool, "modelpool", file.modelpool);
  if (file.taskpool)
    out.taskpool = choose(plugins, ComponentKind::TaskPool, "taskpool", *file.taskpool);

  const RunOptions& run = file.run;
  out.device = resolve_device(run.device);
  const Precision precision = resolve_precision(parse_dtype(run.dtype, run_key(&RunOptions::dtype)), out.device);
  out.dtype = precision.compute;
  out.storage_dtype = precision.storage;
  out.precision_note = precision.note;
  out.seed = static_cast<uint64_t>(run.seed);
  out.threads = static_cast<int>(run.threads);
  const bool have_tasks = out.taskpool.has_value();
  out.save_models = run.save_models.value_or(!have_tasks);
  FUSION_ENSURE(out.save_models || have_tasks, run_key(&RunOptions::save_models),
                ": false without a [taskpool] would produce nothing (no evaluation, no saved "
                "model)");
  out.run_dir = run.out_dir ? fs::path(*run.out_dir) : fs::path("outputs") / out.method.name();
  for (size_t i = 0; i < run.compare.size(); ++i) {
    const std::string& path = run.compare[i];
    json report = read_compare_report(
        path, run_key(&RunOptions::compare) + "[" + std::to_string(i) + "]");
    std::string name = report.contains("method") && report["method"].is_string()
                           ? report["method"].get<std::string>()
                           : fs::path(path).parent_path().filename().string();
    out.compare.push_back({std::move(name), std::move(report)});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing the resolved configuration

ResolvedSections resolved_sections(const ResolvedConfig& config) {
  ResolvedSections out;
  auto add = [&](const std::string& section, const Config& cfg, const ChosenComponent* c) {
    std::map<std::string, Value> values;
    if (c) values["name"] = c->name();
    for (const auto& [key, value] : cfg.values()) values[key] = value;
    out.emplace_back(section, std::move(values));
  };
  add("run", config.run_config, nullptr);
  // The effective values of [run] options whose default is computed.
  out.back().second[option_name(&RunOptions::out_dir)] = config.run_dir.string();
  out.back().second[option_name(&RunOptions::save_models)] = config.save_models;
  add("method", config.method.config, &config.method);
  add("modelpool", config.modelpool.config, &config.modelpool);
  if (config.taskpool) add("taskpool", config.taskpool->config, &*config.taskpool);
  return out;
}

namespace {

std::string array_text(const toml::array& a) {
  std::ostringstream out;
  out << a;
  return out.str();
}

toml::array toml_array(const std::vector<double>& l) {
  toml::array a;
  for (double d : l) a.push_back(d);
  return a;
}

// A value on the right of `key = `: a scalar as to_toml_string writes it (exact: a double reads
// back as the same double), a list as toml++ writes arrays.
std::string toml_value(const Value& value) {
  if (const auto* l = std::get_if<std::vector<double>>(&value)) return array_text(toml_array(*l));
  if (const auto* l = std::get_if<std::vector<std::string>>(&value)) {
    toml::array a;
    for (const auto& s : *l) a.push_back(s);
    return array_text(a);
  }
  if (const auto* m = std::get_if<std::vector<std::vector<double>>>(&value)) {
    toml::array a;
    for (const auto& row : *m) a.push_back(toml_array(row));
    return array_text(a);
  }
  return to_toml_string(value);
}

}  // namespace

std::string resolved_config_toml(const ResolvedSections& sections) {
  std::ostringstream out;
  for (size_t i = 0; i < sections.size(); ++i) {
    const auto& [section, values] = sections[i];
    if (i) out << '\n';
    out << '[' << toml_key(section) << "]\n";
    // Keys in order, tables of strings ([modelpool.models]) after the plain keys, each table's
    // entries in the run's order (the order of the experts).
    for (const auto& [key, value] : values)
      if (!std::holds_alternative<StringMap>(value))
        out << toml_key(key) << " = " << toml_value(value) << '\n';
    for (const auto& [key, value] : values) {
      const auto* table = std::get_if<StringMap>(&value);
      if (!table) continue;
      out << "\n[" << toml_key(section) << '.' << toml_key(key) << "]\n";
      for (const auto& [k, v] : *table) out << toml_key(k) << " = " << toml_value(Value(v)) << '\n';
    }
  }
  return out.str();
}

json resolved_config_json(const ResolvedSections& sections) {
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
  json out = json::object();
  for (const auto& [section, values] : sections) {
    json& sj = out[section];
    sj = json::object();
    for (const auto& [key, value] : values) sj[key] = std::visit(Visitor{}, value);
  }
  return out;
}

}  // namespace fusion::host
