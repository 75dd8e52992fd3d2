#pragma once
// `fusion run`, first stage: the run's configuration resolved to typed values. The TOML file and
// its overrides are read once; [run] becomes RunOptions, each component section a Config checked
// against the component's schema; the resolved values are written back (run_dir/config.toml and
// report.json's "config") from those typed values.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/options.hpp"
#include "plugin_host.hpp"

namespace fusion::host {

/// What `fusion run` was asked to do.
struct RunRequest {
  std::filesystem::path config;            ///< the TOML file
  std::vector<std::string> overrides;      ///< `key=value` assignments, applied in order
  std::vector<std::string> command_line;   ///< argv, for report.json
};

/// The number of CPU cores (at least 1) divided among the local ranks (LOCAL_WORLD_SIZE, when
/// several processes run on this machine; at least 1): the default of [run] threads.
int64_t hardware_threads();

/// The options of the `[run]` table, declared once (`fusion describe run` prints them).
struct RunOptions {
  std::optional<std::string> out_dir;  ///< default: outputs/<method name>
  std::string device = "auto";
  std::string dtype = "float32";
  int64_t seed = 42;
  int64_t threads = hardware_threads();
  std::vector<std::string> plugins;
  bool progress = true;
  std::optional<bool> save_models;     ///< default: false with a [taskpool], true without
  std::vector<std::string> compare;
  int64_t eval_cache_mb = 1024;        ///< test inputs kept between evaluated models (0: none)
  std::string backend = "auto";        ///< several processes: "auto" | "gloo" | "nccl"
  int64_t timeout_s = 60;              ///< several processes: rendezvous and collectives

  static void bind(Options<RunOptions>& o);
};

/// The schema of RunOptions.
const Schema& run_schema();

/// "run.<name>" of a RunOptions member, for messages: run_key(&RunOptions::device) == "run.device".
template <class M>
std::string run_key(M RunOptions::*member) {
  return "run." + option_name(member);
}

/// The resolved device for a `[run] device` value ("auto", "cpu", "cuda", "cuda:N"); throws
/// fusion::Error naming run.device when it is malformed or asks for CUDA that is not there.
at::Device resolve_device(const std::string& spec);

/// Whether LibTorch has CUDA, and how many GPUs it sees.
bool cuda_compiled();
int cuda_device_count();

/// The config file with its overrides applied: sections checked, [run] read, the component
/// sections' raw values (each `name` checked to be a string).
struct ConfigFile {
  /// One component section as written: the component's name and the other keys.
  struct Section {
    std::string component;
    std::map<std::string, Value> values;
  };
  std::string origin;   ///< the file, for messages
  Config run_config;    ///< [run], checked against run_schema()
  RunOptions run;       ///< the same, typed
  Section method;
  Section modelpool;
  std::optional<Section> taskpool;
};

/// Reads request.config and applies request.overrides. Throws fusion::Error for a file that cannot
/// be read or parsed, an override that is malformed, an unknown section, a [run] option that is
/// unknown, of the wrong type or out of range, a missing [method] or [modelpool] section, and a
/// `name` that is not a string.
ConfigFile read_config(const RunRequest& request);

/// Loads the plugins of the default search path, then those of [run] plugins (`extra`); a path
/// there that does not exist or a plugin there that is refused is an error naming run.plugins[i].
void load_plugins(PluginHost& plugins, const std::vector<std::string>& extra);

/// A component chosen by a section, with its checked options.
struct ChosenComponent {
  const Component* component = nullptr;
  Config config;
  const std::string& name() const { return component->info.name; }
};

/// The run's configuration, resolved: every value typed and checked, every default filled in.
struct ResolvedConfig {
  std::string origin;        ///< the config file
  Config run_config;         ///< [run] as given and defaulted (out_dir and save_models: see below)
  RunOptions run;
  ChosenComponent method;
  ChosenComponent modelpool;
  std::optional<ChosenComponent> taskpool;
  at::Device device{at::kCPU};
  /// The dtype the network computes in: the method's Context dtype, report.json's "dtype". For
  /// [run] dtype = "bfloat16" (or "float16" on CUDA) the mixed-precision compute dtype, or float32
  /// where the machine cannot compute it natively (see host/precision.hpp).
  at::ScalarType dtype = at::kFloat;
  /// The dtype the model pool and task pool keep their tensors in (weights, merges, saved models,
  /// heads, batches): `dtype`, or float32 under mixed precision.
  at::ScalarType storage_dtype = at::kFloat;
  /// One log line on how the run computes when [run] dtype asked for mixed precision ("" otherwise).
  std::string precision_note;
  uint64_t seed = 42;
  int threads = 1;
  bool save_models = true;             ///< [run] save_models, or its default
  std::filesystem::path run_dir;       ///< [run] out_dir, or its default
  /// Other runs' report.json for the Pareto plot ([run] compare), with their legend names.
  struct CompareRun {
    std::string name;
    nlohmann::json report;
  };
  std::vector<CompareRun> compare;
};

/// Chooses the components of `file` among `plugins`, checks their options, and resolves the [run]
/// values the host derives (device, dtype, outputs) and the runs to compare with. Throws
/// fusion::Error naming `section.key` for anything wrong; nothing is written.
ResolvedConfig resolve_config(const ConfigFile& file, const PluginHost& plugins);

/// The resolved configuration by section ([run], [method], [modelpool], [taskpool]), key → value,
/// with each component's `name` and the effective out_dir and save_models.
using ResolvedSections = std::vector<std::pair<std::string, std::map<std::string, Value>>>;
ResolvedSections resolved_sections(const ResolvedConfig& config);

/// `sections` as TOML (run_dir/config.toml): a file `fusion run` accepts again, with the same
/// values; a table of strings keeps its order (the experts' order).
std::string resolved_config_toml(const ResolvedSections& sections);
/// `sections` as JSON (report.json's "config").
nlohmann::json resolved_config_json(const ResolvedSections& sections);

}  // namespace fusion::host
