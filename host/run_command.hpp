#pragma once
// `fusion run`: one merging run from a TOML config, written to its run directory.
#include <filesystem>
#include <string>
#include <vector>

#include "fusion/config.hpp"
#include "fusion/context.hpp"
#include "plugin_host.hpp"

namespace fusion::host {

/// The options of the `[run]` table (`fusion describe run` prints them).
Schema run_schema();

/// What `fusion run` was asked to do.
struct RunRequest {
  std::filesystem::path config;            ///< the TOML file
  std::vector<std::string> overrides;      ///< `key=value` assignments, applied in order
  std::vector<std::string> command_line;   ///< argv, for report.json
};

/// Runs the whole pipeline: config → plugins → components → Algorithm::run → per model: make,
/// evaluate, save, drop → results.csv, pareto.svg, report.json (written last, atomically).
/// Throws fusion::Error (or another std::exception) on any failure; outputs written before the
/// failure stay, but report.json is only ever written complete.
void run(const RunRequest& request, const std::shared_ptr<Logger>& logger);

/// A label made safe as a folder name: characters other than letters, digits, '.', '_', '-' and
/// '=' become '_'; "" becomes "model".
std::string sanitize_label(const std::string& label);

/// The resolved device for a `[run] device` value ("auto", "cpu", "cuda", "cuda:N"); throws
/// fusion::Error naming run.device when it is malformed or asks for CUDA that is not there.
at::Device resolve_device(const std::string& spec);

/// Whether LibTorch has CUDA, and how many GPUs it sees.
bool cuda_compiled();
int cuda_device_count();

}  // namespace fusion::host
